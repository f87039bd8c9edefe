"""Processes the benchmark starts, and only those: brokers, the bridge, baselines, the load
generator. Everything is stopped by PID (SIGTERM, then SIGKILL after a grace period) when
the `Lab` that started it closes, even after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bridge.sim import brokers as mosquitto

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FLESPI_BRIDGE_")}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


class Proc:
    """A child process; JSON lines on stdout are events (`ready`, `done`, `error`)."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.meta: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    async def event(self, timeout: float) -> dict[str, Any]:
        """The next JSON event line (other lines are skipped)."""
        stdout = self.process.stdout
        if stdout is None:
            raise RuntimeError(f"{self.name}: stdout is not a pipe")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no event in {timeout}s (log: {self.log})")
            line = await asyncio.wait_for(stdout.readline(), left)
            if not line:
                code = await self.process.wait()
                raise RuntimeError(f"{self.name} exited ({code}) (log: {self.log})")
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and "event" in event:
                    if event["event"] == "error":
                        raise RuntimeError(f"{self.name}: {event.get('error')}")
                    return event

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Send `sig` (SIGINT makes py-spy write its output), then SIGKILL after `grace`."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode


class Lab:
    """Owns every process and broker of one measurement."""

    def __init__(self, logs: Path, *, nodelay: str = "upstream") -> None:
        self.logs = logs
        # which brokers get `set_tcp_nodelay true` (Mosquitto's default is false: Nagle on):
        # "upstream" (the flespi stand-in only), "all" or "none"
        self.nodelay = nodelay
        self.procs: list[Proc] = []
        self.brokers: list[mosquitto.Broker] = []
        self.roles: list[tuple[str, bool]] = []  # (role, nodelay) of each broker started

    def broker(self, role: str, extra: Sequence[str] = mosquitto.FLESPI_LIKE, *,
               nodelay: bool = False) -> mosquitto.Broker:
        b = mosquitto.start(extra_config=(*extra, "set_tcp_nodelay true") if nodelay
                            else tuple(extra))
        self.brokers.append(b)
        self.roles.append((role, nodelay))
        return b

    def upstream(self) -> mosquitto.Broker:
        """The simulated flespi broker."""
        return self.broker("upstream", nodelay=self.nodelay in ("upstream", "all"))

    def local(self, *, stock: bool = False) -> mosquitto.Broker:
        """The local broker: without per-client queue limits, or `stock` (Mosquitto's
        defaults, as Home Assistant's add-on keeps them: 20 QoS 1 messages in flight and
        1,000 queued per client); Nagle on unless `nodelay` is "all"."""
        return self.broker("local", mosquitto.STOCK if stock else mosquitto.FLESPI_LIKE,
                           nodelay=self.nodelay == "all")

    def mosquitto_bridge(self, upstream: mosquitto.Broker,
                         local: mosquitto.Broker) -> mosquitto.Broker:
        """A third Mosquitto bridging `flespi/state/#` from upstream to local."""
        extra = (
            *mosquitto.FLESPI_LIKE,
            "connection bench-up",
            f"address {upstream.host}:{upstream.port}",
            "topic flespi/state/# in 1",
            "cleansession true",
            "connection bench-down",
            f"address {local.host}:{local.port}",
            "topic flespi/state/# out 1",
            "cleansession true",
        )
        return self.broker("3rd broker", extra, nodelay=self.nodelay == "all")

    def nodelay_brokers(self) -> str:
        """The brokers this lab started with `set_tcp_nodelay true` ("none": all stock)."""
        if not self.roles:
            return ""  # no broker started
        on = [role for role, nodelay in self.roles if nodelay]
        return ", ".join(dict.fromkeys(on)) or "none"

    async def spawn(self, name: str, args: Sequence[str], *, pipe: bool = True) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("wb") as fh:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdout=asyncio.subprocess.PIPE if pipe else fh,
                stderr=fh,
                stdin=asyncio.subprocess.DEVNULL,
                env=env(),
                cwd=str(REPO),
            )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()
        self.procs.clear()
        for b in reversed(self.brokers):
            b.__exit__()
        self.brokers.clear()

    async def __aenter__(self) -> Lab:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class RssSampler:
    """Peak resident memory of a process: the kernel's high-water mark (VmHWM) when it can
    be read, else the largest RSS seen while sampling."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            while True:
                self.sample(proc)
                await asyncio.sleep(self.interval)

    def sample(self, proc: psutil.Process | None = None) -> None:
        with contextlib.suppress(psutil.Error):
            rss = int((proc or psutil.Process(self.pid)).memory_info().rss)
            self.last = rss
            self.peak = max(self.peak, rss, self._hwm())

    def _hwm(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    async def stop(self) -> int:
        """Peak bytes; call before the process exits."""
        self.sample()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak
