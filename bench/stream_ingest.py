"""Stream ingest (issue 15): messages per second through flespi's HTTP stream into the bridge
(each batch answered 200 only once its states are acknowledged by the local broker), against
a minimal receiver on the same server library (aiohttp) that only parses the batch and
answers 200, in the same run. The sender plays flespi: one batch in flight at a time.

The baselines count their fastest of three passes; the bridge is timed once, fresh, so its
figure includes announcing every device (the first message of each), then once more with as
many later messages of the same devices (its warm rate, in the notes). A third row is the
ceiling the local broker sets: the states the bridge publishes for each batch (one per
device the batch names), published by the bridge's own MQTT client straight to a fresh
local broker configured like the bridge's, QoS 1 and retained, one batch at a time, each
complete once the broker has acknowledged all of them. No HTTP, no mapping: what a 200
costs at least, whatever the bridge does.

`python -m bench.stream_ingest receiver PORT` is the minimal receiver (a process, like the bridge).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.procs import PYTHON, Lab
from bench.scenarios import Measurement, Settings, bridge_config
from bridge.core.store import iso
from bridge.core.transport import Publication
from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.client import MqttClient
from bridge.normalize import messages
from bridge.normalize.parameters import Parameters
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import Fleet

PATH = "/flespi/stream"
AUTH = "Bearer bench-stream-authorization"
BATCH_SIZES = (100, 1_000)
# The baselines (minimal receiver, local broker alone) are timed this many times over the
# same batches and their fastest pass counts: the strictest comparison for the bridge.
BASELINE_PASSES = 3


def batches(messages: int, devices: int, size: int) -> list[bytes]:
    """`messages` simulated device messages (a fleet riding), as stream batch bodies."""
    fleet = Fleet(devices, seed=1, first_id=6_000_000)
    devs = list(fleet.devices.values())
    ts = time.time() - messages
    out: list[dict[str, Any]] = []
    for i in range(messages):
        dev = devs[i % len(devs)]
        t = ts + i * 0.001
        out.append(fleet.message(dev, fleet.step(dev, t), t))
    return [orjson.dumps(out[i:i + size]) for i in range(0, len(out), size)]


async def push(url: str, bodies: list[bytes], timeout: float) -> tuple[float, int]:
    """Send the batches one at a time, each until answered 200; (seconds, retries)."""
    retries = 0
    headers = {"Authorization": AUTH, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        start = time.perf_counter()
        deadline = start + timeout
        for body in bodies:
            while True:
                async with http.post(url, data=body) as response:
                    await response.read()
                    if response.status == 200:
                        break
                retries += 1
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{url} never answered 200")
                await asyncio.sleep(0.05)
        return time.perf_counter() - start, retries


async def _ready(url: str, timeout: float) -> None:
    """Until the receiver answers an empty batch 200 (the bridge: connected and loaded)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers={"Authorization": AUTH}) as http:
        while True:
            try:
                async with http.post(url, data=b"[]") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready in {timeout}s")
            await asyncio.sleep(0.1)


def states(bodies: list[bytes]) -> list[list[Publication]]:
    """Per batch, the state publications the bridge makes of it: one per device, its latest
    values (mapped by the bridge's catalogue) with `last_seen`."""
    keys = messages.flat_keys(Parameters())
    out = []
    for body in bodies:
        latest: dict[int, dict[str, Any]] = {}
        for raw in orjson.loads(body):
            mapped = messages.map_message(keys, raw)
            if mapped.device_id is not None:
                doc = latest.setdefault(mapped.device_id, {})
                doc.update(mapped.values)
                doc["last_seen"] = iso(mapped.timestamp or time.time())
        out.append([Publication(f"flespi/{device}/state", orjson.dumps(doc))
                    for device, doc in latest.items()])
    return out


class Acks:
    """Counts a batch's PUBACKs (the `Waiter` of `MqttClient.publish_many`)."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)

    def refused(self, publication: tuple[str, bytes, bool], code: int) -> None:
        raise AssertionError(f"the broker refused {publication[0]}: 0x{code:02X}")


async def broker_alone(host: str, port: int, pubs: list[list[Publication]],
                       timeout: float) -> float:
    """Seconds to publish every batch's states, one batch at a time, each until all are
    acknowledged (QoS 1, retained), with the bridge's own client."""
    client = MqttClient(host, port, client_id="bench-stream-broker-alone")
    await client.connect()
    try:
        async with asyncio.timeout(timeout):
            start = time.perf_counter()
            for batch in pubs:
                acks = Acks(len(batch))
                if client.publish_many(batch, 1, acks):
                    await acks.done
            return time.perf_counter() - start
    finally:
        await client.disconnect()


