"""Baseline contestants, each run as its own process like the bridge:

- `gmqtt-count`, `aiomqtt-count`: MQTT 5 subscribers at QoS 1 that only count (the
  ceilings of the client libraries on the stream the bridge receives);
- `aiomqtt-relay`: the minimal relay, subscribe upstream (MQTT 5, QoS 1) and republish each
  message locally (QoS 1, retained), one `await` at a time;
- `gmqtt-replay`: the start-up baseline, a gmqtt MQTT 5 client (the bridge's upstream
  library) that subscribes to the bridge's own topic filters (`--topic`, repeated), receives
  the retained replay at QoS 1 with the bridge's receive maximum, and only counts it.

They use uvloop when it is installed, as `flespi-bridge run` does. Each prints one JSON line
`{"event": "ready"}` once subscribed and `{"event": "done", ...}` at the end, and stops by
itself after `--count` messages or `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

TOPIC = "flespi/state/gw/devices/+/telemetry/+"


def _say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Tally:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()
        self.cpu_ready = 0.0
        self.cpu_done = 0.0

    def ready(self) -> None:
        self.cpu_ready = time.process_time()
        _say("ready")

    def hit(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.monotonic()
        if self.count >= self.expected and not self.done.is_set():
            self.last = time.monotonic()
            self.cpu_done = time.process_time()
            self.done.set()

    def report(self) -> None:
        _say("done", count=self.count, first=self.first, last=self.last,
             complete=self.done.is_set(), cpu_s=round(self.cpu_done - self.cpu_ready, 3))


async def gmqtt_count(host: str, port: int, expected: int, timeout: float) -> None:
    from gmqtt import Client
    from gmqtt.mqtt.constants import MQTTv50

    tally = Tally(expected)
    subscribed = asyncio.Event()

    def on_message(_c: Any, _topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
        tally.hit()
        return 0

    client = Client(f"bench-gmqtt-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    await client.connect(host, port, version=MQTTv50)
    client.subscribe(TOPIC, qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)
    tally.ready()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), timeout)
    tally.report()
    await client.disconnect()


async def gmqtt_replay(host: str, port: int, topics: list[str], expected: int,
                       receive_maximum: int, timeout: float, per_packet: int = 0) -> None:
    """Receive the retained replay of `topics` and count it: what any gmqtt client must
    spend before a bridge can have published anything of it. `per_packet` filters per
    SUBSCRIBE, all sent at once (0: one SUBSCRIBE)."""
    from gmqtt import Client, Subscription
    from gmqtt.mqtt.constants import MQTTv50

    tally = Tally(expected)

    def on_message(_c: Any, _topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
        tally.hit()
        return 0

    client = Client(f"bench-replay-{os.getpid()}", receive_maximum=receive_maximum)
    client.on_message = on_message
    await client.connect(host, port, version=MQTTv50)
    step = per_packet or len(topics)
    for start in range(0, len(topics), step):
        client.subscribe([Subscription(t, qos=1) for t in topics[start:start + step]])
        # gmqtt scans every subscription it keeps at each SUBACK: with a shard's per-device
        # filters that is quadratic, which the bridge avoids the same way
        client.subscriptions.clear()
    tally.ready()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), timeout)
    tally.report()
    await client.disconnect()


async def aiomqtt_count(host: str, port: int, expected: int, timeout: float) -> None:
    import aiomqtt

    tally = Tally(expected)

    async def consume(client: aiomqtt.Client) -> None:
        async for _message in client.messages:
            tally.hit()
            if tally.done.is_set():
                return

    async with aiomqtt.Client(host, port, identifier=f"bench-aiomqtt-{os.getpid()}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(TOPIC, qos=1)
        tally.ready()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consume(client), timeout)
    tally.report()


async def aiomqtt_relay(host: str, port: int, local_port: int, expected: int,
                        timeout: float) -> None:
    import aiomqtt

    tally = Tally(expected)

    async def relay(up: aiomqtt.Client, down: aiomqtt.Client) -> None:
        async for message in up.messages:
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = str(payload).encode()
            await down.publish(message.topic.value, payload, qos=1, retain=True)
            tally.hit()
            if tally.done.is_set():
                return

    async with (
        aiomqtt.Client(host, port, identifier=f"bench-relay-up-{os.getpid()}",
                       protocol=aiomqtt.ProtocolVersion.V5) as up,
        aiomqtt.Client(host, local_port, identifier=f"bench-relay-down-{os.getpid()}",
                       protocol=aiomqtt.ProtocolVersion.V311) as down,
    ):
        await up.subscribe(TOPIC, qos=1)
        tally.ready()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(relay(up, down), timeout)
    tally.report()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.clients")
    p.add_argument("kind", choices=("gmqtt-count", "aiomqtt-count", "aiomqtt-relay",
                                    "gmqtt-replay"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="upstream broker port")
    p.add_argument("--local-port", type=int, default=0, help="local broker port (relay)")
    p.add_argument("--count", type=int, required=True, help="stop after this many messages")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--topic", action="append", default=[],
                   help="gmqtt-replay: a topic filter (repeat for several)")
    p.add_argument("--topics-file", help="gmqtt-replay: topic filters, one a line")
    p.add_argument("--per-packet", type=int, default=0,
                   help="gmqtt-replay: filters per SUBSCRIBE packet (0: all in one)")
    p.add_argument("--receive-maximum", type=int, default=5000,
                   help="gmqtt-replay: MQTT 5 receive maximum (the bridge's default)")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.kind == "gmqtt-count":
        coro = gmqtt_count(args.host, args.port, args.count, args.timeout)
    elif args.kind == "aiomqtt-count":
        coro = aiomqtt_count(args.host, args.port, args.count, args.timeout)
    elif args.kind == "gmqtt-replay":
        topics = list(args.topic)
        if args.topics_file:
            with open(args.topics_file) as fh:
                topics += [line.strip() for line in fh if line.strip()]
        coro = gmqtt_replay(args.host, args.port, topics or [TOPIC], args.count,
                            args.receive_maximum, args.timeout, args.per_packet)
    else:
        coro = aiomqtt_relay(args.host, args.port, args.local_port, args.count, args.timeout)
    asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
