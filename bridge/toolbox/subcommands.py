"""The toolbox's subcommands for `bridge/cli.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def add_subcommands(sub: Any, with_config: Callable[[Any], None]) -> None:
    from bridge.toolbox import sessions_cmd, telemetry_cmd, token_cmd, track_cmd

    for module in (track_cmd, telemetry_cmd, sessions_cmd, token_cmd):
        module.add_parser(sub, with_config)
