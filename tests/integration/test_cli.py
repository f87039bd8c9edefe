"""The command line: clear errors instead of tracebacks."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from pathlib import Path

from support.helpers import PYTHON, TOKEN, Recorder, bridge_env, retained

from bridge.sim import brokers as mosquitto

TELEMETRY = "flespi/state/gw/devices/+/telemetry/+"


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'[flespi]\ntoken = "{TOKEN}"\nhost = "127.0.0.1"\nport = 9\n'
                          f"tls = false\n[metrics]\nport = {port}\n")
        result = subprocess.run([PYTHON, "-m", "bridge", "run", "--config", str(config)],
                                capture_output=True, text=True, env=bridge_env(), timeout=60)
    assert result.returncode == 1
    assert f"error: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_version_and_help() -> None:
    result = subprocess.run([PYTHON, "-m", "bridge", "--help"], capture_output=True, text=True,
                            env=bridge_env(), timeout=60)
    assert result.returncode == 0
    for command in ("run", "check-config", "demo", "simulate"):
        assert command in result.stdout
    version = subprocess.run([PYTHON, "-m", "bridge", "--version"], capture_output=True,
                             text=True, env=bridge_env(), timeout=60)
    assert version.returncode == 0
    # A release (0.2.0) or, between tags, a development version from git (0.2.1.dev3+g1a2b3c4,
    # 0.1.dev326+g1a2b3c4d in a clone without tags): PEP 440 either way.
    assert re.fullmatch(r"flespi-bridge \d+(\.\d+)+(\.dev\d+)?(\+[0-9a-z.]+)?\n",
                        version.stdout), version.stdout


async def test_simulate_publishes_retained_telemetry(upstream: mosquitto.Broker) -> None:
    """`flespi-bridge simulate` publishes the fleet as flespi does: retained telemetry per
    parameter, then new values at the rate asked for, until --duration is over."""
    marker = "test-marker/simulate"
    async with Recorder(upstream, [TELEMETRY, marker]) as live:
        started = asyncio.get_running_loop().time()
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "bridge", "simulate", "--broker", f"127.0.0.1:{upstream.port}",
            "--devices", "2", "--rate", "10", "--duration", "3", env=bridge_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        elapsed = asyncio.get_running_loop().time() - started
        assert proc.returncode == 0, stderr.decode()
        assert 3 <= elapsed < 30  # it stops by itself after --duration
        assert stdout.decode().startswith(
            f"simulating 2 devices (scooters) on 127.0.0.1:{upstream.port} at 10.0 messages/s")
        assert b"Traceback" not in stderr
        found = await retained(upstream, [TELEMETRY])
        # everything published has reached the live subscriber once a marker sent now has
        await live.publish(marker, b"1", qos=1)
        await live.wait_for(lambda: any(m.topic == marker for m in live.messages), 10,
                            "the marker")
        last: dict[str, bytes] = {}
        for message in live.messages:
            if message.topic != marker:
                last[message.topic] = message.payload
        count = sum(m.topic != marker for m in live.messages)

    devices = {topic.split("/")[4] for topic in found}
    assert len(devices) == 2
    for device in devices:
        for param in ("battery.level", "position"):
            assert f"flespi/state/gw/devices/{device}/telemetry/{param}" in found
    # more than the initial state: the run kept publishing new values (about 30 messages,
    # one parameter publication each at least), and what stays retained is the latest
    assert count > len(found) + 20
    assert found == {topic: payload for topic, payload in last.items() if payload}
