"""The least-privilege ACL of a bridge's configuration: exactly the topics it subscribes,
its reply prefix, the REST calls of its command profiles, and (with Home Assistant
discovery) the read-only look-up of device type and protocol names. Pure functions."""

from __future__ import annotations

from typing import Any

from bridge import parameters
from bridge.config import Settings
from bridge.flespi import topics


def reply_prefix(settings: Settings) -> str:
    return f"flespi-bridge/{settings.flespi.client_id}/"


def subscriptions(settings: Settings) -> list[str]:
    """The flespi topic filters `run` subscribes upstream (as the session builds them),
    besides its reply prefix."""
    f = settings.flespi
    params = parameters.from_settings(settings).subscribed() if f.use_comma_lists else None
    return topics.subscriptions(f.devices, params, comma_lists=f.use_comma_lists,
                                messages=f.messages, telemetry=f.telemetry,
                                settings=settings.commands.settings)


def acl(settings: Settings) -> list[dict[str, Any]]:
    """flespi ACL entries (token access type 2)."""
    entries: list[dict[str, Any]] = [
        {"uri": "mqtt", "topic": topic, "actions": ["subscribe"]}
        for topic in subscriptions(settings)]
    # the reply prefix: REST answers and the start-up marker the bridge publishes to itself
    entries.append({"uri": "mqtt", "topic": reply_prefix(settings) + "#",
                    "actions": ["publish", "subscribe"]})
    c = settings.commands
    if not c.read_only and any(c.profiles.values()):
        devices = settings.flespi.devices
        selector = "+" if devices == "all" else ",".join(str(d) for d in devices)
        if c.transport == "mqtt":
            entries.append({"uri": "mqtt", "topic": f"flespi/rest/post/gw/devices/{selector}"
                            "/commands", "actions": ["publish"]})
        entries.append({"uri": "gw/devices", "methods": ["POST"],
                        "ids": "all" if devices == "all" else list(devices),
                        "submodules": [{"name": "commands", "methods": ["POST"]}]})
    if settings.homeassistant.discovery:  # device type and protocol names (device info)
        if c.transport == "mqtt":
            entries.append({"uri": "mqtt", "topic": "flespi/rest/get/gw/channel-protocols/#",
                            "actions": ["publish"]})
        entries.append({"uri": "gw/channel-protocols", "methods": ["GET"]})
    return entries
