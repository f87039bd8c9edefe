"""The toolbox's end-to-end set-up: the simulator's REST API over HTTP on loopback (no
broker needed), a configuration pointing at it, and the CLI run as a real process."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from bridge.sim import Simulator
from bridge.sim.responder import Responder
from support.helpers import PYTHON, TOKEN, bridge_env

HOUR = 3600


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
