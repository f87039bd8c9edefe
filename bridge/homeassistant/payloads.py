"""Home Assistant MQTT discovery payloads, built by pure functions from the catalogue.

Two layouts (`homeassistant.discovery_mode`):

- `device` (default, Home Assistant 2024.11+): one config per device at
  `<prefix>/device/<node_id>/flespi_<device_id>/config` with the device (`dev`), the origin
  (`o`), the shared availability and every entity in `cmps` (platform `p`);
- `entity`: one config per entity at
  `<prefix>/<component>/<node_id>/flespi_<device_id>_<entity>/config`.

`node_id` is derived from the base topic, so the configs of one bridge can be found (and
stale ones cleared) with `<prefix>/+/<node_id>/+/config` in either layout. `unique_id`s are
`flespi_<device_id>_<entity>` in both. What was published, removals and the migration between
the layouts are `bridge.homeassistant.discovery.Discovery`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from bridge import __version__
from bridge.config.profiles import CommandSpec
from bridge.core.store import Device, Names
from bridge.homeassistant.context import Context, Entity, node_id
from bridge.homeassistant.controls import LAST_COMMAND, command_entities
from bridge.homeassistant.events import event_entities
from bridge.normalize.catalog import DEVICE_INFO, LAST_SEEN, Attribute

# the renderer's and discovery's, with the rest of what a device's discovery is made of
__all__ = ["LAST_COMMAND", "Context", "Entity", "node_id"]

PROJECT_URL = "https://github.com/flespi-bridge/flespi-bridge"
# The flespi panel opens an item from `#/panel/open/<items>/<id>` (as flespi's webhook
# examples link a channel or stream: `.../open/channels/<id>`).
PANEL_URL = "https://flespi.io/#/panel/open/devices/{id}"
# the origin in each layout: device-based discovery uses the abbreviations of its docs
ORIGIN = {"name": "flespi-bridge", "sw_version": __version__, "support_url": PROJECT_URL}
ORIGIN_SHORT = {"name": "flespi-bridge", "sw": __version__, "url": PROJECT_URL}
MIGRATE = b'{"migrate_discovery":true}'
# gps_accuracy in metres is estimated as HDOP x this (a typical GPS user range error).
METRES_PER_HDOP = 5.0
TRACKER_FIELDS = ("latitude", "longitude", "altitude", "speed", "direction", "satellites",
                  "hdop")
def device_owner(device_id: int) -> str:
    return f"flespi_{device_id}"


def bridge_device(ctx: Context) -> dict[str, Any]:
    """The bridge itself: named after its base topic only when that is not the default
    (two bridges on one broker need different base topics, and names); each replica of a
    split fleet is one, named after its shard."""
    name = "flespi-bridge" if ctx.base == "flespi" else f"flespi-bridge ({ctx.base})"
    return {
        "identifiers": [ctx.bridge_identifier],
        "name": name if ctx.replica is None else f"{name} shard {ctx.replica}",
        "manufacturer": "flespi-bridge project",
        "model": "flespi to MQTT bridge",
        "sw_version": __version__,
        "configuration_url": PROJECT_URL,
    }


def bridge_entities(ctx: Context) -> list[Entity]:
    """The bridge's own connectivity entity; its device is what `via_device` names."""
    return [("binary_sensor", "connection", {
        "name": "Connection state",
        "unique_id": f"{ctx.bridge_identifier}_connection",
        "state_topic": ctx.bridge_state,
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
    })]


def bridge_configs(ctx: Context) -> dict[str, dict[str, Any]]:
    """Config topic -> payload of the bridge's own device, in the context's layout."""
    return layout(ctx, ctx.bridge_identifier, bridge_device(ctx), None, bridge_entities(ctx))


