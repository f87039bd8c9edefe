"""The least-privilege ACL of a bridge's configuration, in flespi's token ACL format (access
type 2), and a checker of what an ACL allows. Pure functions.

flespi takes two kinds of ACL entry: REST rights, `{"uri": "gw/devices", "methods": [...],
"ids": [...] | "all", "submodules": [{"name": "telemetry", "methods": ["GET"]}]}`, and MQTT
rights on one's own topics, `{"uri": "mqtt", "topic": FILTER, "actions": ["publish",
"subscribe"]}`. MQTT entries cannot name topics under `flespi/`: those follow the REST rights.
A subscription to `flespi/state/gw/devices/{id}` (and its `connected`, `name`) needs GET on
the device, `.../telemetry/+`, `.../settings/+`, `.../connections/+` and
`flespi/message/gw/devices/{id}` GET on that submodule; a REST call over MQTT
(`flespi/rest/{method}/{uri}`) needs the right on that call. So what the bridge does maps to:

- GET on its devices (their ids, or all), with the submodules its subscriptions read
  (telemetry unless `flespi.telemetry` is off, connections, the settings its profiles show,
  messages with `flespi.messages`);
- POST on their `commands` submodule when it sends commands (profiles and not read-only);
- GET on `gw/channel-protocols` and its `device-types` with Home Assistant discovery (the
  device info's names, `bridge.flespi.device_types`);
- publish and subscribe on its reply prefix `flespi-bridge/{client_id}/#` (REST answers over
  MQTT and its start-up marker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.config.settings import Settings
from bridge.flespi import topics

Entry = dict[str, Any]
STATE, MESSAGE = topics.STATE_PREFIX, topics.MESSAGE_PREFIX


def reply_prefix(settings: Settings) -> str:
    return f"flespi-bridge/{settings.flespi.client_id}/"


def subscriptions(settings: Settings) -> list[str]:
    """The flespi topic filters `run` subscribes upstream (as the session builds them),
    besides its reply prefix."""
    f = settings.flespi
    params = settings.flespi.parameter_table().subscribed() if f.use_comma_lists else None
    return topics.subscriptions(f.devices, params, comma_lists=f.use_comma_lists,
                                messages=f.messages, telemetry=f.telemetry,
                                settings=settings.commands.settings)


def sends_commands(settings: Settings) -> bool:
    c = settings.commands
    return not c.read_only and any(c.profiles.values())


def acl(settings: Settings) -> list[Entry]:
    """flespi ACL entries (token access type 2) allowing exactly what `run` does."""
    f = settings.flespi
    submodules = [{"name": name, "methods": ["GET"]} for name, wanted in (
        ("telemetry", f.telemetry), ("connections", True),
        ("settings", bool(settings.commands.settings)), ("messages", f.messages)) if wanted]
    if sends_commands(settings):
        submodules.append({"name": "commands", "methods": ["POST"]})
    entries: list[Entry] = [
        {"uri": "gw/devices", "methods": ["GET"],
         "ids": "all" if f.devices == "all" else list(f.devices), "submodules": submodules},
        # REST answers over MQTT and the start-up marker the bridge publishes to itself
        {"uri": "mqtt", "topic": reply_prefix(settings) + "#",
         "actions": ["publish", "subscribe"]},
    ]
    if settings.homeassistant.discovery:  # device type and protocol names (device info)
        entries.append({"uri": "gw/channel-protocols", "methods": ["GET"],
                        "submodules": [{"name": "device-types", "methods": ["GET"]}]})
    return entries


# -- what an ACL allows (flespi's rules, for checking an ACL against the bridge) -----------

def _ids_allow(entry: Entry, selector: str) -> bool:
    ids = entry.get("ids", "all")
    if ids == "all":
        return True
    wanted = selector.split(",")
    return all(i.isdigit() and int(i) in ids for i in wanted)


def rest_allows(acl_: Sequence[Entry], method: str, uri: str) -> bool:
    """Whether the ACL allows the REST call `method uri` (e.g. `POST
    gw/devices/7/commands`): an entry of the module, the item's id, and the method on the
    item itself or on the submodule named after it."""
    parts = uri.strip("/").split("/")
    method = method.upper()
    for entry in acl_:
        module = entry.get("uri", "").split("/")
        if entry.get("uri") == "mqtt" or parts[:len(module)] != module:
            continue
        rest = parts[len(module):]
        if not rest or not _ids_allow(entry, rest[0]):
            continue
        if len(rest) == 1 and method in entry.get("methods", []):
            return True
        if len(rest) >= 2 and any(s.get("name") == rest[1] and method in s.get("methods", [])
                                  for s in entry.get("submodules", [])):
            return True
    return False


def _filter_covers(granted: str, wanted: str) -> bool:
    """Whether every topic `wanted` can match is matched by the filter `granted`."""
    g, w = granted.split("/"), wanted.split("/")
    for i, level in enumerate(g):
        if level == "#":
            return True
        if i >= len(w) or (level != w[i] and (level != "+" or w[i] == "#")):
            return False
    return len(g) == len(w)


def mqtt_allows(acl_: Sequence[Entry], action: str, topic: str) -> bool:
    """Whether the ACL lets a client `publish` to or `subscribe` to `topic` (a filter)."""
    if topic.startswith(STATE):  # flespi's state topics follow the device rights
        device, *rest = topic[len(STATE):].split("/")
        selector = "all" if device == "+" else device
        if action != "subscribe":
            return False
        if not rest or (len(rest) == 1 and rest[0] in topics.PROPERTIES):
            return rest_allows(acl_, "GET", f"gw/devices/{selector}")
        return len(rest) == 2 and rest_allows(acl_, "GET", f"gw/devices/{selector}/{rest[0]}")
    if topic.startswith(MESSAGE):
        selector = topic[len(MESSAGE):]
        return action == "subscribe" and rest_allows(
            acl_, "GET", f"gw/devices/{'all' if selector == '+' else selector}/messages")
    if topic.startswith("flespi/rest/"):  # a REST call over MQTT
        method, _, uri = topic[len("flespi/rest/"):].partition("/")
        return action == "publish" and rest_allows(acl_, method, uri)
    if topic.startswith("flespi/"):
        return False
    return any(e.get("uri") == "mqtt" and action in e.get("actions", [])
               and _filter_covers(e.get("topic", ""), topic) for e in acl_)
