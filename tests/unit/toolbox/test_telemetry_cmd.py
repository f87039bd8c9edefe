"""`telemetry`, `sessions` and `token create` end to end against the simulator's REST API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.helpers import TOKEN
from support.toolbox_helpers import Api, cli, start_api

from bridge.sim.fleet import SCOOTER_PROFILE


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a


@pytest.fixture
async def commanding(tmp_path: Path) -> AsyncIterator[Api]:
    extra: dict[str, dict[str, object]] = {
        "flespi": {"devices": [5537000, 5537001], "client_id": "garage-bridge"},
        "commands": {"profiles": {"1272": SCOOTER_PROFILE}}}
    async for a in start_api(tmp_path, extra):
        yield a


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


async def test_sessions_mark_the_bridge_and_warn_on_a_shared_client_id(api: Api) -> None:
    run = await cli(api, "sessions")
    assert run.code == 0, run.err
    assert "panel-4.45.24-sim" in run.out
    assert "warning" not in run.err
    own = {"id": "s2", "client_id": "flespi-bridge", "connected": True, "clean": False,
           "expires": 604800, "size": 12, "ip": "10.0.0.2", "cid": 1000001}
    api.responder.tools.sessions += [own, {**own, "id": "s3", "ip": "10.0.0.3"}]
    run = await cli(api, "sessions")
    assert run.code == 0, run.err
    marked = [line for line in run.out.splitlines() if line.startswith("*")]
    assert len(marked) == 2
    assert all("flespi-bridge" in line for line in marked)
    assert "warning: 2 sessions use the client id 'flespi-bridge'" in run.err
    as_json = json.loads((await cli(api, "sessions", "--json")).out)
    assert [s["bridge"] for s in as_json] == [False, True, True]


async def test_token_create_hides_the_new_token_unless_asked(api: Api) -> None:
    run = await cli(api, "token", "create", "--ttl", "3600", "--info", "test")
    assert run.code == 0, run.err
    created = api.responder.tools.tokens[-1]
    assert created["ttl"] == 3600
    assert created["access"] == {"type": 0}
    assert created["key"] not in run.out + run.err
    assert "--show" in run.out
    shown = await cli(api, "token", "create", "--ttl", "60", "--show")
    assert shown.code == 0, shown.err
    assert f"token: {api.responder.tools.tokens[-1]['key']}" in shown.out
    for r in (run, shown):
        assert TOKEN not in r.out + r.err
    request = api.responder.requests[-1]
    assert request.method == "post"
    assert request.uri == "platform/tokens"


async def test_least_privilege_acl_is_what_the_configuration_needs(commanding: Api) -> None:
    run = await cli(commanding, "token", "create", "--ttl", "600", "--least-privilege")
    assert run.code == 0, run.err
    access = commanding.responder.tools.tokens[-1]["access"]
    assert access["type"] == 2
    acl = access["acl"]
    # its devices only: read them and what it subscribes of them, send them commands
    assert acl[0] == {"uri": "gw/devices", "methods": ["GET"], "ids": [5537000, 5537001],
                      "submodules": [{"name": "telemetry", "methods": ["GET"]},
                                     {"name": "connections", "methods": ["GET"]},
                                     {"name": "settings", "methods": ["GET"]},
                                     {"name": "commands", "methods": ["POST"]}]}
    assert {"uri": "mqtt", "topic": "flespi-bridge/garage-bridge/#",  # its reply prefix
            "actions": ["publish", "subscribe"]} in acl
    # flespi takes no MQTT entries under flespi/: those topics follow the REST rights
    assert not any(e.get("topic", "").startswith("flespi/") for e in acl)
    assert "ACL:" in run.out
    assert json.dumps("flespi-bridge/garage-bridge/#") in run.out
    assert commanding.responder.tools.tokens[-1]["key"] not in run.out


async def test_read_only_bridge_gets_no_command_rights(api: Api) -> None:
    run = await cli(api, "token", "create", "--ttl", "600", "--least-privilege")
    assert run.code == 0, run.err
    acl = api.responder.tools.tokens[-1]["access"]["acl"]
    # no command profiles: reading its devices, its reply prefix, and reading device type
    # and protocol names for Home Assistant's device info; nothing else
    devices, reply, names = acl
    assert devices == {"uri": "gw/devices", "methods": ["GET"], "ids": "all",
                       "submodules": [{"name": "telemetry", "methods": ["GET"]},
                                      {"name": "connections", "methods": ["GET"]}]}
    assert reply == {"uri": "mqtt", "topic": "flespi-bridge/flespi-bridge/#",
                     "actions": ["publish", "subscribe"]}
    assert names == {"uri": "gw/channel-protocols", "methods": ["GET"],
                     "submodules": [{"name": "device-types", "methods": ["GET"]}]}


async def test_a_rejected_token_request_never_echoes_a_token(api: Api) -> None:
    api.responder.fail_queue.append((403, "access denied"))
    run = await cli(api, "token", "create", "--ttl", "60", "--show")
    assert run.code == 1
    assert "flespi answered 403: access denied" in run.err
    assert TOKEN not in run.out + run.err
