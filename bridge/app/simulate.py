"""`flespi-bridge simulate`: the simulated fleet published to a broker (`--broker`, or a
throwaway one started here as the demo does), or pushed as flespi's HTTP stream.

A broker that cannot be reached is one line on stderr and exit status 1, never a traceback;
Ctrl-C (or SIGTERM) stops the simulator and its throwaway broker in order."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from bridge import logs
from bridge.app import signals
from bridge.app.signals import stop_on_signals
from bridge.exceptions import BrokerUnavailableError
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto

EXIT_FAILED = 1


def run(args: argparse.Namespace) -> int:
    logs.setup("INFO", "text", [args.authorization or ""])
    if args.http_stream:
        return signals.run(_stream(args))
    if args.broker is not None:
        host, port = args.broker
        return signals.run(_publish(args, host, port))
    try:
        broker = mosquitto.start(extra_config=mosquitto.FLESPI_LIKE)
    except BrokerUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    with broker:
        print(f"no --broker given: started a throwaway broker on {broker.address} "
              "(it stops with the simulator)", flush=True)
        return signals.run(_publish(args, broker.host, broker.port))


async def _publish(args: argparse.Namespace, host: str, port: int) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    sim = Simulator(host, port, devices=args.devices, seed=args.seed, kind=args.fleet)
    try:
        await sim.start()
    except OSError as exc:  # refused, unreachable, unknown host
        print(f"error: cannot connect to the MQTT broker at {host}:{port} "
              f"({exc.strerror or exc}); start one there, or leave out --broker and the "
              "simulator starts a throwaway one", file=sys.stderr)
        return EXIT_FAILED
    print(f"simulating {args.devices} devices ({args.fleet}) on {host}:{port} at "
          f"{args.rate} messages/s", flush=True)
    responder = None
    if args.rest_port is not None:  # history, telemetry, sessions, tokens for the tools
        responder = Responder(sim)
        url = await responder.serve_http("127.0.0.1", args.rest_port)
        print(f"REST API on {url} (commands.http_url for track, telemetry, sessions, "
              "token)", flush=True)
    runner = asyncio.create_task(sim.run(args.rate, args.duration))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    waiter.cancel()
    await asyncio.gather(runner, waiter, return_exceptions=True)
    if responder is not None:
        await responder.close()
    await sim.stop()
    print("simulator stopped", flush=True)
    return 0


async def _stream(args: argparse.Namespace) -> int:
    """`simulate --http-stream URL`: the fleet's messages pushed as flespi's HTTP stream;
    after `--duration`, waits until every message is delivered (or Ctrl-C)."""
    import logging

    import orjson

    from bridge.sim.fleet import Fleet
    from bridge.sim.http_stream import HttpStream, feed, final_telemetry

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per batch is too many
    verify: ssl.SSLContext | bool = True
    if args.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(args.ca_file))
    fleet = Fleet(args.devices, seed=args.seed)
    stream = HttpStream(args.http_stream, authorization=args.authorization,
                        limit_messages=args.limit_messages, retry_delay=args.retry_delay,
                        verify=verify)
    print(f"streaming {args.devices} devices to {args.http_stream} at {args.rate} "
          f"messages/s, batches of at most {args.limit_messages}", flush=True)
    stop = asyncio.Event()
    stop_on_signals(stop)
    sender = asyncio.create_task(stream.run())
    waiter = asyncio.create_task(stop.wait())
    try:
        feeder = asyncio.create_task(feed(fleet, stream, args.rate, args.duration))
        await asyncio.wait({feeder, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if feeder.done():
            drained = asyncio.create_task(stream.drain(timeout=24 * 3600))
            await asyncio.wait({drained, waiter}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        feeder.cancel()
    finally:
        sender.cancel()
        waiter.cancel()
        await stream.close()
    answers = ", ".join(f"{code}: {n}" for code, n in sorted(stream.answers.items()))
    print(f"delivered {stream.delivered} messages in {stream.batches} batches "
          f"({stream.pending} pending); answers {answers or 'none'}", flush=True)
    if args.report is not None:
        args.report.write_bytes(orjson.dumps({
            "delivered": stream.delivered, "pending": stream.pending,
            "answers": dict(stream.answers), "telemetry": final_telemetry(fleet)}))
    return 0 if stream.pending == 0 else 1
