"""`check-config --online`: does the token connect, what does it see, which subscriptions does
flespi refuse, is the local broker there. Against the simulator on real brokers: one where
the fleet lives, one that refuses the token, one whose ACL refuses the telemetry."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import tomli_w
from support.helpers import PYTHON, TOKEN, Brokers, bridge_env

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto


def check_online(tmp_path: Path, upstream: mosquitto.Broker, local_port: int,
                 **flespi: Any) -> subprocess.CompletedProcess[str]:
    conf = {"flespi": {"token": TOKEN, "host": upstream.host, "port": upstream.port,
                       "tls": False, **flespi},
            "local": {"host": "127.0.0.1", "port": local_port}}
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(conf))
    return subprocess.run([PYTHON, "-m", "bridge", "check-config", "--online", "--config",
                           str(path)], capture_output=True, text=True, env=bridge_env(),
                          timeout=90)


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    out = result.stdout
    assert TOKEN not in out + result.stderr
    return [line.strip() for line in out.split("online:\n", 1)[1].splitlines()]


async def test_everything_reachable_lists_the_devices(
        tmp_path: Path, upstream: mosquitto.Broker, local: mosquitto.Broker,
        sim: Simulator) -> None:
    result = check_online(tmp_path, upstream, local.port)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    assert found[0] == f"ok   flespi: connected to mqtt://{upstream.address} with the token"
    assert found[1].startswith("ok   ACL: all ")
    assert found[1].endswith(" subscriptions granted")
    assert found[2] == ("ok   devices: 3 seen: 5537000 scooter-001, 5537001 scooter-002, "
                        "5537002 scooter-003")
    assert found[3] == f"ok   local broker: connected to mqtt://127.0.0.1:{local.port}"


def test_a_refused_token_and_a_missing_local_broker_are_a_line_each(
        tmp_path: Path, brokers: Brokers) -> None:
    refusing = brokers(extra_config=("allow_anonymous false",))
    gone = mosquitto.free_port()
    result = check_online(tmp_path, refusing, gone)
    assert result.returncode == 1
    found = lines(result)
    assert found[0].startswith(f"FAIL flespi: cannot connect to mqtt://{refusing.address}: ")
    assert "Not authorized" in found[0]
    assert found[1].startswith(f"FAIL local broker: cannot connect to mqtt://127.0.0.1:{gone}")
    assert len(found) == 2
    assert "Traceback" not in result.stderr


async def test_a_token_that_may_read_nothing_sees_no_device(
        tmp_path: Path, brokers: Brokers, local: mosquitto.Broker) -> None:
    """The fleet is there (published by the simulator, anonymous), but the broker's ACL lets
    the token read none of its state: a FAIL line says so. (Mosquitto grants a subscription
    its ACL denies and then delivers nothing; flespi refuses it in the SUBACK, which the ACL
    line names: not shown here.)"""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite flespi/#\nuser {TOKEN}\ntopic readwrite flespi-bridge/#\n")
    strict = brokers(extra_config=(*mosquitto.FLESPI_LIKE, f"acl_file {acl}"))
    sim = Simulator(strict.host, strict.port, devices=2)
    await sim.start()
    try:
        result = await asyncio.to_thread(check_online, tmp_path, strict, local.port)
    finally:
        await sim.stop()
    assert result.returncode == 1
    found = lines(result)
    assert found[0].startswith("ok   flespi: connected")
    assert "FAIL devices: the token sees no device (flespi.devices, or the token's ACL)" in found
