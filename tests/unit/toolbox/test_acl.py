"""`token create --least-privilege` end to end: the ACL is what the configuration needs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.toolbox_helpers import Api, cli, start_api

from bridge.sim.fleet import SCOOTER_PROFILE


@pytest.fixture
async def commanding(tmp_path: Path) -> AsyncIterator[Api]:
    extra: dict[str, dict[str, object]] = {
        "flespi": {"devices": [5537000, 5537001], "client_id": "garage-bridge"},
        "commands": {"profiles": {"1272": SCOOTER_PROFILE}}}
    async for a in start_api(tmp_path, extra):
        yield a


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
