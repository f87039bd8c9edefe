"""`telemetry` end to end against the simulator's REST API, and its normalization."""

from __future__ import annotations

import json
from pathlib import Path

from support.toolbox_helpers import Api, cli, start_api

from bridge.normalize.parameters import Parameters
from bridge.toolbox.telemetry_cmd import normalized


async def test_telemetry_is_normalized_by_the_catalogue(api: Api) -> None:
    dev = api.sim.devices[api.device]
    run = await cli(api, "telemetry", str(api.device), "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    attrs = doc["attributes"]
    assert attrs["battery"] == dev.value("battery.level")
    assert attrs["locked"] is dev.value("lock.status")
    assert attrs["latitude"] == dev.value("position")["latitude"]
    assert "message.type" in doc["unmapped"]  # outside the catalogue: shown raw
    table = await cli(api, "telemetry", str(api.device), "battery.level")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0] == f"device {api.device}"
    assert any(line.split()[:2] == ["battery", str(dev.value("battery.level"))]
               for line in lines)
    assert not any(line.startswith("locked") for line in lines)
    assert api.responder.requests[-1].uri == f"gw/devices/{api.device}/telemetry/battery.level"


async def test_telemetry_follows_the_configurations_parameters(tmp_path: Path) -> None:
    """The live path's table: overrides rename, ignores drop, `parameters = "all"` makes
    attributes of what the catalogue does not know."""
    extra: dict[str, dict[str, object]] = {"flespi": {
        "parameters": "all",
        "overrides": {"battery.level": {"attribute": "charge"},
                      "gsm.signal.level": {"ignore": True}}}}
    async for api in start_api(tmp_path, extra):
        dev = api.sim.devices[api.device]
        run = await cli(api, "telemetry", str(api.device), "--json")
        assert run.code == 0, run.err
        doc = json.loads(run.out)
        attrs = doc["attributes"]
        assert attrs["charge"] == dev.value("battery.level")
        assert "battery" not in attrs
        assert "gsm.signal.level" not in doc["unmapped"]
        assert not any(v == dev.value("gsm.signal.level") and "signal" in k
                       for k, v in attrs.items())
        assert "message.type" not in doc["unmapped"]  # a rule-made attribute now
        assert dev.value("message.type") in attrs.values()


async def test_telemetry_of_an_unknown_device_fails_cleanly(api: Api) -> None:
    run = await cli(api, "telemetry", "999")
    assert run.code == 1
    assert "device 999 not found" in run.err
    assert "Traceback" not in run.err


def test_telemetry_reads_position_parameters_of_their_own_and_skips_the_copies() -> None:
    """`position.satellites` is a catalogue row of its own (a tracker may send it without
    the `position` object's field); `position.latitude` only repeats the object."""
    telemetry = {
        "position": {"ts": 1.0, "value": {"latitude": -17.7, "longitude": -63.2}},
        "position.latitude": {"ts": 1.0, "value": -17.7},
        "position.satellites": {"ts": 1.0, "value": 9},
    }
    doc = normalized(telemetry, Parameters())
    assert doc["attributes"]["satellites"] == 9
    assert doc["attributes"]["latitude"] == -17.7
    assert doc["unmapped"] == {}