def device_block(ctx: Context, dev: Device, names: Names | None = None) -> dict[str, Any]:
    """The device as Home Assistant shows it: flespi's names for its type and protocol
    (`names`, once looked up; the generic model until then), its ident as the serial
    number, the firmware and hardware versions it reports, a link to the flespi panel."""
    names = names or Names()
    block: dict[str, Any] = {
        "identifiers": [device_owner(dev.id)],
        "name": dev.name,
        "via_device": ctx.bridge_identifier,
        "configuration_url": PANEL_URL.format(id=dev.id),
    }
    if names.manufacturer:
        block["manufacturer"] = names.manufacturer
    if names.model:
        block["model"] = names.model
        if names.model_id and names.model_id != names.model:
            block["model_id"] = names.model_id
    elif dev.info.device_type_id is not None:
        block["model"] = f"flespi device type {dev.info.device_type_id}"
    if dev.info.ident:
        block["serial_number"] = dev.info.ident
    for attribute, key in DEVICE_INFO.items():
        value = dev.values.get(attribute)
        if isinstance(value, str) and value:
            block[key] = value
    return block


def availability(ctx: Context, dev: Device) -> list[dict[str, str]]:
    """Both must be online: the bridge, and the device as flespi reports it."""
    return [{"topic": ctx.bridge_state}, {"topic": f"{ctx.base}/{dev.id}/availability"}]


def layout(ctx: Context, owner: str, device: dict[str, Any],
           avail: list[dict[str, str]] | None, entities: list[Entity]
           ) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for `entities` of one device, in the context's layout."""
    if ctx.mode == "entity":
        out = {}
        for platform, _key, options in entities:
            cfg = dict(options)
            if avail is not None and "availability" not in cfg:
                cfg["availability"] = avail
            if "availability" in cfg:
                cfg["availability_mode"] = "all"
            cfg["device"] = device
            cfg["origin"] = ORIGIN
            out[ctx.config_topic(platform, options["unique_id"])] = cfg
        return out
    root: dict[str, Any] = {"dev": device, "o": ORIGIN_SHORT}
    if avail is not None:
        root["availability"] = avail
        root["availability_mode"] = "all"
    root["cmps"] = {key: {"p": platform, **options} for platform, key, options in entities}
    return {ctx.config_topic("device", owner): root}


def _value_entity(ctx: Context, dev: Device, attr: Attribute) -> Entity:
    component = attr.component or "sensor"
    cfg: dict[str, Any] = {"name": attr.label, "unique_id": f"flespi_{dev.id}_{attr.name}"}
    json_mode = ctx.uses_json
    cfg["state_topic"] = f"{ctx.base}/{dev.id}/" + ("state" if json_mode else attr.name)
    if component == "binary_sensor":
        on, off = ("OFF", "ON") if attr.invert else ("ON", "OFF")
        if json_mode:
            cfg["value_template"] = f"{{{{ '{on}' if value_json.{attr.name} else '{off}' }}}}"
        else:  # bare JSON booleans
            cfg["payload_on"], cfg["payload_off"] = ("false", "true") if attr.invert else (
                "true", "false")
    elif json_mode:
        cfg["value_template"] = f"{{{{ value_json.{attr.name} }}}}"
    for key, value in (("unit_of_measurement", attr.unit), ("device_class", attr.device_class),
                       ("state_class", attr.state_class),
                       ("entity_category", attr.entity_category), ("icon", attr.icon)):
        if value is not None:
            cfg[key] = value
    if not attr.enabled_by_default:
        cfg["enabled_by_default"] = False
    if ctx.expire_after:
        cfg["expire_after"] = ctx.expire_after
    return component, attr.name, cfg


def tracker_attributes_template() -> str:
    """Jinja for the device_tracker attributes: the position fields and gps_accuracy."""
    items = [f"'{f}': value_json.get('{f}')" for f in TRACKER_FIELDS]
    items.append(f"'gps_accuracy': ((value_json.get('hdop') or 1) * {METRES_PER_HDOP}) | round(1)")
    return "{{ {" + ", ".join(items) + "} | tojson }}"


