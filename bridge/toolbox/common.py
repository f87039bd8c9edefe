"""What every toolbox command shares: the configuration (as `run` loads it), the REST
client, and errors printed with the token scrubbed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from bridge import logs
from bridge.config import settings as config
from bridge.exceptions import ConfigError, RestError
from bridge.toolbox.client import FlespiClient

EXIT_FAILED = 1
EXIT_USAGE = 2


def load(args: argparse.Namespace) -> config.Settings | None:
    """The settings, or None after printing every problem (as `check-config` does)."""
    try:
        return config.load(args.config, secrets_dir=args.secrets_dir)
    except ConfigError as exc:
        print(f"error: {len(exc.problems)} problem(s) in the configuration", file=sys.stderr)
        for key, reason in exc.problems:
            print(f"  {key}: {reason}", file=sys.stderr)
        return None


def client(settings: config.Settings) -> FlespiClient:
    return FlespiClient(settings.commands.http_url, settings.flespi.token.get_secret_value())


def fail(settings: config.Settings, message: str) -> int:
    scrub = logs.RedactingFilter([settings.flespi.token.get_secret_value()]).scrub
    print(f"error: {scrub(message)}", file=sys.stderr)
    return EXIT_FAILED


def run(args: argparse.Namespace,
        main: Callable[[config.Settings, FlespiClient], Awaitable[int]]) -> int:
    """Load the settings and run `main` with a client; REST errors become exit status 1."""
    settings = load(args)
    if settings is None:
        return EXIT_USAGE
    logs.setup("WARNING", settings.log.format, [settings.flespi.token.get_secret_value()])

    async def wrapped() -> int:
        async with client(settings) as rest:
            return await main(settings, rest)

    try:
        return asyncio.run(wrapped())
    except RestError as exc:
        return fail(settings, str(exc.message))
    except ModuleNotFoundError as exc:  # an optional dependency of the toolbox
        return fail(settings, f"this command needs the tools extra (missing {exc.name}): "
                    "pip install 'flespi-bridge[tools]'")
    except BrokenPipeError:  # `| head` has read enough: not an error (the CLI ends quietly)
        raise
    except OSError as exc:
        return fail(settings, f"cannot write the output: {exc}")
