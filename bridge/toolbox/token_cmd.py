"""`flespi-bridge token create`: a flespi token with a time to live, optionally limited to
what this bridge's configuration needs. The new token is printed only with `--show`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from bridge.config import settings as config
from bridge.toolbox import acl, common
from bridge.toolbox.client import FlespiClient

HIDDEN = "(hidden; use --show to print it once)"


def add_parser(sub: Any, with_config: Any) -> None:
    p = sub.add_parser("token", help="flespi tokens")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a flespi token")
    with_config(create)
    create.add_argument("--ttl", type=int, required=True,
                        help="seconds the token lives unused (flespi's ttl)")
    create.add_argument("--info", default="flespi-bridge", help="the token's description")
    create.add_argument("--least-privilege", action="store_true",
                        help="an ACL token allowing exactly what this configuration needs")
    create.add_argument("--show", action="store_true", help="print the new token's key")
    create.set_defaults(func=cmd_token_create)


def request(settings: config.Settings, ttl: int, info: str, least: bool
            ) -> list[dict[str, Any]]:
    access: dict[str, Any] = {"type": 2, "acl": acl.acl(settings)} if least else {"type": 0}
    return [{"info": info, "ttl": ttl, "access": access}]


def cmd_token_create(args: argparse.Namespace) -> int:
    if args.ttl <= 0:
        print("error: --ttl must be positive", file=sys.stderr)
        return common.EXIT_USAGE

    async def main(settings: config.Settings, rest: FlespiClient) -> int:
        body = request(settings, args.ttl, args.info, args.least_privilege)
        result = await rest.post("platform/tokens", body)
        token = result[0] if isinstance(result, list) and result else None
        if not isinstance(token, dict):
            return common.fail(settings, "flespi answered without the new token")
        print(f"created token {token.get('id')} ({token.get('info')}), ttl {token.get('ttl')} s")
        if args.least_privilege:
            print("ACL:")
            print(orjson.dumps(body[0]["access"]["acl"], option=orjson.OPT_INDENT_2).decode())
        key = token.get("key")
        print(f"token: {key if args.show else HIDDEN}")
        return 0

    return common.run(args, main)
