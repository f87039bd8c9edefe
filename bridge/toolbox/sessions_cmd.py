"""`flespi-bridge sessions`: the account's MQTT sessions, the bridge's own marked, and a
warning when its client id is used by more than one session (they take the session from
each other: a classic cause of lost messages)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from bridge.config import settings as config
from bridge.toolbox import common
from bridge.toolbox.client import FlespiClient

COLUMNS = ("client_id", "connected", "clean", "expires", "size", "ip", "id")


def add_parser(sub: Any, with_config: Any) -> None:
    p = sub.add_parser("sessions", help="the account's MQTT sessions")
    with_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_sessions)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def render(sessions: list[dict[str, Any]], own: str) -> str:
    rows: list[tuple[str, ...]] = [("", *COLUMNS)]
    for s in sessions:
        rows.append(("*" if s.get("client_id") == own else "",
                     *(_text(s.get(c)) for c in COLUMNS)))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines) + f"\n(*: this bridge's session, client id {own})\n"


def duplicates(sessions: list[dict[str, Any]], own: str) -> int:
    return sum(1 for s in sessions if s.get("client_id") == own)


def cmd_sessions(args: argparse.Namespace) -> int:
    async def main(settings: config.Settings, rest: FlespiClient) -> int:
        result = await rest.get("mqtt/sessions/all")
        sessions = [s for s in result if isinstance(s, dict)] if isinstance(result, list) \
            else []
        own = settings.flespi.client_id
        if args.json:
            print(orjson.dumps([{**s, "bridge": s.get("client_id") == own} for s in sessions],
                               option=orjson.OPT_INDENT_2).decode())
        else:
            print(render(sessions, own), end="")
        count = duplicates(sessions, own)
        if count > 1:
            print(f"warning: {count} sessions use the client id {own!r}: two bridges with "
                  "one client id take the session from each other and lose messages; give "
                  "each bridge its own flespi.client_id", file=sys.stderr)
        return 0

    return common.run(args, main)
