"""A small TOML writer (tables, arrays of tables, scalars, arrays, inline-free), for
configuration files the project writes: the add-on's, the benchmarks' and the tests'.
`tomllib` reads TOML but does not write it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def dumps(data: Mapping[str, Any]) -> str:
    """TOML for `data`: nested mappings become tables, lists of mappings arrays of tables."""
    lines: list[str] = []

    def table(prefix: str, body: Mapping[str, Any], header: str | None) -> None:
        if header is not None:
            lines.append("")
            lines.append(header)
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in body.items()
                     if not isinstance(v, Mapping) and not _is_table_array(v))
        for k, v in body.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, Mapping):
                table(name, v, f"[{name}]")
            elif _is_table_array(v):
                for item in v:
                    table(name, item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines).lstrip("\n") + "\n"
