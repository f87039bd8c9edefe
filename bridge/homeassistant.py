"""Home Assistant MQTT discovery: config payloads from the catalogue, and what to clear.

Pure functions build each entity's config; `Discovery` remembers what was published per
device so it can clear entities that are no longer generated and devices that are gone.
Topics: `<prefix>/<component>/<node_id>/flespi_<device_id>_<entity>/config`, where
`node_id` is derived from the base topic, so the configs of one bridge can be found (and
stale ones cleared) with `<prefix>/+/<node_id>/+/config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge import __version__
from bridge.catalog import LAST_SEEN, Attribute
from bridge.config import CommandSpec
from bridge.state import Device
from bridge.transport import Publication

ORIGIN = {"name": "flespi-bridge", "sw_version": __version__}
# gps_accuracy in metres is estimated as HDOP x this (a typical GPS user range error).
METRES_PER_HDOP = 5.0
TRACKER_FIELDS = ("latitude", "longitude", "altitude", "speed", "direction", "satellites",
                  "hdop")


def node_id(base_topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", base_topic) or "flespi"


@dataclass(frozen=True, slots=True)
class Context:
    prefix: str
    base: str
    output: str = "json"  # json | attribute | both
    expire_after: int = 0

    @property
    def node(self) -> str:
        return node_id(self.base)

    @property
    def bridge_identifier(self) -> str:
        return f"flespi_bridge_{self.node}"

    @property
    def bridge_state(self) -> str:
        return f"{self.base}/bridge/state"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    @property
    def config_filter(self) -> str:
        return f"{self.prefix}/+/{self.node}/+/config"

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{object_id}/config"


def bridge_device(ctx: Context) -> dict[str, Any]:
    return {
        "identifiers": [ctx.bridge_identifier],
        "name": f"flespi bridge ({ctx.base})",
        "model": "flespi-bridge",
        "sw_version": __version__,
    }


def bridge_configs(ctx: Context) -> dict[str, dict[str, Any]]:
    """The bridge's own connectivity entity; it also creates the device `via_device` names."""
    object_id = f"{ctx.bridge_identifier}_connection"
    return {ctx.config_topic("binary_sensor", object_id): {
        "name": "Connection state",
        "unique_id": object_id,
        "state_topic": ctx.bridge_state,
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": bridge_device(ctx),
        "origin": ORIGIN,
    }}


def device_block(ctx: Context, dev: Device) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [f"flespi_{dev.id}"],
        "name": dev.name,
        "via_device": ctx.bridge_identifier,
    }
    if dev.info.device_type_id is not None:
        block["model"] = f"flespi device type {dev.info.device_type_id}"
    if dev.info.ident:
        block["serial_number"] = dev.info.ident
    return block


def _common(ctx: Context, dev: Device, key: str, name: str | None,
            device: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "unique_id": f"flespi_{dev.id}_{key}",
        "availability": [
            {"topic": ctx.bridge_state},
            {"topic": f"{ctx.base}/{dev.id}/availability"},
        ],
        "availability_mode": "all",
        "device": device,
        "origin": ORIGIN,
    }


def _uses_json(ctx: Context) -> bool:
    return ctx.output in ("json", "both")


