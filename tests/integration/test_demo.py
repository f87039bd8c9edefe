"""`flespi-bridge demo`: the whole pipeline with no flespi account."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest
from support.helpers import PYTHON, Foreground, bridge_env, retained

from bridge.app import demo
from bridge.config import settings as config
from bridge.exceptions import BrokerUnavailableError
from bridge.sim import brokers as mosquitto


def test_demo_shows_states_arriving_on_the_local_broker() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "bridge", "demo", "--devices", "3", "--rate", "5", "--duration", "6"],
        capture_output=True, text=True, env=bridge_env(), timeout=90,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'flespi/#' -v", out)
    states = re.findall(r"flespi/(\d+)/state: battery (\d+)%", out)
    assert {device for device, _ in states} == {"5537000", "5537001", "5537002"}
    assert "flespi/5537000/availability: online" in out
    assert out.rstrip().endswith("demo stopped")
    assert "Traceback" not in result.stderr


def test_demo_runs_a_mixed_fleet_of_scooters_and_vans() -> None:
    """`--fleet mixed`: every other device is a van, whose state shows its ignition, fuel and
    mileage (the scooters their battery)."""
    result = subprocess.run(
        [PYTHON, "-m", "bridge", "demo", "--devices", "2", "--rate", "4", "--duration", "5",
         "--fleet", "mixed"],
        capture_output=True, text=True, env=bridge_env(), timeout=90,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 devices: mixed" in out
    assert re.search(r"flespi/5537000/state: battery \d+%", out)
    van = re.findall(r"flespi/5537001/state: ignition=(True|False), fuel ([\d.]+)%, "
                     r"([\d.]+) km", out)
    assert van, out
    assert all(0 <= float(fuel) <= 100 and float(km) > 0 for _, fuel, km in van)
    assert "Traceback" not in result.stderr


def test_no_broker_available_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mosquitto, "find_binary", lambda: None)
    monkeypatch.setattr(mosquitto, "_docker_available", lambda: False)
    with pytest.raises(BrokerUnavailableError, match="install the `mosquitto` binary"):
        mosquitto.start()


def test_demo_ignores_the_environment_and_never_shows_a_real_token(tmp_path: Path) -> None:
    """A real flespi token exported in the shell must not reach the demo's brokers or its
    output, and no other FLESPI_BRIDGE_* variable may steer the demo."""
    secret = f"RealFlespiToken-{os.urandom(12).hex()}"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "flespi__token").write_text(secret)
    env = bridge_env()
    env.update({
        "FLESPI_BRIDGE_FLESPI__TOKEN": secret,
        "FLESPI_BRIDGE_FLESPI__CLIENT_ID": "not-the-demo",
        "FLESPI_BRIDGE_LOCAL__HOST": "bogus-host.invalid",
        "FLESPI_BRIDGE_LOCAL__BASE_TOPIC": "elsewhere",
        "FLESPI_BRIDGE_METRICS__PORT": "1",
        "FLESPI_BRIDGE_SECRETS_DIR": str(secrets),
    })
    result = subprocess.run(
        [PYTHON, "-m", "bridge", "demo", "--devices", "2", "--rate", "5", "--duration", "3"],
        capture_output=True, text=True, env=env, timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"flespi/553700[01]/state: battery \d+%", out), out
    assert "bogus-host" not in out
    assert out.rstrip().endswith("demo stopped")


def test_demo_settings_take_nothing_from_the_environment(
        upstream: mosquitto.Broker, local: mosquitto.Broker, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"RealFlespiToken-{os.urandom(12).hex()}"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "flespi__token").write_text(secret)
    (secrets / "local__password").write_text(secret)
    monkeypatch.setenv("FLESPI_BRIDGE_FLESPI__TOKEN", secret)
    monkeypatch.setenv("FLESPI_BRIDGE_LOCAL__HOST", "bogus-host.invalid")
    monkeypatch.setenv("FLESPI_BRIDGE_LOG__LEVEL", "DEBUG")
    monkeypatch.setenv("FLESPI_BRIDGE_SECRETS_DIR", str(secrets))
    monkeypatch.setattr(config, "DEFAULT_SECRETS_DIR", secrets)
    # the environment really is there for an ordinary load ...
    ordinary = config.load()
    assert ordinary.flespi.token.get_secret_value() == secret
    assert ordinary.local.host == "bogus-host.invalid"
    # ... and the demo's settings ignore all of it
    s = demo.demo_settings(upstream, local)
    assert s.flespi.token.get_secret_value() == demo.DEMO_TOKEN
    assert (s.flespi.host, s.flespi.port, s.flespi.tls) == (upstream.host, upstream.port, False)
    assert (s.local.host, s.local.port) == (local.host, local.port)
    assert s.local.password is None
    assert s.log.level == "INFO"
    # and the environment is back for the next load
    assert config.load().local.host == "bogus-host.invalid"


def _children(pid: int) -> list[int]:
    """The PIDs of `pid`'s child processes (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_ctrl_c_stops_the_demo_cleanly() -> None:
    """Ctrl-C is SIGINT to the terminal's whole process group: the demo's throwaway brokers
    must not die under the bridge, and the demo says `demo stopped` with nothing on stderr."""
    with Foreground("demo", "--devices", "2", "--rate", "5") as demo:
        lines = demo.read_until("/state: battery")
        brokers = _children(demo.proc.pid)
        assert len(brokers) == 2, lines
        out, err = demo.ctrl_c()
    assert demo.proc.returncode == 0
    assert err == ""
    assert out.rstrip().endswith("demo stopped")
    assert all(not Path(f"/proc/{pid}").exists() for pid in brokers)


