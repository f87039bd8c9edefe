"""`flespi-bridge run | check-config | simulate | demo`, and the toolbox's `track |
telemetry | sessions | token create` (bridge/toolbox)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bridge import __version__
from bridge.app import signals
from bridge.app.signals import stop_on_signals
from bridge.config import settings as config
from bridge.exceptions import BrokerUnavailableError, ConfigError, ListenError

if TYPE_CHECKING:
    from bridge.app.bridge import Bridge

# the simulator's fleets (bridge.sim.fleet.FLEETS; not imported: the CLI starts fast)
FLEETS = ("scooters", "vans", "mixed")
EXIT_CONFIG = 2
EXIT_FAILED = 1


def _event_loop_policy() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _load(args: argparse.Namespace) -> config.Settings:
    return config.load(args.config, secrets_dir=args.secrets_dir,
                       check_files=not getattr(args, "no_file_checks", False))


def _print_problems(exc: ConfigError) -> int:
    print(f"error: {len(exc.problems)} problem(s) in the configuration", file=sys.stderr)
    for key, reason in exc.problems:
        print(f"  {key}: {reason}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _print_problems(exc)
    print("ok")
    for line in config.summary(settings):
        print(f"  {line}")
    if not args.online:
        return 0
    from bridge.app import online

    print("online:", flush=True)
    _event_loop_policy()
    return asyncio.run(online.run(settings))


def _secrets(settings: config.Settings) -> list[str]:
    values = [settings.flespi.token.get_secret_value()]
    if settings.local.password is not None:
        values.append(settings.local.password.get_secret_value())
    if settings.stream.authorization is not None:
        values.append(settings.stream.authorization.get_secret_value())
    return values


async def serve(bridge: Bridge, stop: asyncio.Event) -> int:
    """Run `bridge` until `stop` is set (0) or one of its essential tasks ends (1)."""
    try:
        await bridge.start()
    except ListenError as exc:  # a port is taken or not ours to bind
        print(f"error: {exc}", file=sys.stderr)
        await bridge.stop()
        return EXIT_FAILED
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(bridge.failed.wait())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()
    await bridge.stop()
    if bridge.failed.is_set():
        print("error: an essential task of the bridge ended; see the log above",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bridge import logs
    from bridge.app.bridge import Bridge

    try:
        settings = _load(args)
    except ConfigError as exc:
        return _print_problems(exc)
    logs.setup(settings.log.level, settings.log.format, _secrets(settings))

    async def main() -> int:
        stop = asyncio.Event()
        stop_on_signals(stop)
        try:
            bridge = Bridge(settings)
        except (OSError, ssl.SSLError) as exc:  # a TLS file changed since it was checked
            print(f"error: cannot load the TLS files: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return await serve(bridge, stop)

    _event_loop_policy()
    return signals.run(main())


def cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.app import simulate

    _event_loop_policy()
    return simulate.run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    import aiomqtt

    from bridge.app import demo

    own = None
    if args.home_assistant is not None:
        host, port = args.home_assistant
        own = demo.LocalBroker(host, port, args.username, os.environ.get("DEMO_MQTT_PASSWORD"),
                               own=True)
    try:
        if args.clean:
            if own is None:
                print("error: --clean needs --home-assistant HOST:PORT", file=sys.stderr)
                return EXIT_CONFIG
            from bridge.app import demo_clean

            cleared = asyncio.run(demo_clean.clean(own))
            print(f"cleared {cleared} retained topic(s) of the demo from {own.address}")
            return 0
        return signals.run(demo.run(devices=args.devices, rate=args.rate,
                                    duration=args.duration, fleet=args.fleet, own=own))
    except BrokerUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, aiomqtt.MqttError) as exc:
        where = own.address if own else "the local broker"
        print(f"error: cannot use the MQTT broker at {where}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C before the demo's own handler is installed
        return 0


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host.strip("[]") or "127.0.0.1", int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flespi-bridge",
        description="Bridge a flespi fleet to a local MQTT broker (Home Assistant, Grafana).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", "-c", type=Path, help="TOML configuration file")
        sp.add_argument("--secrets-dir", type=Path,
                        help="directory of secret files named <section>__<key>")

    run = sub.add_parser("run", help="run the bridge")
    with_config(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate the configuration and summarize it")
    with_config(check)
    check.add_argument("--no-file-checks", action="store_true",
                       help="do not look at the files the configuration names (token_file, "
                            "ca_file, cert_file, key_file): for a configuration meant for "
                            "another machine, e.g. a Helm chart's ConfigMap")
    check.add_argument("--online", action="store_true",
                       help="also connect: to flespi with the token (the devices it sees, "
                            "the subscriptions its ACL refuses) and to the local broker; "
                            "exit status 1 if any fails")
    check.set_defaults(func=cmd_check_config)

    sim = sub.add_parser("simulate", help="publish a simulated flespi fleet to a broker")
    target = sim.add_mutually_exclusive_group()
    target.add_argument("--broker", type=_host_port,
                        help="HOST:PORT of the broker to publish to (default: a throwaway "
                             "broker on a free loopback port, as the demo's)")
    target.add_argument("--http-stream", metavar="URL",
                        help="push the messages to URL as flespi's HTTP stream does")
    sim.add_argument("--devices", type=int, default=10)
    sim.add_argument("--rate", type=float, default=5.0, help="device messages per second")
    sim.add_argument("--duration", type=float, default=None, help="seconds (default: forever)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fleet", choices=FLEETS, default="scooters",
                     help="e-scooters, delivery vans, or every other device a van")
    sim.add_argument("--rest-port", type=int, metavar="PORT",
                     help="--broker: also serve flespi's REST API for the fleet (device "
                          "history, telemetry, sessions, tokens) over HTTP on "
                          "127.0.0.1:PORT (0: any free port), for track and the other tools")
    sim.add_argument("--authorization", help="--http-stream: the Authorization header value")
    sim.add_argument("--limit-messages", type=int, default=1000,
                     help="--http-stream: messages per batch at most (flespi's limit_messages)")
    sim.add_argument("--retry-delay", type=float, default=1.0,
                     help="--http-stream: seconds before a batch not answered 200 is resent")
    sim.add_argument("--ca-file", type=Path, help="--http-stream: CA bundle for an https URL")
    sim.add_argument("--report", type=Path,
                     help="--http-stream: write a JSON report (counts, final telemetry) here")
    sim.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="the whole pipeline on this machine, no flespi account")
    demo.add_argument("--devices", type=int, default=5)
    demo.add_argument("--rate", type=float, default=2.0, help="device messages per second")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: Ctrl-C)")
    demo.add_argument("--fleet", choices=FLEETS, default="scooters",
                      help="e-scooters, delivery vans, or every other device a van")
    demo.add_argument("--home-assistant", type=_host_port, nargs="?", metavar="HOST:PORT",
                      const=("localhost", 1883),
                      help="publish to your own broker (default localhost:1883) instead of a "
                           "throwaway one, so the fleet appears in your Home Assistant; "
                           "topics under flespi-demo/ (password: DEMO_MQTT_PASSWORD)")
    demo.add_argument("--username", help="--home-assistant: the broker's user name")
    demo.add_argument("--clean", action="store_true",
                      help="--home-assistant: remove every retained topic the demo published "
                           "there (and so its devices from Home Assistant), then exit")
    demo.set_defaults(func=cmd_demo)

    from bridge.toolbox.subcommands import add_subcommands

    add_subcommands(sub, with_config)
    return p


# Options whose values may start with "-" (`--from -2h`): argparse would take "-2h" for an
# option of its own unless it is joined to its option (`--from=-2h`).
DASHED_VALUES = ("--from", "--to")
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a program ended by SIGPIPE


def _join_dashed(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in DASHED_VALUES and arg.startswith("-") and len(arg) > 1 \
                and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(_join_dashed(sys.argv[1:] if argv is None else argv))
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing, and keep Python from complaining
        # about the unflushed standard output at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result