def device_entities(ctx: Context, dev: Device, attrs: Mapping[str, Attribute],
                    profile: Mapping[str, CommandSpec] | None = None) -> list[Entity]:
    """Every entity this device has now.

    Entities exist for the attributes the device has reported (not for every catalogue
    row), plus connectivity, last seen, a GPS device_tracker with a position, and the
    lock/button/number entities of the device type's command `profile`.
    """
    profile = profile or {}
    out: list[Entity] = []
    # an attribute a lock entity shows gets no binary_sensor of its own
    shown = {spec.state_attribute for spec in profile.values() if spec.component == "lock"}
    for name in dev.values:
        attr = attrs.get(name)
        if attr is None or attr.component is None or name in shown:
            continue
        if attr.component != "event":
            out.append(_value_entity(ctx, dev, attr))
        if attr.events:
            out.extend(event_entities(ctx, dev, attr))
    if dev.last_seen is not None:
        out.append(_value_entity(ctx, dev, LAST_SEEN))
    if "latitude" in dev.values and "longitude" in dev.values:
        cfg: dict[str, Any] = {"name": "Position", "unique_id": f"flespi_{dev.id}_position",
                               "source_type": "gps"}
        cfg["json_attributes_topic"] = f"{ctx.base}/{dev.id}/" + (
            "state" if ctx.uses_json else "position")
        if ctx.uses_json:
            cfg["json_attributes_template"] = tracker_attributes_template()
        out.append(("device_tracker", "position", cfg))
    if dev.online is not None:
        out.append(("binary_sensor", "connectivity", {
            "name": "Connectivity", "unique_id": f"flespi_{dev.id}_connectivity",
            # Only the bridge's availability: the entity must say "disconnected", not vanish.
            "availability": [{"topic": ctx.bridge_state}],
            "state_topic": f"{ctx.base}/{dev.id}/availability", "payload_on": "online",
            "payload_off": "offline", "device_class": "connectivity",
            # flespi's connections (source, transport, established, secondary, the list)
            "json_attributes_topic": f"{ctx.base}/{dev.id}/connections",
            "entity_category": "diagnostic"}))
    for component, key, specific in command_entities(ctx, dev, profile):
        out.append((component, key, {"name": specific.pop("name"),
                                     "unique_id": f"flespi_{dev.id}_{key}", **specific}))
    return out


def device_configs(ctx: Context, dev: Device, attrs: Mapping[str, Attribute],
                   profile: Mapping[str, CommandSpec] | None = None,
                   names: Names | None = None) -> dict[str, dict[str, Any]]:
    """Config topic -> payload of the device's entities, in the context's layout."""
    return layout(ctx, device_owner(dev.id), device_block(ctx, dev, names),
                  availability(ctx, dev), device_entities(ctx, dev, attrs, profile))


def lock_state(dev: Device, key: str, spec: CommandSpec) -> str | None:
    """What the lock `key` shows on `<base>/<id>/<key>/state`: `LOCKING`/`UNLOCKING` while a
    command of it is in flight (the newest one's direction), else the telemetry state;
    None while neither is known."""
    targets = dev.pending.get(key)
    if targets:
        return "LOCKING" if targets[-1] else "UNLOCKING"
    if spec.state_attribute is None or spec.state_attribute not in dev.values:
        return None
    return "LOCKED" if dev.values[spec.state_attribute] else "UNLOCKED"


def setting_state(dev: Device, spec: CommandSpec) -> bytes | None:
    """What a number showing a device setting has on `<base>/<id>/<key>/state`: the
    setting's value, or None while flespi has not told it."""
    if spec.setting is None or spec.setting not in dev.settings:
        return None
    return orjson.dumps(dev.settings[spec.setting])


def tracker_position(dev: Device) -> dict[str, Any]:
    """The `<base>/<id>/position` object of the attribute output mode."""
    pos = {f: dev.values[f] for f in TRACKER_FIELDS if f in dev.values}
    pos["gps_accuracy"] = round((dev.values.get("hdop") or 1) * METRES_PER_HDOP, 1)
    return pos
