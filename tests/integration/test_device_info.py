"""Device info worth reading: flespi's device type and protocol names (looked up once per id
over REST, cached, never blocking discovery), the firmware and hardware versions a device
reports, and a link to the device in the flespi panel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.helpers import BridgeFactory, Recorder, make_settings, wait_metric

from bridge.app.bridge import Bridge
from bridge.core.events import EventHub, NamesLearned
from bridge.core.stats import Stats
from bridge.core.store import Device, Info, Names
from bridge.exceptions import RestError
from bridge.flespi.device_types import DeviceTypes, names
from bridge.flespi.rest import RestResponse
from bridge.homeassistant.payloads import Context, device_block
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, DEVICE_TYPES, PROTOCOL_ID, PROTOCOLS

CTX = Context("homeassistant", "flespi")
TYPE_URI = f"gw/channel-protocols/all/device-types/{DEVICE_TYPE_ID}"
PROTOCOL_URI = f"gw/channel-protocols/{PROTOCOL_ID}"


def scooter(**values: Any) -> Device:
    dev = Device(5537057, info=Info("scooter-001", "015136001986400", DEVICE_TYPE_ID,
                                    PROTOCOL_ID))
    dev.values.update(values)
    return dev


def test_device_block_with_flespi_names_and_versions() -> None:
    block = device_block(CTX, scooter(firmware="2.1.7", hardware="B3"),
                         Names("FMB920", "teltonika-fmb920", "Teltonika"))
    assert block == {
        "identifiers": ["flespi_5537057"], "name": "scooter-001",
        "via_device": "flespi_bridge_flespi",
        "configuration_url": "https://flespi.io/#/panel/open/devices/5537057",
        "manufacturer": "Teltonika", "model": "FMB920", "model_id": "teltonika-fmb920",
        "serial_number": "015136001986400", "sw_version": "2.1.7", "hw_version": "B3"}


def test_device_block_falls_back_to_the_generic_model() -> None:
    block = device_block(CTX, scooter())
    assert block["model"] == f"flespi device type {DEVICE_TYPE_ID}"
    assert not {"manufacturer", "model_id", "sw_version", "hw_version"} & set(block)


@pytest.mark.parametrize(("dtype", "proto", "expected"), [
    ({"name": "omni-scooter", "title": "OMNI e-scooter", "protocol_name": "omni"},
     {"name": "omni", "title": "OMNI"}, Names("OMNI e-scooter", "omni-scooter", "OMNI")),
    ({"name": "x1"}, None, Names("x1", "x1", None)),
    ({"name": "x1", "protocol_name": "teltonika"}, None, Names("x1", "x1", "teltonika")),
    ({"title": "  ", "name": 7}, {"name": ""}, Names()),  # nothing usable: nothing made up
    (None, None, Names()),
])
def test_names_from_flespi_objects(dtype: dict[str, Any] | None, proto: dict[str, Any] | None,
                                   expected: Names) -> None:
    assert names(dtype, proto) == expected


class FlakyRest:
    """A REST client answering from a table, failing the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[str] = []

    async def call(self, method: str, uri: str, body: Any, timeout: float) -> RestResponse:
        self.calls.append(uri)
        if len(self.calls) <= self.failures:
            raise RestError("timeout", "flespi did not answer")
        table = {TYPE_URI: DEVICE_TYPES[DEVICE_TYPE_ID], PROTOCOL_URI: PROTOCOLS[PROTOCOL_ID]}
        return RestResponse(200, {"result": [table[uri]]})


async def test_a_failed_lookup_is_counted_and_retried_never_blocking() -> None:
    rest, stats, events = FlakyRest(failures=2), Stats(), EventHub()
    learned: list[tuple[str, int]] = []
    changed = asyncio.Event()

    def on_learned(event: NamesLearned) -> None:
        learned.append((event.what, event.id))
        changed.set()

    events.subscribe(NamesLearned, on_learned)
    types = DeviceTypes(rest, stats, events, retry=(0.05, 0.1))
    await types.start()
    # asked while unknown: the generic answer at once, the look-ups start behind it
    assert types.names(DEVICE_TYPE_ID, PROTOCOL_ID) == Names()
    for _ in range(10):  # asked again meanwhile: no second request in flight
        types.names(DEVICE_TYPE_ID, PROTOCOL_ID)
    while len(learned) < 2:
        await asyncio.wait_for(changed.wait(), 5)
        changed.clear()
    assert stats.lookup_failures == {"device_type": 1, "protocol": 1}
    assert sorted(learned) == [("device_type", DEVICE_TYPE_ID), ("protocol", PROTOCOL_ID)]
    assert types.names(DEVICE_TYPE_ID, PROTOCOL_ID) == Names("OMNI e-scooter", "omni-scooter",
                                                             "OMNI")
    assert sorted(rest.calls) == sorted([TYPE_URI, PROTOCOL_URI] * 2)  # each retried once
    await types.stop()


# -- end to end: the bridge between real brokers, the simulator's REST API ---------------

def config_of(rec: Recorder, device_id: int) -> dict[str, Any] | None:
    item = rec.latest.get(f"homeassistant/device/flespi/flespi_{device_id}/config")
    return item.json() if item else None


def model(rec: Recorder, device_id: int) -> str | None:
    cfg = config_of(rec, device_id)
    return cfg["dev"].get("model") if cfg else None


async def test_home_assistant_device_info_from_flespi(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    first, *_ = sim.devices
    await sim.set_values(first, {"firmware.version": "2.1.7", "hardware.version": "B3"})
    async with Recorder(local, ["homeassistant/device/#"]) as rec:
        bridge: Bridge = await bridge_factory(make_settings(upstream, local))
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        await rec.wait_for(lambda: all(model(rec, i) == "OMNI e-scooter" for i in sim.devices),
                           what="the model of each scooter")
        dev = config_of(rec, first)
        assert dev is not None
        assert dev["dev"]["manufacturer"] == "OMNI"
        assert dev["dev"]["model_id"] == "omni-scooter"
        assert (dev["dev"]["sw_version"], dev["dev"]["hw_version"]) == ("2.1.7", "B3")
        assert dev["dev"]["configuration_url"] == f"https://flespi.io/#/panel/open/devices/{first}"
        # once per device type and protocol, whatever the number of devices
        lookups = [r.uri for r in responder.requests if r.uri.startswith("gw/channel-protocols")]
        assert sorted(lookups) == [PROTOCOL_URI, TYPE_URI]
        # a firmware upgrade updates the device info
        await sim.set_values(first, {"firmware.version": "2.2.0"})
        await rec.wait_for(lambda: (config_of(rec, first) or {})["dev"].get("sw_version")
                           == "2.2.0", what="the new firmware")
        assert "firmware" not in dev["cmps"]  # no entity of its own


async def test_a_failing_lookup_leaves_the_generic_model(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    responder.fail_queue.extend([(503, "unavailable"), (503, "unavailable")])
    async with Recorder(local, ["homeassistant/device/#"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local))
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        port = bridge.health.port if bridge.health else 0
        for what in ("device_type", "protocol"):
            await wait_metric(port, "flespi_bridge_lookup_failures_total", lambda v: v == 1,
                              what=what)
        await rec.wait_for(lambda: all(model(rec, i) for i in sim.devices), what="configs")
        for device_id in sim.devices:
            cfg = config_of(rec, device_id)
            assert cfg is not None
            assert cfg["dev"]["model"] == f"flespi device type {DEVICE_TYPE_ID}"
            assert "manufacturer" not in cfg["dev"]
