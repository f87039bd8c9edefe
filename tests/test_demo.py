"""`flespi-bridge demo`: the whole pipeline with no flespi account."""

from __future__ import annotations

import re
import subprocess

import pytest
from helpers import PYTHON, bridge_env

from bridge import mosquitto
from bridge.exceptions import BrokerUnavailableError


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


def test_no_broker_available_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mosquitto, "find_binary", lambda: None)
    monkeypatch.setattr(mosquitto, "_docker_available", lambda: False)
    with pytest.raises(BrokerUnavailableError, match="install the `mosquitto` binary"):
        mosquitto.start()