LOCAL_ALONE = "local broker alone (the batches' states, QoS 1, no HTTP)"


async def stream(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    n, devices = settings.ingest_messages, settings.ingest_devices
    out: list[Measurement] = []
    for size in BATCH_SIZES:
        count = max(n, 2 * size)
        # the timed batches, then as many later ones for the bridge's warm pass
        both = batches(2 * count, devices, size)
        bodies, later = both[:len(both) // 2], both[len(both) // 2:]
        async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
            local = lab.local()
            pubs = states(bodies)
            try:
                seconds = min([await broker_alone(local.host, local.port, pubs,
                                                  settings.contestant_timeout)
                               for _ in range(BASELINE_PASSES)])
            except (TimeoutError, LocalUnavailableError) as exc:
                out.append(Measurement("stream", f"{LOCAL_ALONE}, batches of {size:,}", None,
                                       "msg/s", f"failed: {exc}",
                                       brokers=lab.nodelay_brokers()))
            else:
                published = sum(map(len, pubs))
                log(f"stream, batches of {size}: local broker alone {count / seconds:,.0f} "
                    "msg/s")
                out.append(Measurement(
                    "stream", f"{LOCAL_ALONE}, batches of {size:,}", count / seconds, "msg/s",
                    extra={"messages": count, "batch": size, "seconds": round(seconds, 3),
                           "retries": 0, "publications": published},
                    brokers=lab.nodelay_brokers()))
        for contestant in ("minimal aiohttp receiver", "flespi-bridge"):
            async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
                port = mosquitto.free_port()
                url = f"http://127.0.0.1:{port}{PATH}"
                name = f"stream-{size}-" + ("bridge" if contestant == "flespi-bridge"
                                            else "receiver")
                if contestant == "flespi-bridge":
                    up, local = lab.upstream(), lab.local()
                    cfg = bridge_config(name, up, local, settings, extra={"stream": {
                        "enabled": True, "host": "127.0.0.1", "port": port,
                        "authorization": AUTH, "timeout": 60.0}})
                    await lab.spawn(name, [PYTHON, "-m", "bridge", "run", "--config",
                                           str(cfg)], pipe=False)
                else:
                    await lab.spawn(name, [PYTHON, "-m", "bench.stream_ingest", "receiver",
                                           str(port)], pipe=False)
                try:
                    await _ready(url, 60)
                    # the bridge once, fresh (first messages announce their devices too);
                    # the receiver's best of BASELINE_PASSES (a pass is some 50 ms: noisy)
                    passes = 1 if contestant == "flespi-bridge" else BASELINE_PASSES
                    seconds, retries = min([await push(url, bodies,
                                                       settings.contestant_timeout)
                                            for _ in range(passes)])
                    warm = None
                    if contestant == "flespi-bridge":  # devices known: the sustained rate
                        warm = count / (await push(url, later,
                                                   settings.contestant_timeout))[0]
                except (TimeoutError, aiohttp.ClientError) as exc:
                    out.append(Measurement("stream", f"{contestant}, batches of {size:,}",
                                           None, "msg/s", f"failed: {exc}",
                                           brokers=lab.nodelay_brokers()))
                    continue
                rate = count / seconds
                log(f"stream, batches of {size}: {contestant} {rate:,.0f} msg/s"
                    + (f" (warm {warm:,.0f} msg/s)" if warm else ""))
                out.append(Measurement(
                    "stream", f"{contestant}, batches of {size:,}", rate, "msg/s",
                    extra={"messages": count, "batch": size, "seconds": round(seconds, 3),
                           "retries": retries, "passes": passes,
                           **({"warm_rate": round(warm)} if warm else {})},
                    brokers=lab.nodelay_brokers()))
    return out


# -- the minimal receiver ------------------------------------------------------------------

def receiver_app() -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(PATH, receive)
    return app


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "receiver":
        print("usage: python -m bench.stream_ingest receiver PORT", file=sys.stderr)
        return 2
    web.run_app(receiver_app(), host="127.0.0.1", port=int(argv[1]), access_log=None,
                print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

