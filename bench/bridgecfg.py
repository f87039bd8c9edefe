"""TOML configurations for the bridge under test (`flespi-bridge run --config FILE`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from bench.procs import REPO
from bridge.config.settings import _merge
from bridge.sim import brokers as mosquitto

TOKEN = "BenchToken0123456789abcdef"
# Sections the benchmark owns; the rest of an extra configuration is passed through.
CONNECTION_SECTIONS = ("flespi", "local", "metrics", "log", "reconnect")
EXAMPLE = REPO / "config.example.toml"


def base(upstream: mosquitto.Broker, local: mosquitto.Broker, *, client_id: str,
         coalesce_window: float | None = None, log_level: str = "INFO") -> dict[str, Any]:
    local_section: dict[str, Any] = {"host": local.host, "port": local.port,
                                     "client_id": client_id}
    if coalesce_window is not None:
        local_section["coalesce_window"] = coalesce_window
    return {
        "flespi": {"token": TOKEN, "host": upstream.host, "port": upstream.port, "tls": False,
                   "client_id": client_id},
        "local": local_section,
        "reconnect": {"min_delay": 0.1, "max_delay": 1.0},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": mosquitto.free_port()},
        "log": {"level": log_level},
    }


def example_extras() -> dict[str, Any]:
    """The sections of `config.example.toml` that are not about connections (command
    profiles, discovery options, ...), when that file exists and parses."""
    try:
        data = tomllib.loads(EXAMPLE.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {k: v for k, v in data.items() if k not in CONNECTION_SECTIONS}


def load_extra(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    return tomllib.loads(path.read_text())


# Deep merge of configuration layers (`high` wins), the very function the bridge applies to
# its own layers (file, secrets, overrides). It is private to `bridge.config.settings`; the
# benchmark reuses it rather than keep a copy that could drift from what the bridge does.
merge = _merge


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path
