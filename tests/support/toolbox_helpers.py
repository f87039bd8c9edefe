"""The toolbox's end-to-end set-up: the simulator's REST API over HTTP on loopback (no
broker needed), a configuration pointing at it, and the CLI run as a real process; and the
pure parts' shared values: a fixed now, metres per degree, the peak memory of a writer."""

from __future__ import annotations

import asyncio
import io
import math
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from bridge.sim import Simulator
from bridge.sim.responder import Responder
from bridge.toolbox.formats import TrackInfo, writer
from bridge.toolbox.points import Point
from bridge.toolbox.summary import Tee
from bridge.toolbox.trips import TripOptions, TripSplitter
from support.helpers import PYTHON, TOKEN, bridge_env

HOUR = 3600
NOW = 1706905170.0  # 2024-02-02T20:19:30Z
DEG = 111_195.08  # metres per degree of latitude on the mean sphere (haversine's radius)


@dataclass
class Api:
    responder: Responder
    sim: Simulator
    url: str
    config: Path
    tmp: Path

    @property
    def device(self) -> int:
        return next(iter(self.sim.devices))


@dataclass
class Run:
    code: int
    out: str
    err: str


def hours_ago(n: int) -> float:
    """The start of the hour `n` hours before the current one (whole simulated rides)."""
    return (math.floor(time.time() / HOUR) - n) * HOUR


async def start_api(tmp: Path, extra: dict[str, dict[str, object]] | None = None,
                    kind: str = "scooters") -> AsyncIterator[Api]:
    # never connected: REST only
    sim = Simulator("127.0.0.1", 1, devices=3, seed=7, kind=kind)
    responder = Responder(sim, token=TOKEN)
    url = await responder.serve_http()
    sections: dict[str, dict[str, object]] = {
        "flespi": {"token": TOKEN}, "commands": {"http_url": url}}
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    config = tmp / "config.toml"
    config.write_text(tomli_w.dumps(sections))
    try:
        yield Api(responder, sim, url, config, tmp)
    finally:
        await responder.close()


async def cli(api: Api, *args: str, timeout: float = 90) -> Run:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bridge", *args, "--config", str(api.config), env=bridge_env(),
        cwd=api.tmp, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def peak(fmt: str, seconds: float, points: Iterator[Point]) -> int:
    """Peak bytes allocated while `fmt` writes `points`, generated one at a time as pages
    arrive, to a sink that drops the text, as a file does once written."""

    class Drop(io.StringIO):
        def write(self, s: str) -> int:
            return len(s)

    tracemalloc.start()
    try:
        out = writer(fmt, Drop(), TrackInfo(1, "x", 0, seconds))
        splitter = TripSplitter(Tee(out), TripOptions())
        for p in points:
            splitter.feed(p)
        splitter.close()
        out.close()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def many_trips(fmt: str, trips: int) -> int:
    """`peak` of `trips` rides of 10 points, one each hour, parked in between."""
    return peak(fmt, trips * 3600.0, (Point(t * 3600.0 + i * 10, i * 100 / DEG, 0.0, None, 36.0)
                                      for t in range(trips) for i in range(10)))