def _value_entity(ctx: Context, dev: Device, attr: Attribute,
                  device: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    component = attr.component or "sensor"
    cfg = _common(ctx, dev, attr.name, attr.label, device)
    json_mode = _uses_json(ctx)
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
    if ctx.expire_after:
        cfg["expire_after"] = ctx.expire_after
    return component, cfg


def tracker_attributes_template() -> str:
    """Jinja for the device_tracker attributes: the position fields and gps_accuracy."""
    items = [f"'{f}': value_json.get('{f}')" for f in TRACKER_FIELDS]
    items.append(f"'gps_accuracy': ((value_json.get('hdop') or 1) * {METRES_PER_HDOP}) | round(1)")
    return "{{ {" + ", ".join(items) + "} | tojson }}"


def device_configs(ctx: Context, dev: Device, attrs: Mapping[str, Attribute],
                   profile: Mapping[str, CommandSpec] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for every entity this device has now.

    Entities exist for the attributes the device has reported (not for every catalogue
    row), plus connectivity, last seen, a GPS device_tracker with a position, and the
    lock/button/number entities of the device type's command `profile`.
    """
    profile = profile or {}
    device = device_block(ctx, dev)
    out: dict[str, dict[str, Any]] = {}
    # an attribute a lock entity shows gets no binary_sensor of its own
    shown = {spec.state_attribute for spec in profile.values() if spec.component == "lock"}

    def add(component: str, key: str, cfg: dict[str, Any]) -> None:
        out[ctx.config_topic(component, f"flespi_{dev.id}_{key}")] = cfg

    for name in dev.values:
        attr = attrs.get(name)
        if attr is None or attr.component is None or name in shown:
            continue
        component, cfg = _value_entity(ctx, dev, attr, device)
        add(component, attr.name, cfg)
    if dev.last_seen is not None:
        component, cfg = _value_entity(ctx, dev, LAST_SEEN, device)
        add(component, LAST_SEEN.name, cfg)
    if "latitude" in dev.values and "longitude" in dev.values:
        cfg = _common(ctx, dev, "position", "Position", device)
        cfg["source_type"] = "gps"
        cfg["json_attributes_topic"] = f"{ctx.base}/{dev.id}/" + (
            "state" if _uses_json(ctx) else "position")
        if _uses_json(ctx):
            cfg["json_attributes_template"] = tracker_attributes_template()
        add("device_tracker", "position", cfg)
    if dev.online is not None:
        cfg = _common(ctx, dev, "connectivity", "Connectivity", device)
        # Only the bridge's availability: the entity must say "disconnected", not vanish.
        cfg["availability"] = [{"topic": ctx.bridge_state}]
        cfg.update(state_topic=f"{ctx.base}/{dev.id}/availability", payload_on="online",
                   payload_off="offline", device_class="connectivity",
                   entity_category="diagnostic")
        add("binary_sensor", "connectivity", cfg)
    for component, key, specific in command_entities(ctx, dev, profile):
        cfg = _common(ctx, dev, key, specific.pop("name"), device)
        cfg.update(specific)
        add(component, key, cfg)
    return out


def command_entities(ctx: Context, dev: Device, profile: Mapping[str, CommandSpec]
                     ) -> list[tuple[str, str, dict[str, Any]]]:
    """lock/button/number entities for the device type's command profile. A lock's state
    comes from telemetry (`state_attribute`), never from assuming the command worked."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for key, spec in profile.items():
        cfg: dict[str, Any] = {
            "name": spec.label or key.replace("_", " ").capitalize(),
            "command_topic": f"{ctx.base}/{dev.id}/{key}/set",
        }
        state = spec.state_attribute
        if state is not None:
            cfg["state_topic"] = f"{ctx.base}/{dev.id}/" + ("state" if _uses_json(ctx) else state)
        if spec.component == "lock":
            cfg.update(payload_lock="LOCK", payload_unlock="UNLOCK", optimistic=state is None)
            if state is not None and _uses_json(ctx):
                cfg.update(value_template=(
                    f"{{{{ 'LOCKED' if value_json.{state} else 'UNLOCKED' }}}}"),
                    state_locked="LOCKED", state_unlocked="UNLOCKED")
            elif state is not None:
                cfg.update(state_locked="true", state_unlocked="false")
        elif spec.component == "button":
            cfg["payload_press"] = "PRESS"
        else:
            cfg.update(min=spec.min, max=spec.max, step=spec.step, mode="box",
                       optimistic=state is None)
            if spec.unit:
                cfg["unit_of_measurement"] = spec.unit
            if state is not None and _uses_json(ctx):
                cfg["value_template"] = f"{{{{ value_json.{state} }}}}"
        out.append((spec.component, key, cfg))
    return out


def tracker_position(dev: Device) -> dict[str, Any]:
    """The `<base>/<id>/position` object of the attribute output mode."""
    pos = {f: dev.values[f] for f in TRACKER_FIELDS if f in dev.values}
    pos["gps_accuracy"] = round((dev.values.get("hdop") or 1) * METRES_PER_HDOP, 1)
    return pos


@dataclass
class Discovery:
    """Tracks the configs published per device, to republish changes and clear leftovers."""

    ctx: Context
    # device -> config topic -> hash of the payload published (not the payload: a large
    # fleet has hundreds of thousands of configs)
    published: dict[int, dict[str, int]] = field(default_factory=dict)

    def update(self, dev: Device, configs: Mapping[str, dict[str, Any]],
               force: bool = False) -> list[Publication]:
        before = self.published.get(dev.id, {})
        now = {topic: orjson.dumps(cfg) for topic, cfg in configs.items()}
        pubs = [Publication(t, b"") for t in before if t not in now]
        pubs += [Publication(t, p) for t, p in now.items()
                 if force or before.get(t) != hash(p)]
        self.published[dev.id] = {t: hash(p) for t, p in now.items()}
        return pubs

    def forget(self, device_id: int) -> list[Publication]:
        return [Publication(t, b"") for t in self.published.pop(device_id, {})]

    def reset(self) -> None:
        """After a local reconnect nothing can be assumed published."""
        self.published.clear()