async def test_demo_on_your_own_broker_shows_commandable_entities_and_clean_removes_them(
        local: mosquitto.Broker) -> None:
    """`demo --home-assistant HOST:PORT`: the fleet on the user's own broker (here a
    throwaway one standing in for it), with discovery configs for the scooters' lock, button
    and number entities; `--clean` removes every retained topic the demo published, and
    nothing of anyone else's."""
    async with aiomqtt.Client(local.host, local.port) as client:
        await client.publish("flespi/42/state", b'{"battery": 1}', qos=1, retain=True)
        await client.publish("homeassistant/sensor/other/config", b'{"state_topic": "x"}',
                             qos=1, retain=True)
    result = subprocess.run(
        [PYTHON, "-m", "bridge", "demo", "--home-assistant", local.address, "--devices", "2",
         "--rate", "5", "--duration", "4"],
        capture_output=True, text=True, env=bridge_env(), timeout=90)
    assert result.returncode == 0, result.stderr
    assert f"--home-assistant {local.address} --clean" in result.stdout
    found = await retained(local, ["flespi-demo/#", "homeassistant/#"])
    assert "flespi-demo/5537000/state" in found
    configs = b"".join(p for t, p in found.items() if t.startswith("homeassistant/"))
    assert b'"flespi-demo/' in configs
    for platform in (b'"lock"', b'"button"', b'"number"'):  # the scooters' commands
        assert platform in configs

    cleaned = subprocess.run(
        [PYTHON, "-m", "bridge", "demo", "--home-assistant", local.address, "--clean"],
        capture_output=True, text=True, env=bridge_env(), timeout=90)
    assert cleaned.returncode == 0, cleaned.stderr
    left = await retained(local, ["#"])
    assert set(left) == {"flespi/42/state", "homeassistant/sensor/other/config"}
    assert re.fullmatch(r"cleared \d+ retained topic\(s\) of the demo from .*\n", cleaned.stdout)


def test_a_second_signal_at_the_very_end_changes_nothing() -> None:
    """An impatient second Ctrl-C, or `docker stop` after a Ctrl-C, landing while the demo
    exits: still status 0 and nothing on stderr (before: killed, status -15, once the event
    loop had put the default handlers back)."""
    with Foreground("demo", "--devices", "2", "--rate", "5") as demo:
        demo.read_until("/state: battery")
        os.killpg(demo.proc.pid, signal.SIGINT)
        demo.read_until("demo stopped")
        while demo.proc.poll() is None:  # into every moment of the exit that is left
            with contextlib.suppress(ProcessLookupError):
                demo.proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        _, err = demo.proc.communicate(timeout=30)
    assert demo.proc.returncode == 0
    assert err == ""
