"""TOML configurations for the bridge under test (`flespi-bridge run --config FILE`)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from bench.procs import REPO
from bridge import mosquitto
from bridge.config import _merge

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
# its own layers (file, secrets, overrides). It is private to `bridge.config`; the benchmark
# reuses it rather than keep a copy that could drift from what the bridge does.
merge = _merge


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(data))
    return path


# -- a small TOML writer (tables, arrays of tables, scalars, arrays, inline tables) -------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any], header: str | None) -> None:
        scalars = {k: v for k, v in body.items()
                   if not isinstance(v, dict) and not _is_table_array(v)}
        if header is not None:
            lines.append("")
            lines.append(header)
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, dict):
                table(name, v, f"[{name}]")
            elif _is_table_array(v):
                for item in v:
                    table(name, item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines).lstrip("\n") + "\n"
