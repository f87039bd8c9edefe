"""flespi's HTTP stream, simulated: a fleet's messages POSTed to a URL as flespi does.

One batch in flight at a time (a JSON array of at most `limit_messages` messages, oldest
first); the next only after a 200. Any other answer, or no answer, keeps the batch, which is
sent again after `retry_delay` seconds, so nothing is lost whatever the receiver does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter, deque
from typing import Any

import httpx
import orjson

from bridge.sim.fleet import Fleet, SimDevice

log = logging.getLogger(__name__)


class HttpStream:
    def __init__(self, url: str, *, authorization: str | None = None,
                 limit_messages: int = 1000, retry_delay: float = 1.0,
                 verify: ssl.SSLContext | bool = True, timeout: float = 30.0) -> None:
        if limit_messages < 1:
            raise ValueError("limit_messages must be at least 1")
        self.url = url
        self.limit_messages = limit_messages
        self.retry_delay = retry_delay
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        self._client = httpx.AsyncClient(headers=headers, verify=verify, timeout=timeout)
        self._queue: deque[dict[str, Any]] = deque()
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.delivered = 0  # messages answered 200
        self.batches = 0  # batches answered 200
        self.answers: Counter[str] = Counter()  # status code, or "error", per request

    @property
    def pending(self) -> int:
        """Messages not yet delivered (the batch in flight included)."""
        return len(self._queue)

    def add(self, message: dict[str, Any]) -> None:
        self._queue.append(message)
        self._idle.clear()
        self._more.set()

    async def run(self) -> None:
        """Deliver forever: one batch at a time, each until it is answered 200."""
        while True:
            if not self._queue:
                self._idle.set()
                self._more.clear()
                await self._more.wait()
                continue
            size = min(self.limit_messages, len(self._queue))
            body = orjson.dumps([self._queue[i] for i in range(size)])
            if not await self._post(body):
                await asyncio.sleep(self.retry_delay)  # then the same batch again
                continue
            for _ in range(size):
                self._queue.popleft()
            self.delivered += size
            self.batches += 1

    async def _post(self, body: bytes) -> bool:
        try:
            response = await self._client.post(self.url, content=body)
        except httpx.HTTPError as exc:
            self.answers["error"] += 1
            log.info("stream: %s: %s; retrying", type(exc).__name__, exc)
            return False
        self.answers[str(response.status_code)] += 1
        if response.status_code != 200:
            log.info("stream: answered %s (%.100s); retrying", response.status_code,
                     response.text.strip())
            return False
        return True

    async def drain(self, timeout: float) -> None:
        """Wait until every message added so far is delivered."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        await self._client.aclose()


def full_message(fleet: Fleet, dev: SimDevice) -> dict[str, Any]:
    """A message with everything the device has reported (the stream's first message)."""
    values = {param: value for param, (value, _) in dev.telemetry.items()}
    ts = max((ts for _, ts in dev.telemetry.values()), default=time.time())
    return fleet.message(dev, values, ts)


async def feed(fleet: Fleet, stream: HttpStream, rate: float,
               duration: float | None = None) -> int:
    """Every device's full message, then new device messages round-robin at `rate`
    messages per second; returns how many were sent."""
    devices = list(fleet.devices.values())
    for dev in devices:
        stream.add(full_message(fleet, dev))
    if not devices or rate <= 0:
        return len(devices)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while duration is None or loop.time() - start < duration:
        dev = devices[sent % len(devices)]
        ts = time.time()
        stream.add(fleet.message(dev, fleet.step(dev, ts), ts))
        sent += 1
        delay = start + sent / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return len(devices) + sent


def final_telemetry(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Each device's latest value of every parameter, as the stream has sent them."""
    return {str(dev.id): {p: v for p, (v, _) in dev.telemetry.items()}
            for dev in fleet.devices.values()}
