"""Discovery configs filled in from per-shape templates are exactly the full rendering's."""

from __future__ import annotations

import tomllib
from typing import Any

import orjson
import pytest
from support import REPO

from bridge.config import settings as config
from bridge.core.store import ALL, DISCOVERY, Device, Store
from bridge.homeassistant.payloads import device_configs
from bridge.homeassistant.templates import DiscoveryTemplates
from bridge.normalize import catalog
from bridge.publish.renderer import Renderer

EXAMPLE = REPO / "config.example.toml"
ATTRS = catalog.attributes(catalog.build())
TABLE = catalog.build()
NAMES = ["scooter 1", 'quote " and \\ backslash', "ünïcödé ✓ 🛴", "</script>", "",
         "7100001", "\x01name\x01", "tab\tnew\nline", "flespi 987654321012345"]


def settings(output: str = "json", **homeassistant: Any) -> config.Settings:
    """The example configuration (command profiles included)."""
    data = tomllib.loads(EXAMPLE.read_text())
    data["flespi"]["token"] = "TestToken"
    data["local"]["output"] = output
    data["homeassistant"] = {**data.get("homeassistant", {}), **homeassistant}
    return config.load(overrides=data)


def fleet(store: Store) -> list[Device]:
    """Devices of several shapes: with and without name, ident, device type (one with a
    command profile), connection state, position, last seen."""
    devices = []
    for i, name in enumerate(NAMES * 3):
        device_id = 7_100_000 + i
        obj: dict[str, Any] = {"id": device_id, "name": name}
        if i % 3 != 1:
            obj["configuration"] = {"ident": f"0151360{device_id:08d}" if i % 2 else 'i"d\\'}
        if i % 4 != 3:
            obj["device_type_id"] = 1272 if i % 2 else 99
        if i % 5 != 4:
            store.apply_object(device_id, obj)
        if i % 3 != 2:
            store.apply_connected(device_id, bool(i % 2))
        values: dict[str, Any] = {}
        for param, value in [("battery.level", 50 + i), ("lock.status", bool(i % 2)),
                             ("position", {"latitude": -17.7, "longitude": -63.2,
                                           "speed": 3.5})][: 1 + i % 3]:
            values.update(catalog.normalize(TABLE[param], value))
        store.apply_values(device_id, values, None if i % 7 else 1_706_905_170.0)
        devices.append(store.devices[device_id])
    return devices


def full(renderer: Renderer, dev: Device) -> dict[str, bytes]:
    configs = renderer.device_configs(dev)
    return {topic: orjson.dumps(cfg) for topic, cfg in configs.items()}


@pytest.mark.parametrize("mode", ["device", "entity"])
@pytest.mark.parametrize("output", ["json", "attribute"])
def test_templated_announcements_are_the_full_rendering(
        mode: str, output: str, caplog: pytest.LogCaptureFixture) -> None:
    renderer = Renderer(settings(output, discovery_mode=mode), ATTRS)
    store = Store()
    devices = fleet(store)
    for dev in devices:
        pubs = renderer.render(dev, ALL)
        announced = {p.topic: p.payload for p in pubs if p.topic.startswith("homeassistant/")}
        assert announced == full(renderer, dev), dev.info
        for payload in announced.values():
            orjson.loads(payload)  # valid JSON, whatever the name holds
    # an announced device that changes is rendered in full, removals included
    dev = devices[2]
    dev.values.pop("battery")
    again = renderer.render(dev, DISCOVERY)
    if mode == "device":
        (pub,) = again
        assert orjson.loads(pub.payload)["cmps"]["battery"] == {"p": "sensor"}  # its removal
    else:
        assert [p.payload for p in again if p.topic.endswith("_battery/config")] == [b""]
    assert not [r for r in caplog.records if "disagree" in r.getMessage()]  # no fallback


def test_a_rendering_that_reads_more_than_the_shape_falls_back_to_full() -> None:
    """Were `device_configs` to read something the shape does not hold (here a value),
    the check on the shape's second device catches it and every later device of the
    shape is rendered in full."""
    ctx = Renderer(settings(), ATTRS).ha

    def build(dev: Device) -> dict[str, dict[str, Any]]:
        configs = device_configs(ctx, dev, ATTRS)
        for cfg in configs.values():
            cfg["dev"]["model"] = f"battery at {dev.values.get('battery')}"
        return configs

    templates = DiscoveryTemplates(build)
    store = Store()
    for i in range(5):
        store.apply_values(7_200_000 + i, {"battery": 10 + i}, None)
        dev = store.devices[7_200_000 + i]
        _, serialized = templates.render(dev)
        assert serialized.payloads == {t: orjson.dumps(c) for t, c in build(dev).items()}


def test_firmware_and_names_learnt_later_are_in_the_first_announcement() -> None:
    """Two devices of one shape but other firmware, and a device announced after flespi's
    names for its type were learnt, each get their own device info at once (a template
    made for an earlier device must not lend them its firmware or its generic model)."""
    from bridge.core.store import Names

    learnt: dict[int, Names] = {}
    renderer = Renderer(settings(), ATTRS,
                        names=lambda type_id, proto: learnt.get(type_id or 0, Names()))
    store = Store()
    shown = {}
    firmwares = ["1.0.0", "1.0.0", "1.0.0", "2.4.1", "2.4.1"]  # checks sample the first two
    for i, firmware in enumerate(firmwares):
        device_id = 7_300_000 + i
        if i == 4:
            learnt[1272] = Names(model="OMNI e-scooter", manufacturer="OMNI")
        store.apply_object(device_id, {"id": device_id, "name": f"s{i}", "device_type_id": 1272})
        store.apply_values(device_id, {"battery": 50, "firmware": firmware}, None)
        dev = store.devices[device_id]
        (pub,) = [p for p in renderer.render(dev, ALL)
                  if p.topic.startswith("homeassistant/")]
        shown[i] = orjson.loads(pub.payload)["dev"]
        assert {pub.topic: pub.payload} == full(renderer, dev)
    assert [shown[i]["sw_version"] for i in range(5)] == firmwares
    assert shown[3]["model"] == "flespi device type 1272"
    assert (shown[4]["model"], shown[4]["manufacturer"]) == ("OMNI e-scooter", "OMNI")
