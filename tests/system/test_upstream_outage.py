"""A long local outage under a busy fleet must not cost the flespi connection.

While the local broker is down the bridge acknowledges nothing upstream (a PUBACK goes out
only once the local broker has the update), so `max_inflight` messages stay unacknowledged.
The flespi connection must stay up meanwhile, keepalive pings answered, for as long as the
outage lasts, and once the local broker is back every device's latest state must arrive.

Real processes: two Mosquitto brokers, the simulator publishing continuously in this
process, and the bridge as a child process with a short keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from support.helpers import BridgeProcess, Procs, Recorder, expected_state, wait_until

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"
KEEPALIVE = 5  # the shortest flespi.keepalive allowed: gmqtt gives up after 2x without data


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text


def metric(text: str, name: str, label: str) -> float:
    match = re.search(rf"^flespi_bridge_{name}{{{label}}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1.0


def upstream_lines(bridge: BridgeProcess) -> str:
    return "\n".join(line for line in bridge.log().splitlines()
                     if "flespi" in line and ("WARNING" in line or "connected" in line))


def upstream_lost(bridge: BridgeProcess) -> bool:
    log = bridge.log()
    return "connection to flespi lost" in log or "LOST HEARTBEAT" in log


async def drive(sim: Simulator, rate: float, stop: asyncio.Event) -> None:
    """Device messages round-robin at `rate` per second until `stop`; a step is never cut
    short, so the simulator's own state is what it has published."""
    devices = list(sim.devices.values())
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while not stop.is_set():
        await sim.step(devices[sent % len(devices)])
        sent += 1
        delay = start + sent / rate - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)  # pacing


@dataclass
class Figures:
    publications: int = 0
    load_seconds: float = 0.0
    outage_seconds: float = 0.0
    catch_up_seconds: float = 0.0
    peak_unacked: float = 0.0
    peak_rss_mb: float = 0.0
    reconnects: float = -1.0

    @property
    def rate(self) -> float:
        return self.publications / self.load_seconds if self.load_seconds else 0.0


async def sample(port: int, pid: int, figures: Figures, stop: asyncio.Event) -> None:
    """Peak unacknowledged upstream messages and bridge RSS, sampled every 0.2 s."""
    proc = psutil.Process(pid)
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            text = await scrape(port)
            figures.peak_unacked = max(figures.peak_unacked,
                                       metric(text, "queue_depth", 'queue="upstream_acks"'))
        with contextlib.suppress(psutil.Error):
            figures.peak_rss_mb = max(figures.peak_rss_mb, proc.memory_info().rss / 2**20)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def local_outage(upstream: mosquitto.Broker, local: mosquitto.Broker, tmp: Path,
                       procs: Procs, *, devices: int, rate: float, outage: float,
                       max_inflight: int, catch_up_timeout: float) -> Figures:
    """Run the bridge on a busy fleet, kill the local broker for `outage` seconds, bring it
    back; return what was measured. Fails as soon as the flespi connection is lost."""
    figures = Figures()
    port = mosquitto.free_port()
    sim = Simulator(upstream.host, upstream.port, devices=devices, seed=11, messages=False)
    await sim.start()
    bridge = procs(BridgeProcess(
        tmp, upstream, local,
        flespi={"keepalive": KEEPALIVE, "max_inflight": max_inflight},
        metrics={"enabled": True, "port": port},
        log={"level": "INFO"},
    ))
    bridge.start()
    assert bridge.proc is not None
    stop_load, stop_sampling = asyncio.Event(), asyncio.Event()
    load: asyncio.Task[None] | None = None
    sampler: asyncio.Task[None] | None = None
    try:
        async with Recorder(local, [f"{BASE}/+/state"]) as rec:
            await rec.wait_for(lambda: all(rec.state(BASE, d) for d in sim.devices),
                               timeout=60, what="first states")
        sampler = asyncio.create_task(sample(port, bridge.proc.pid, figures, stop_sampling))
        published0, t0 = sim.published, time.monotonic()
        load = asyncio.create_task(drive(sim, rate, stop_load))
        local.kill()
        killed = time.monotonic()
        # The bridge now holds a full window of unacknowledged messages...
        await wait_until(lambda: figures.peak_unacked >= max_inflight, timeout=30,
                         what="the upstream window full of unacknowledged messages")
        # ...for the whole outage, keepalive after keepalive.
        await wait_until(
            lambda: upstream_lost(bridge) or load.done()
            or time.monotonic() - killed >= outage,
            timeout=outage + 30, what="the end of the outage")
        assert not upstream_lost(bridge), (
            f"flespi connection lost during the local outage:\n{upstream_lines(bridge)}")
        assert not load.done(), load  # the simulator failed
        local.start()
        back = time.monotonic()
        figures.outage_seconds = back - killed
        stop_load.set()
        await load
        figures.publications = sim.published - published0
        figures.load_seconds = time.monotonic() - t0
        await sim.flush(timeout=120)
        async with Recorder(local, [f"{BASE}/+/state"]) as rec:
            await rec.wait_for(
                lambda: all(rec.state(BASE, d) == expected_state(sim, d) for d in sim.devices),
                timeout=catch_up_timeout, what="every device's latest state")
        figures.catch_up_seconds = time.monotonic() - back
        text = await scrape(port)
        figures.reconnects = metric(text, "reconnects_total", 'side="upstream"')
        stop_sampling.set()
        await sampler
        assert figures.reconnects == 0, figures
        assert not upstream_lost(bridge), upstream_lines(bridge)
        assert bridge.proc.poll() is None
        return figures
    finally:
        stop_load.set()
        stop_sampling.set()
        for task in (load, sampler):
            if task is not None and not task.done():
                task.cancel()
        await sim.stop()


@pytest.mark.timeout(180)
async def test_flespi_connection_survives_a_local_outage(upstream: mosquitto.Broker,
                                                         local: mosquitto.Broker, tmp_path: Path,
                                                         procs: Procs) -> None:
    figures = await local_outage(upstream, local, tmp_path, procs, devices=20, rate=20,
                                 outage=3 * KEEPALIVE + 2, max_inflight=50,
                                 catch_up_timeout=60)
    print(figures)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_five_minute_local_outage_at_2000_updates_per_second(
        upstream: mosquitto.Broker, local: mosquitto.Broker, tmp_path: Path, procs: Procs) -> None:
    # A device message is 14 retained telemetry publications (position.* included), so
    # 143 messages/s make 2,000 updates/s.
    figures = await local_outage(upstream, local, tmp_path, procs, devices=500,
                                 rate=2000 / 14, outage=300, max_inflight=1000,
                                 catch_up_timeout=400)
    print(f"\n{figures.publications} updates in {figures.load_seconds:.0f}s: "
          f"{figures.rate:.0f}/s; outage {figures.outage_seconds:.0f}s; "
          f"catch-up {figures.catch_up_seconds:.1f}s; reconnects {figures.reconnects:.0f}; "
          f"peak unacked {figures.peak_unacked:.0f}; peak RSS {figures.peak_rss_mb:.0f} MB")
    assert figures.rate >= 1800
