"""Scenario `track` (issue 14): the peak RSS of `flespi-bridge track` exporting a long range
of 1-second history (a month: ~2.6 million positioned messages) in each format, against the
same export of one day in the same run. The history comes from the simulator's REST API over
HTTP on loopback (a scooter's motion model, one message a second, pages of `client.PAGE`).
Memory must not grow with the range: GPX, GeoJSON and CSV stream every point, KML, PNG and
HTML keep a thinned copy of bounded size.

Each export runs as its own process (`python -m bridge track ...`); its peak RSS is the
kernel's `ru_maxrss` of that child alone (`os.wait4`).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from bench.bridgecfg import TOKEN
from bench.procs import REPO
from bench.scenarios import Measurement, Settings
from bridge.sim import Simulator
from bridge.sim.responder import Responder
from bridge.toolbox.client import PAGE

FORMATS = ("gpx", "geojson", "kml", "csv", "png", "html")
DAY = 86400.0


def _export(config: Path, device: int, start: float, end: float, fmt: str, out: Path,
            ) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, points written) of one `track` run."""
    began = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
            [sys.executable, "-m", "bridge", "track", str(device), "--from", str(start),
             "--to", str(end), "--format", fmt, "-o", str(out), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO) as proc:
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - began
    if proc.returncode != 0:
        raise RuntimeError(f"track {fmt} exited {proc.returncode}: {err[-500:]}")
    found = re.search(r": (\d+) points", err)
    return usage.ru_maxrss / 1024, seconds, int(found.group(1)) if found else 0


async def track(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    sim = Simulator("127.0.0.1", 1, devices=1, seed=1)  # REST only, never connected
    responder = Responder(sim, token=TOKEN)
    responder.tools.history_period = 1.0
    responder.tools.max_count = PAGE
    url = await responder.serve_http()
    work = settings.results / "track"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.toml"
    config.write_text(tomli_w.dumps({"flespi": {"token": TOKEN},
                                       "commands": {"http_url": url}}))
    device = next(iter(sim.devices))
    end = math.floor(time.time() / DAY) * DAY  # today's midnight UTC: whole days
    ranges = (("1 day", end - DAY), (f"{settings.track_days:g} days",
                                     end - settings.track_days * DAY))
    formats = settings.track_formats or list(FORMATS)
    out: list[Measurement] = []
    try:
        for fmt in formats:
            peaks: dict[str, float] = {}
            for label, start in ranges:
                target = work / f"track.{fmt}"
                rss, seconds, points = await asyncio.to_thread(
                    _export, config, device, start, end, fmt, target)
                size = target.stat().st_size
                target.unlink()
                peaks[label] = rss
                log(f"track {fmt}, {label}: {points:,} points in {seconds:.0f} s, peak RSS "
                    f"{rss:.0f} MB, file {size / 1e6:.1f} MB")
                out.append(Measurement(
                    "track", f"track --format {fmt}, {label} of 1 s data", round(rss, 1), "MB",
                    f"{points:,} points, {seconds:.0f} s, {size / 1e6:.1f} MB file",
                    extra={"points": points, "seconds": round(seconds, 1), "bytes": size}))
            day, long = peaks[ranges[0][0]], peaks[ranges[1][0]]
            out.append(Measurement("track", f"track --format {fmt}: {ranges[1][0]} / 1 day",
                                   round(long / day, 2), "x", "peak RSS ratio"))
    finally:
        await responder.close()
    return out
