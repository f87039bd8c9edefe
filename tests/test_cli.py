"""The command line: clear errors instead of tracebacks."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from helpers import PYTHON, TOKEN, bridge_env


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
    assert version.stdout.startswith("flespi-bridge ")
