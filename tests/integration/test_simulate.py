"""`flespi-bridge simulate` as a newcomer runs it: with no broker of their own (it starts a
throwaway one), against a broker that is not there (one line, no traceback), and Ctrl-C."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from support.helpers import PYTHON, Foreground, bridge_env

from bridge.sim import brokers as mosquitto


async def _battery_levels(port: int) -> int:
    """How many devices' retained battery level a subscriber finds on the broker."""
    found: set[str] = set()
    async with asyncio.timeout(20), aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("flespi/state/gw/devices/+/telemetry/battery.level")
        async for message in client.messages:
            found.add(message.topic.value)
            if len(found) == 2:
                break
    return len(found)


def test_without_a_broker_it_starts_a_throwaway_one_and_ctrl_c_stops_both() -> None:
    with Foreground("simulate", "--devices", "2", "--rest-port", "0") as sim:
        lines = sim.read_until("REST API on")
        found = re.search(r"started a throwaway broker on 127\.0\.0\.1:(\d+)", "".join(lines))
        assert found, lines
        port = int(found.group(1))
        # the fleet is on that broker: a subscriber finds its retained telemetry
        assert asyncio.run(_battery_levels(port)) == 2
        out, err = sim.ctrl_c()
    assert sim.proc.returncode == 0
    assert err == ""
    assert out.rstrip().endswith("simulator stopped")
    with pytest.raises(ConnectionRefusedError):  # the throwaway broker stopped with it
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_broker_that_is_not_there_is_one_line() -> None:
    port = mosquitto.free_port()
    result = subprocess.run(
        [PYTHON, "-m", "bridge", "simulate", "--broker", f"127.0.0.1:{port}",
         "--rest-port", "0"], capture_output=True, text=True, env=bridge_env(), timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: cannot connect to the MQTT broker at 127.0.0.1:{port} (Connection refused); "
        "start one there, or leave out --broker and the simulator starts a throwaway one"]


def test_a_broker_that_is_not_host_port_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "bridge", "simulate", "--broker", "localhost"],
                            capture_output=True, text=True, env=bridge_env(), timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "'localhost' is not HOST:PORT" in result.stderr
