"""The measurements: ingest throughput (bridge and baselines), added latency, start-up,
command round trip. Each contestant gets fresh brokers, so no retained message of an
earlier run can leak into a later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import signal
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import bridgecfg, loadgen, workload
from bench.mqtt import RawClient
from bench.procs import PYTHON, Lab, Proc, RssSampler
from bridge.flespi import topics as flespi_topics
from bridge.sim import brokers as mosquitto

BASE = "flespi"
MB = 1024 * 1024


@dataclass
class Settings:
    """Scale and options of one run (`python -m bench --help`)."""

    # ingest: publications (device messages x catalogue parameters), the scale of the table
    # in bench/README.md, so the slowest baselines finish within `contestant_timeout`;
    # None: `ingest_messages` device messages instead (--messages, --quick)
    ingest_publications: int | None = 220_000
    ingest_messages: int = 10_000  # device messages (the stream scenario's batches too)
    ingest_devices: int = 1_000
    latency_rate: float = 2_000.0
    latency_devices: int = 200
    latency_seconds: float = 15.0
    latency_warmup: float = 2.0
    # fleet sizes of the start-up scenario, each measured with its own baseline
    startup_devices: list[int] = field(default_factory=lambda: [10_000, 40_000])
    startup_parameters: int = 10
    cluster_devices: int = 100_000  # the cluster scenario's start-up fleet, over 4 shards
    commands: int = 100
    command_devices: int = 20
    command_payload: dict[str, Any] = field(default_factory=lambda: {"command": "restart"})
    command_first_timeout: float = 5.0
    command_timeout: float = 2.0
    results: Path = Path("bench/results")
    extra: dict[str, Any] = field(default_factory=dict)  # merged into every bridge config
    profile: bool = False
    nodelay: str = "upstream"  # brokers with `set_tcp_nodelay true`: upstream | all | none
    contestant_timeout: float = 120.0
    track_days: float = 30.0  # the long range of the track scenario (against one day)
    track_formats: list[str] = field(default_factory=list)  # empty: every format

    @property
    def logs(self) -> Path:
        return self.results / "logs"


@dataclass
class Measurement:
    """One figure of one contestant."""

    scenario: str
    contestant: str
    value: float | None  # None: unavailable / failed
    unit: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    brokers: str = ""  # the brokers that ran with `set_tcp_nodelay true` (Lab.nodelay_brokers)


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return None


async def send_stream(lab: Lab, broker: mosquitto.Broker, stream: loadgen.Stream, name: str,
                      settings: Settings, *, mode: str = "blast", rate: float = 0.0,
                      start_at: float | None = None, send_times: Path | None = None,
                      timeout: float = 300.0, stream_name: str | None = None,
                      ) -> dict[str, Any]:
    """Run the load generator in its own process; returns its `done` event."""
    path = settings.results / "streams" / f"{stream_name or name}.bin"
    if not (stream_name and path.exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        stream.save(path)
    args = [PYTHON, "-m", "bench.loadgen", "--host", broker.host, "--port", str(broker.port),
            "--stream", str(path), "--mode", mode, "--client-id", f"bench-gen-{name}"]
    if mode == "paced":
        args += ["--rate", str(rate)]
    if start_at is not None:
        args += ["--start-at", repr(start_at)]
    if send_times is not None:
        args += ["--send-times", str(send_times)]
    proc = await lab.spawn(f"loadgen-{name}", args)
    try:
        return await proc.event(timeout)
    finally:
        await proc.stop()


async def publish_now(broker: mosquitto.Broker, stream: loadgen.Stream) -> None:
    """A few control publications from this process (not measured)."""
    await asyncio.to_thread(loadgen.send, broker.host, broker.port, stream,
                            client_id="bench-control")


def _state_device(topic: str) -> int | None:
    parts = topic.split("/")
    if len(parts) == 3 and parts[2] == "state" and parts[1].isdigit():
        return int(parts[1])
    return None


class StateChecker:
    """Watches `<base>/+/state` on the local broker until every device shows its expected
    final attributes."""

    def __init__(self, expected: dict[int, dict[str, Any]]) -> None:
        self.expected = expected
        self.pending = set(expected)
        self.latest: dict[int, bytes] = {}
        self.states = 0
        self.done_at: float | None = None
        self.done = asyncio.Event()
        self.primer_value: int | None = None
        self.primed = asyncio.Event()

    def on_message(self, topic: str, payload: bytes, _retain: bool) -> None:
        dev = _state_device(topic)
        if dev is None:
            return
        self.states += 1
        if dev == workload.PRIMER_ID:
            with contextlib.suppress(ValueError):
                if orjson.loads(payload).get("battery") == self.primer_value:
                    self.primed.set()
            return
        if dev in self.pending:
            self.latest[dev] = payload
            if workload.matches(orjson.loads(payload), self.expected[dev]):
                self.pending.discard(dev)
                if not self.pending:
                    self.done_at = time.monotonic()
                    self.done.set()

    def diagnosis(self) -> str:
        if not self.pending:
            return ""
        dev = min(self.pending)
        got = self.latest.get(dev)
        if got is None:
            return f"{len(self.pending)} devices without the final state (e.g. {dev}: no state)"
        state = orjson.loads(got)
        diff = {k: (state.get(k), v) for k, v in self.expected[dev].items()
                if state.get(k) != v}
        return f"{len(self.pending)} devices without the final state (e.g. {dev}: {diff})"


class Counter:
    """Counts messages on the local broker (baselines without normalization)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done_at: float | None = None
        self.done = asyncio.Event()
        self.primed = asyncio.Event()
        self.primer_topic = workload.telemetry_topic(workload.PRIMER_ID, "battery.level")

    def on_message(self, topic: str, _payload: bytes, _retain: bool) -> None:
        if topic == self.primer_topic:
            self.primed.set()
            return
        self.count += 1
        if self.count >= self.expected and not self.done.is_set():
            self.done_at = time.monotonic()
            self.done.set()


async def start_bridge(lab: Lab, name: str, upstream: mosquitto.Broker,
                       local: mosquitto.Broker, settings: Settings, *,
                       coalesce_window: float | None = None,
                       extra: dict[str, Any] | None = None) -> Proc:
    cfg = bridge_config(name, upstream, local, settings, coalesce_window=coalesce_window,
                        extra=extra)
    proc = await lab.spawn(name, [PYTHON, "-m", "bridge", "run", "--config", str(cfg)],
                           pipe=False)
    proc.meta["config"] = cfg
    return proc


async def scrape_metrics(proc: Proc, settings: Settings) -> dict[str, float]:
    """The bridge's own /metrics (saved beside its log); returns the processing latency
    histogram's summary (`flespi_bridge_processing_latency_seconds`) when it has one."""
    with contextlib.suppress(OSError, KeyError, ValueError, TimeoutError):
        host, port = metrics_address(proc.meta["config"])
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        text = raw.partition(b"\r\n\r\n")[2].decode(errors="replace")
        (settings.logs / f"{proc.name}.metrics.txt").write_text(text)
        return _histogram(text, "flespi_bridge_processing_latency_seconds")
    return {}


def metrics_address(config: Path) -> tuple[str, int]:
    import tomllib

    metrics = tomllib.loads(config.read_text())["metrics"]
    return str(metrics["host"]), int(metrics["port"])


def _histogram(text: str, name: str) -> dict[str, float]:
    """count, mean and bucket-interpolated p50/p99 (in ms) of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le),
                            float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not count:
        return {}
    out: dict[str, float] = {"count": count, "mean_ms": 1000 * total / count}
    for q in (0.5, 0.99):
        for bound, cumulative in sorted(buckets):
            if cumulative >= q * count:
                out[f"p{round(q * 100)}_le_ms"] = 1000 * bound
                break
    return out


async def start_profiler(lab: Lab, pid: int, out: Path) -> Proc:
    """py-spy sampling a running process (collapsed stacks); stop it with `stop_profiler`."""
    return await lab.spawn("py-spy", ["py-spy", "record", "--pid", str(pid), "--format", "raw",
                                      "--rate", "250", "--nonblocking", "-o", str(out)],
                           pipe=False)


async def stop_profiler(proc: Proc) -> None:
    """SIGINT: py-spy writes its output and exits."""
    await proc.stop(grace=30, sig=signal.SIGINT)


def bridge_config(name: str, upstream: mosquitto.Broker, local: mosquitto.Broker,
                  settings: Settings, *, coalesce_window: float | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    data = bridgecfg.base(upstream, local, client_id=f"bench-{name}",
                          coalesce_window=coalesce_window)
    data = bridgecfg.merge(bridgecfg.merge(extra or {}, settings.extra), data)
    return bridgecfg.write(settings.logs / f"{name}.toml", data)


async def config_ok(lab: Lab, upstream: mosquitto.Broker, local: mosquitto.Broker,
                    settings: Settings, extra: dict[str, Any]) -> bool:
    """`flespi-bridge check-config` accepts the configuration with these extras."""
    cfg = bridge_config("check-config", upstream, local, settings, extra=extra)
    proc = await lab.spawn("check-config", [PYTHON, "-m", "bridge", "check-config",
                                            "--config", str(cfg)], pipe=False)
    return await asyncio.wait_for(proc.process.wait(), 60) == 0


async def wait_or_exit(event: asyncio.Event, proc: Proc, timeout: float) -> bool:
    """Wait for `event`; False on timeout; RuntimeError (with the log's tail) if the
    process exits first."""
    waiter = asyncio.ensure_future(event.wait())
    exited = asyncio.ensure_future(proc.process.wait())
    try:
        await asyncio.wait({waiter, exited}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not exited.done():
            exited.cancel()
    if event.is_set():
        return True
    if proc.process.returncode is not None:
        tail = proc.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}: "
                           + " | ".join(tail))
    return False


async def _prime(up: mosquitto.Broker, event: asyncio.Event, set_value: Callable[[int], None],
                 proc: Proc | None = None, timeout: float = 30.0) -> None:
    """Publish the primer device's value; return once the contestant has passed it on."""
    value = 1 + int(time.monotonic() * 1000) % 90
    set_value(value)
    await publish_now(up, workload.primer(value))
    if proc is None:
        await asyncio.wait_for(event.wait(), timeout)
    elif not await wait_or_exit(event, proc, timeout):
        raise TimeoutError(f"{proc.name} did not pass the primer on in {timeout:.0f}s")


def _default_coalesce_window() -> float | None:
    with contextlib.suppress(Exception):
        from bridge.config.sections import LocalSettings

        return float(LocalSettings.model_fields["coalesce_window"].default)
    return None


# -- ingest ---------------------------------------------------------------------------------

def ingest_workload(settings: Settings) -> workload.Workload:
    """The ingest workload at this run's scale (the cluster scenario's too)."""
    messages = settings.ingest_messages
    if settings.ingest_publications is not None:
        messages = -(-settings.ingest_publications // workload.params_per_message())
    return workload.ingest(messages, settings.ingest_devices)


async def ingest(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    w = ingest_workload(settings)
    n = w.stream.count
    log(f"ingest: {n} publications ({w.params_per_message} per device message, "
        f"{w.mapped} of catalogue parameters) over {settings.ingest_devices} devices")
    out: list[Measurement] = []
    extra = {"publications": n, "devices": settings.ingest_devices,
             "mapped_publications": w.mapped,
             "bridge_coalesce_window": settings.extra.get("local", {}).get(
                 "coalesce_window", _default_coalesce_window())}

    async def send_and_wait(lab: Lab, up: mosquitto.Broker, name: str, pid: int | None,
                            done: asyncio.Event) -> tuple[dict[str, Any], float | None]:
        """Send the stream, wait (at most the contestant timeout) for `done`; the
        generator's `done` event and the CPU seconds `pid` spent meanwhile."""
        cpu0 = cpu_seconds(pid)
        gen = await send_stream(lab, up, w.stream, f"ingest-{name}", settings,
                                stream_name="ingest")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), settings.contestant_timeout)
        cpu1 = cpu_seconds(pid)
        return gen, None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2)

    async def gen_alone(lab: Lab) -> Measurement:
        up = lab.upstream()
        done = await send_stream(lab, up, w.stream, "ingest-alone", settings,
                                 stream_name="ingest")
        return Measurement("ingest", "load generator -> Mosquitto (no subscriber)",
                           done["rate"], "msg/s", extra={"loadgen": done})

    async def through_local(lab: Lab, name: str, mode: str) -> Measurement:
        """Mosquitto bridge / aiomqtt relay: count N messages on the local broker."""
        up, local = lab.upstream(), lab.local()
        counter = Counter(n)
        checker = await RawClient.open(local.host, local.port, f"bench-check-{mode}",
                                       counter.on_message)
        await checker.subscribe(["flespi/state/#"])
        pid: int | None
        if mode == "mosquitto":
            m3 = lab.mosquitto_bridge(up, local)
            pid = m3.pid
            relay: Proc | None = None
        else:
            relay = await lab.spawn("aiomqtt-relay", [
                PYTHON, "-m", "bench.clients", "aiomqtt-relay", "--port", str(up.port),
                "--local-port", str(local.port), "--count", str(n + 1),
                "--timeout", str(settings.contestant_timeout + 30)])
            await relay.event(30)
            pid = relay.pid
        await _prime(up, counter.primed, lambda _v: None)
        gen, cpu = await send_and_wait(lab, up, mode, pid, counter.done)
        if relay is not None and counter.done_at is not None:
            with contextlib.suppress(TimeoutError, RuntimeError):
                cpu = (await relay.event(10)).get("cpu_s")
        await checker.close()
        info = {"loadgen": gen, "received": counter.count, "cpu_s": cpu}
        if counter.done_at is None:
            return Measurement("ingest", name, None, "msg/s",
                               f"timeout: {counter.count}/{n} in "
                               f"{settings.contestant_timeout:.0f}s", info)
        return Measurement("ingest", name, n / (counter.done_at - gen["start"]), "msg/s",
                           extra=info)

    async def counter_proc(lab: Lab, name: str, kind: str) -> Measurement:
        up = lab.upstream()
        proc = await lab.spawn(kind, [
            PYTHON, "-m", "bench.clients", kind, "--port", str(up.port),
            "--count", str(n), "--timeout", str(settings.contestant_timeout)])
        await proc.event(30)
        gen = await send_stream(lab, up, w.stream, f"ingest-{kind}", settings,
                                stream_name="ingest")
        done = await proc.event(settings.contestant_timeout + 10)
        info = {"loadgen": gen, "received": done["count"], "cpu_s": done.get("cpu_s")}
        if not done["complete"]:
            return Measurement("ingest", name, None, "msg/s",
                               f"timeout: {done['count']}/{n}", info)
        return Measurement("ingest", name, n / (done["last"] - gen["start"]), "msg/s",
                           extra=info)

    async def bridge(lab: Lab, profiled: bool = False, stock: bool = False) -> Measurement:
        name = "bridge-profiled" if profiled else "bridge-stock" if stock else "bridge"
        contestant = (STOCK_BRIDGE if stock else "flespi-bridge") + (" (profiled)" * profiled)
        up, local = lab.upstream(), lab.local(stock=stock)
        checker_state = StateChecker(w.expected)
        checker = await RawClient.open(local.host, local.port, "bench-check-bridge",
                                       checker_state.on_message)
        await checker.subscribe([f"{BASE}/+/state"], qos=0 if stock else 1)  # see startup
        proc = await start_bridge(lab, name, up, local, settings)
        rss = RssSampler(proc.pid).start()
        await _prime(up, checker_state.primed,
                     lambda v: setattr(checker_state, "primer_value", v), proc)
        spy = (await start_profiler(lab, proc.pid, settings.results / "ingest-profile.txt")
               if profiled else None)
        gen, cpu = await send_and_wait(lab, up, name, proc.pid, checker_state.done)
        peak = await rss.stop()
        await scrape_metrics(proc, settings)
        if spy is not None:
            await stop_profiler(spy)
        await checker.close()
        info = {"loadgen": gen, "states_received": checker_state.states,
                "peak_rss_mb": round(peak / MB, 1), "cpu_s": cpu}
        if checker_state.done_at is None:
            return Measurement("ingest", contestant, None, "msg/s",
                               "timeout: " + checker_state.diagnosis(), info)
        return Measurement("ingest", contestant, n / (checker_state.done_at - gen["start"]),
                           "msg/s", extra=info)

    steps: list[tuple[str, Callable[[Lab], Any]]] = [
        ("load generator alone", gen_alone),
        ("Mosquitto bridge",
         lambda lab: through_local(lab, "Mosquitto bridge (3rd broker)", "mosquitto")),
        ("gmqtt counter",
         lambda lab: counter_proc(lab, "gmqtt counter (MQTT 5, QoS 1)", "gmqtt-count")),
        ("aiomqtt counter",
         lambda lab: counter_proc(lab, "aiomqtt counter (MQTT 5, QoS 1)", "aiomqtt-count")),
        ("aiomqtt relay", lambda lab: through_local(lab, "aiomqtt relay (minimal)", "relay")),
        ("flespi-bridge", bridge),
        (STOCK_BRIDGE, lambda lab: bridge(lab, stock=True)),
    ]
    if settings.profile:
        steps.append(("flespi-bridge under py-spy", lambda lab: bridge(lab, profiled=True)))
    for label, step in steps:
        log(f"  ingest: {label} ...")
        lab = Lab(settings.logs, nodelay=settings.nodelay)  # fresh brokers for each
        try:
            async with lab:
                m = await step(lab)
        except Exception as exc:
            m = Measurement("ingest", label, None, "msg/s",
                            f"failed: {type(exc).__name__}: {exc}")
        m.brokers = lab.nodelay_brokers()
        m.extra.update(extra)
        out.append(m)
        log(f"  ingest: {label}: {fmt(m)}")
    return out


# -- added latency ----------------------------------------------------------------------------

def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def latency(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    rate = settings.latency_rate
    total = int(rate * (settings.latency_warmup + settings.latency_seconds))
    stream = workload.latency(total, settings.latency_devices)
    log(f"latency: {total} updates at {rate:.0f}/s over {settings.latency_devices} devices "
        f"({settings.latency_warmup:.0f}s warm-up not counted)")
    out: list[Measurement] = []

    async def run(contestant: str) -> Measurement:
        received: dict[int, float] = {}

        def on_state(topic: str, payload: bytes, _retain: bool) -> None:
            now = time.monotonic()
            dev = _state_device(topic)
            if dev is None or dev == workload.PRIMER_ID:
                if dev == workload.PRIMER_ID:
                    primed.set()
                return
            with contextlib.suppress(ValueError, TypeError):
                v = orjson.loads(payload).get("voltage")
                if isinstance(v, float):
                    received.setdefault(workload.seq_of(v), now)

        primer_topic = workload.telemetry_topic(workload.PRIMER_ID, "battery.level")

        def on_raw(topic: str, payload: bytes, _retain: bool) -> None:
            now = time.monotonic()
            if topic == primer_topic:
                primed.set()
                return
            with contextlib.suppress(ValueError, TypeError):
                received.setdefault(workload.seq_of(float(payload)), now)

        primed = asyncio.Event()
        async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
            up, local = lab.upstream(), lab.local()
            if contestant == "bridge":
                checker = await RawClient.open(local.host, local.port, "bench-lat", on_state)
                await checker.subscribe([f"{BASE}/+/state"])
                bridge_proc: Proc | None = await start_bridge(
                    lab, "bridge-latency", up, local, settings, coalesce_window=0)
            else:
                checker = await RawClient.open(local.host, local.port, "bench-lat", on_raw)
                await checker.subscribe(["flespi/state/#"])
                lab.mosquitto_bridge(up, local)
                bridge_proc = None
            await _prime(up, primed, lambda _v: None, bridge_proc)
            times_path = settings.results / "streams" / f"latency-{contestant}.times"
            start_at = time.monotonic() + 1.0  # the generator process needs a moment
            gen = await send_stream(lab, up, stream, f"latency-{contestant}", settings,
                                    mode="paced", rate=rate, start_at=start_at,
                                    send_times=times_path,
                                    timeout=settings.latency_seconds * 3 + 60)
            # stragglers: until nothing new arrives for 1 s (at most 10 s)
            deadline = time.monotonic() + 10
            seen = -1
            while len(received) != seen and time.monotonic() < deadline:
                seen = len(received)
                await asyncio.sleep(1.0)
            internal = (await scrape_metrics(bridge_proc, settings)
                        if bridge_proc is not None else {})
            await checker.close()
        sent = array("d")
        with times_path.open("rb") as fh:
            sent.fromfile(fh, times_path.stat().st_size // sent.itemsize)
        first = int(rate * settings.latency_warmup)
        lat = sorted((received[i] - sent[i]) * 1000 for i in range(first, len(sent))
                     if i in received)
        counted = len(sent) - first
        achieved = gen["count"] / (gen["written"] - gen["start"])
        info = {"updates": counted, "matched": len(lat), "rate_achieved": round(achieved, 1),
                "p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99),
                "max_ms": lat[-1] if lat else None,
                "mean_ms": statistics.fmean(lat) if lat else None,
                "bridge_processing_latency": internal}
        name = ("flespi-bridge (coalesce_window = 0)" if contestant == "bridge"
                else "Mosquitto bridge (3rd broker)")
        note = "" if len(lat) == counted else f"{counted - len(lat)} updates never seen"
        return Measurement("latency", name, info["p99_ms"] if lat else None, "ms p99", note,
                           info, brokers=lab.nodelay_brokers())

    for contestant in ("bridge", "mosquitto"):
        try:
            m = await run(contestant)
        except Exception as exc:
            m = Measurement("latency", contestant, None, "ms p99",
                            f"failed: {type(exc).__name__}: {exc}")
        out.append(m)
        log(f"  latency: {m.contestant}: {fmt(m)}")
    return out


# -- start-up -------------------------------------------------------------------------------

_DISCOVERY_ID = re.compile(r"flespi_(\d+)")
# Row labels of the start-up scenario, one set per fleet size.
REPLAY = "gmqtt replay counter"
BRIDGE_RSS = "flespi-bridge peak RSS"
# The bridge with a stock local broker (Mosquitto's defaults; the other runs' local broker
# has no per-client queue limits).
STOCK_BRIDGE = "flespi-bridge (stock local broker)"


def startup_label(who: str, devices: int) -> str:
    return f"{who}, {devices:,} devices"


async def startup(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    """Per fleet size: the bridge's start-up against a gmqtt client that only receives the
    same retained replay, both on one upstream broker loaded once."""
    out: list[Measurement] = []
    sizes = settings.startup_devices
    for d in sizes:
        out += await _startup_fleet(settings, d, log, profiled=settings.profile
                                    and d == max(sizes))
    return out


async def _startup_fleet(settings: Settings, d: int, log: Callable[[str], None],
                         profiled: bool) -> list[Measurement]:
    w = workload.startup(d, settings.startup_parameters)
    n = w.stream.count
    log(f"start-up: {d:,} devices x {settings.startup_parameters} retained parameters "
        f"(+ object, name, connected) = {n:,} retained messages upstream")
    timeout = max(60.0, d * 0.012)
    async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
        up = lab.upstream()
        gen = await send_stream(lab, up, w.stream, f"startup-{d}-preload", settings,
                                stream_name=f"startup-{d}", timeout=timeout)
        w.stream = loadgen.Stream(b"", array("Q", [0]))  # loaded: free the bench's memory
        # the baseline before and after the bridge; the faster run is the baseline
        replays = [await _replay(lab, up, n, f"{d}-before", timeout)]
        log(f"  start-up: {REPLAY}: {_replay_text(replays[0])}")
        m, peak = await _bridge_startup(lab, up, w, settings, f"bridge-startup-{d}",
                                        timeout)
        log(f"  start-up: flespi-bridge: {fmt(m)}; peak RSS {peak / MB:.0f} MB")
        stock_m, _ = await _bridge_startup(lab, up, w, settings, f"bridge-startup-{d}-stock",
                                           timeout, stock=True)
        log(f"  start-up: {STOCK_BRIDGE}: {fmt(stock_m)}")
        replays.append(await _replay(lab, up, n, f"{d}-after", timeout))
        log(f"  start-up: {REPLAY} again: {_replay_text(replays[1])}")
        profile_m = None
        if profiled:
            log("  start-up: flespi-bridge again under py-spy ...")
            profile_m, _ = await _bridge_startup(lab, up, w, settings,
                                                 f"bridge-startup-{d}-profiled", timeout,
                                                 profiled=True)
            profile_m.contestant = startup_label("flespi-bridge (profiled)", d)
            log(f"  start-up under py-spy: {fmt(profile_m)}")
        brokers = lab.nodelay_brokers()
    complete = [r["s"] for r in replays if r["complete"]]
    baseline = min(complete) if complete else None
    base_m = Measurement("startup", startup_label(REPLAY, d), baseline, "s",
                         "" if complete else f"timeout: {replays[0]['count']}/{n}",
                         {"devices": d, "retained_messages": n, "runs": replays,
                          "preload": gen}, brokers=brokers)
    for run in (m, stock_m):
        run.extra["baseline_s"] = baseline
        if run.value is not None and baseline:
            run.extra["ratio"] = round(run.value / baseline, 2)
    out = [base_m, m, stock_m, Measurement("startup", startup_label(BRIDGE_RSS, d),
                                  round(peak / MB, 1), "MB", extra={"devices": d},
                                  brokers=brokers)]
    if profile_m is not None:
        out.append(profile_m)
    return out


def _replay_text(r: dict[str, Any]) -> str:
    if not r["complete"]:
        return f"timeout: {r['count']} messages"
    return f"{r['s']:.2f} s (first message at {r['first_s']:.2f} s)"


async def _replay(lab: Lab, up: mosquitto.Broker, n: int, name: str,
                  timeout: float) -> dict[str, Any]:
    """The baseline once: seconds from starting a gmqtt process subscribed to the bridge's
    own upstream topic filters until it has received all `n` retained messages."""
    filters = flespi_topics.subscriptions("all", None, comma_lists=False)
    t0 = time.monotonic()
    proc = await lab.spawn(f"gmqtt-replay-{name}", [
        PYTHON, "-m", "bench.clients", "gmqtt-replay", "--port", str(up.port),
        "--count", str(n), "--timeout", str(timeout),
        *(arg for f in filters for arg in ("--topic", f))])
    await proc.event(30)  # ready: subscribed
    done = await proc.event(timeout + 30)
    await proc.stop()
    return {"s": round(done["last"] - t0, 2), "first_s": round(done["first"] - t0, 2),
            "count": done["count"], "complete": done["complete"], "cpu_s": done["cpu_s"]}


async def _bridge_startup(lab: Lab, up: mosquitto.Broker, w: workload.Workload,
                          settings: Settings, name: str, timeout: float,
                          profiled: bool = False, stock: bool = False
                          ) -> tuple[Measurement, int]:
    """The bridge once, on a fresh local broker (`stock`: Mosquitto's defaults) and a new
    upstream session: seconds from starting its process until every device's state and
    discovery config are on the local broker; its peak RSS."""
    d = len(w.expected)
    label = startup_label(STOCK_BRIDGE if stock else "flespi-bridge", d)
    discovery_module = importlib.util.find_spec("bridge.homeassistant.payloads") is not None
    configs: dict[int, int] = {}
    first_config = [0.0]
    last_config = [0.0]
    config_messages = [0]

    def on_discovery(topic: str, payload: bytes) -> None:
        if not topic.endswith("/config") or not payload:
            return
        config_messages[0] += 1
        last_config[0] = time.monotonic()
        first_config[0] = first_config[0] or last_config[0]
        found = _DISCOVERY_ID.search(topic)
        if found is None:
            with contextlib.suppress(ValueError, AttributeError):
                found = _DISCOVERY_ID.search(str(orjson.loads(payload).get("unique_id", "")))
        if found is not None:
            dev = int(found.group(1))
            configs[dev] = configs.get(dev, 0) + 1

    local = lab.local(stock=stock)
    states = StateChecker(w.expected)

    def on_message(topic: str, payload: bytes, retain: bool) -> None:
        if topic.startswith("homeassistant/"):
            on_discovery(topic, payload)
        else:
            states.on_message(topic, payload, retain)

    checker = await RawClient.open(local.host, local.port, f"bench-check-{name}", on_message)
    # On a stock broker a QoS 1 subscriber gets at most 1,020 messages queued and loses the
    # rest of a burst (measured: the bridge published all 40,000 states, the checker missed
    # some and waited for them until the timeout): the checker reads at QoS 0 there.
    await checker.subscribe([f"{BASE}/+/state", "homeassistant/#"], qos=0 if stock else 1)
    t0 = time.monotonic()
    proc = await start_bridge(lab, name, up, local, settings)
    rss = RssSampler(proc.pid, interval=0.05).start()
    spy = None
    if profiled:
        await asyncio.sleep(0.3)  # py-spy needs the interpreter up to attach
        spy = await start_profiler(lab, proc.pid, settings.results / "startup-profile.txt")
    await wait_or_exit(states.done, proc, timeout)
    disc_note = ""
    t_disc: float | None = None
    if states.done_at is not None:
        expect = discovery_module or config_messages[0] > 0
        if expect:
            # complete: every device has a config, then 1 s without a new one
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if len(configs) >= d and time.monotonic() - last_config[0] > 1.0:
                    break
                if not config_messages[0] and time.monotonic() - states.done_at > 3.0:
                    break
                await asyncio.sleep(0.1)
            if len(configs) >= d:
                t_disc = last_config[0] - t0
            else:
                disc_note = (f"discovery incomplete: configs for {len(configs)}/{d} "
                             f"devices ({config_messages[0]} config messages)")
        else:
            disc_note = "no discovery published (bridge.homeassistant.payloads not present)"
    if spy is not None:
        await stop_profiler(spy)
    peak = await rss.stop()
    cpu = cpu_seconds(proc.pid)
    await scrape_metrics(proc, settings)
    await checker.close()
    await proc.stop()
    info: dict[str, Any] = {
        "devices": d, "peak_rss_mb": round(peak / MB, 1), "states_received": states.states,
        "discovery_configs": config_messages[0], "cpu_s": cpu,
        "discovery_first_s": round(first_config[0] - t0, 2) if first_config[0] else None,
        "states_s": None if states.done_at is None else round(states.done_at - t0, 2),
        "discovery_s": None if t_disc is None else round(t_disc, 2),
    }
    if states.done_at is None:
        return Measurement("startup", label, None, "s", "timeout: " + states.diagnosis(),
                           info, brokers=lab.nodelay_brokers()), peak
    total = round(max(states.done_at - t0, t_disc or 0.0), 2)
    return Measurement("startup", label, total, "s", disc_note, info,
                       brokers=lab.nodelay_brokers()), peak


# -- command round trip ---------------------------------------------------------------------

def command_contestant(who: str, local_nodelay: bool) -> str:
    """Row label of a round trip through the local broker; the bridge in the configuration
    recommended for latency-sensitive setups (the local Mosquitto with `set_tcp_nodelay
    true`) is marked."""
    if not local_nodelay:
        return f"{who} (local broker: stock Mosquitto)"
    return f"{who} (local broker: set_tcp_nodelay true{', recommended' * (who == BRIDGE)})"


BRIDGE = "flespi-bridge"
ECHO = "local echo, no bridge"
SIMULATOR_ALONE = "simulator alone (REST over MQTT upstream, no bridge)"


class ResultWaiter:
    """The checker's side of a round trip: one future per transaction, completed by the
    result on `<base>/<id>/result` that carries it."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def on_message(self, topic: str, payload: bytes, _retain: bool) -> None:
        if not topic.endswith("/result"):
            return
        with contextlib.suppress(ValueError, AttributeError):
            doc = orjson.loads(payload)
            fut = self.futures.get(str(doc.get("transaction")))
            if fut is not None and not fut.done():
                fut.set_result({**doc, "_received": time.monotonic()})


@dataclass
class RoundTrips:
    samples: list[float] = field(default_factory=list)  # ms, "ok" results only
    statuses: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    first_error: str = ""
    first_lost: bool = False  # the first command got no result: stopped there


async def _round_trips(checker: RawClient, waiter: ResultWaiter, ids: list[int],
                       settings: Settings, pace: float) -> RoundTrips:
    """`settings.commands` requests on `<base>/<id>/set`, one at a time, `pace` per second;
    each timed until its result arrives. The same for every contestant."""
    loop = asyncio.get_running_loop()
    rt = RoundTrips()
    run_id = f"{int(time.time())}-{id(waiter)}"
    next_at = time.monotonic()
    for i in range(settings.commands):
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at = time.monotonic() + 1 / pace
        tx = f"bench-{run_id}-{i}"
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        waiter.futures[tx] = fut
        body = orjson.dumps({**settings.command_payload, "transaction": tx})
        t = time.monotonic()
        checker.publish(f"{BASE}/{ids[i % len(ids)]}/set", body, qos=1)
        wait = settings.command_first_timeout if i == 0 else settings.command_timeout
        try:
            doc = await asyncio.wait_for(fut, wait)
        except TimeoutError:
            rt.lost += 1
            if i == 0:
                rt.first_lost = True
                break
            continue
        status = str(doc.get("status"))
        rt.statuses[status] = rt.statuses.get(status, 0) + 1
        if status == "ok":
            rt.samples.append((doc["_received"] - t) * 1000)
        elif not rt.first_error:
            rt.first_error = str(doc.get("error"))[:200]
    return rt


def _round_trip_measurement(name: str, samples: list[float], info: dict[str, Any],
                            note: str = "") -> Measurement:
    """p99 (with p50 and max in `extra`) of round trips in ms."""
    samples = sorted(samples)
    if not samples:
        return Measurement("commands", name, None, "ms p99", note, info)
    info = {**info, "p50_ms": _percentile(samples, 0.5), "p99_ms": _percentile(samples, 0.99),
            "max_ms": samples[-1]}
    return Measurement("commands", name, _percentile(samples, 0.99), "ms p99", note, info)


def _commands_measurement(name: str, rt: RoundTrips, settings: Settings,
                          why_unavailable: str) -> Measurement:
    info: dict[str, Any] = {"commands": settings.commands, "statuses": rt.statuses,
                            "lost": rt.lost}
    if rt.first_lost:
        return Measurement("commands", name, None, "ms p99", f"unavailable: {why_unavailable}",
                           info)
    note = "" if rt.statuses.get("ok") == settings.commands else (
        f"{rt.statuses} lost={rt.lost}; first error: {rt.first_error}")
    if not rt.samples:
        note = f"unavailable: no ok result ({rt.statuses}); first error: {rt.first_error}"
    return _round_trip_measurement(name, rt.samples, info, note)


async def commands(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    """The bridge's round trip with the brokers of `settings.nodelay` (the local broker stock
    unless "all") and with the local broker's `set_tcp_nodelay true` as well; beside each, a
    local echo that answers without any bridge on the same local broker; and the simulator
    alone."""
    n_dev = settings.command_devices
    log(f"commands: {settings.commands} x {orjson.dumps(settings.command_payload).decode()} "
        f"over {n_dev} simulated devices, one at a time")
    extras = bridgecfg.example_extras()
    if extras:
        async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
            if not await config_ok(lab, lab.upstream(), lab.local(), settings, extras):
                log("  commands: config.example.toml's extra sections are not accepted; "
                    "running without them")
                extras = {}
    pace = _command_pace(bridgecfg.merge(extras, settings.extra), n_dev)
    log(f"  commands: paced at {pace:.1f}/s to stay within the bridge's rate limits")
    ids: list[int] = []
    out: list[Measurement] = []
    direct: Measurement | None = None
    for nodelay in dict.fromkeys([settings.nodelay, "all"]):
        for who in (BRIDGE, ECHO):
            name = command_contestant(who, local_nodelay=nodelay == "all")
            lab = Lab(settings.logs, nodelay=nodelay)  # fresh brokers for each
            try:
                async with lab:
                    if who == BRIDGE:
                        ms = await _bridge_round_trips(lab, name, settings, extras, pace, ids,
                                                       with_direct=direct is None)
                    else:
                        ms = await _echo_round_trips(lab, name, settings, pace,
                                                     ids or list(range(1, n_dev + 1)))
            except Exception as exc:
                ms = [Measurement("commands", name, None, "ms p99",
                                  f"failed: {type(exc).__name__}: {exc}")]
            for m in ms:
                m.brokers = lab.nodelay_brokers()
                if m.contestant == SIMULATOR_ALONE:  # it uses the upstream broker only
                    m.brokers = "upstream" if ("upstream", True) in lab.roles else "none"
                    direct = m
                else:
                    out.append(m)
                log(f"  commands: {m.contestant}: {fmt(m)}")
    if direct is not None:
        out.append(direct)
    return out


async def _bridge_round_trips(lab: Lab, name: str, settings: Settings, extras: dict[str, Any],
                              pace: float, ids: list[int], *,
                              with_direct: bool) -> list[Measurement]:
    """The bridge between the simulator's upstream broker and a local one; `ids` receives
    the simulated devices. With `with_direct`, also the simulator alone."""
    n_dev = settings.command_devices
    waiter = ResultWaiter()
    rest_requests = [0]
    seen_states: set[int] = set()
    all_states = asyncio.Event()

    def on_local(topic: str, payload: bytes, retain: bool) -> None:
        if topic.endswith("/state"):
            dev = _state_device(topic)
            if dev is not None:
                seen_states.add(dev)
                if seen_states.issuperset(ids):
                    all_states.set()
        else:
            waiter.on_message(topic, payload, retain)

    def on_upstream(_topic: str, _payload: bytes, _retain: bool) -> None:
        rest_requests[0] += 1

    up, local = lab.upstream(), lab.local()
    suffix = "-nodelay" if lab.nodelay == "all" else ""
    sim = await lab.spawn(f"simulator{suffix}", [
        PYTHON, "-m", "bench.sim", "--port", str(up.port), "--devices", str(n_dev),
        "--timeout", "600"])
    ready = await sim.event(60)
    ids[:] = ready["devices"]
    checker = await RawClient.open(local.host, local.port, "bench-cmd", on_local)
    await checker.subscribe([f"{BASE}/+/result", f"{BASE}/+/state"])
    monitor = await RawClient.open(up.host, up.port, "bench-rest-monitor", on_upstream)
    await monitor.subscribe(["flespi/rest/#"])
    bridge = await start_bridge(lab, f"bridge-commands{suffix}", up, local, settings,
                                extra=extras)
    if not await wait_or_exit(all_states, bridge, 30):
        return [Measurement("commands", name, None, "ms p99",
                            f"unavailable: the bridge published states for "
                            f"{len(seen_states)}/{n_dev} simulated devices in 30 s")]
    if not ready["responder"]:
        return [Measurement("commands", name, None, "ms p99",
                            "unavailable: the simulator has no REST-over-MQTT responder "
                            "(bridge.sim.Responder)")]
    rt = await _round_trips(checker, waiter, ids, settings, pace)
    await checker.close()
    await monitor.close()
    why = (f"no result on {BASE}/<id>/result within {settings.command_first_timeout:.0f}s; "
           + (f"the bridge sent {rest_requests[0]} flespi/rest request(s) upstream, none "
              "answered by the simulator" if rest_requests[0] else
              "the bridge sent no flespi/rest request upstream "
              "(commands not implemented or not configured)"))
    m = _commands_measurement(name, rt, settings, why)
    m.extra["rest_requests"] = rest_requests[0]
    out = [m]
    if with_direct:
        direct = await _direct_rest(up, ids, min(settings.commands, 50), pace)
        out.append(_round_trip_measurement(
            SIMULATOR_ALONE, direct,
            {"commands": len(direct), "statuses": {"ok": len(direct)}},
            "" if direct else "unavailable: no answer from the simulator's REST responder"))
    return out


async def _echo_round_trips(lab: Lab, name: str, settings: Settings, pace: float,
                            ids: list[int]) -> list[Measurement]:
    """No bridge: a client of the local broker answers each `<base>/<id>/set` at once with a
    result on `<base>/<id>/result`, as the bridge would publish it (QoS 1, not retained).
    What remains is the local broker's and the checker's share of the round trip."""
    local = lab.local()
    echo: RawClient | None = None

    def on_set(topic: str, payload: bytes, _retain: bool) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            doc = orjson.loads(payload)
            result = {"transaction": doc.get("transaction"), "command": doc.get("command"),
                      "status": "ok", "error": None, "code": None, "response": None}
            if echo is not None:
                echo.publish(topic.removesuffix("/set") + "/result", orjson.dumps(result),
                             qos=1)

    echo = await RawClient.open(local.host, local.port, "bench-echo", on_set)
    await echo.subscribe([f"{BASE}/+/set"])
    waiter = ResultWaiter()
    checker = await RawClient.open(local.host, local.port, "bench-cmd", waiter.on_message)
    await checker.subscribe([f"{BASE}/+/result"])
    rt = await _round_trips(checker, waiter, ids, settings, pace)
    await checker.close()
    await echo.close()
    return [_commands_measurement(name, rt, settings,
                                  "the echo client's result never reached the checker")]


async def _direct_rest(up: mosquitto.Broker, ids: list[int], n: int,
                       pace: float) -> list[float]:
    """The simulator's own share of a round trip: flespi REST over MQTT requests published
    straight to the upstream broker (MQTT 5 response topic), as the bridge would send them."""
    from gmqtt import Client
    from gmqtt.mqtt.constants import MQTTv50

    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[float]] = {}
    subscribed = asyncio.Event()

    def on_message(_c: Any, topic: str, payload: bytes, _qos: int, props: Any) -> int:
        fut = waiting.get(topic)
        codes = dict(props.get("user_property", ()))
        if fut is not None and not fut.done() and "http_code" in codes:
            fut.set_result(time.monotonic() if codes["http_code"] == "200" else -1.0)
        return 0

    client = Client(f"bench-rest-{int(time.time())}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    samples: list[float] = []
    with contextlib.suppress(Exception):
        await client.connect(up.host, up.port, version=MQTTv50)
        client.subscribe("bench-rest/#", qos=1)
        await asyncio.wait_for(subscribed.wait(), 10)
        body = orjson.dumps([{"name": "setting.s1.set", "properties": {"event_code": 2},
                              "timeout": 10}])
        for i in range(n):
            reply = f"bench-rest/{i}"
            fut: asyncio.Future[float] = loop.create_future()
            waiting[reply] = fut
            t = time.monotonic()
            client.publish(f"flespi/rest/post/gw/devices/{ids[i % len(ids)]}/commands", body,
                           qos=1, response_topic=reply, correlation_data=str(i).encode())
            with contextlib.suppress(TimeoutError):
                done = await asyncio.wait_for(fut, 5)
                if done > 0:
                    samples.append((done - t) * 1000)
            await asyncio.sleep(1 / pace)
    with contextlib.suppress(Exception):
        await client.disconnect()
    return samples


def _command_pace(config: dict[str, Any], devices: int) -> float:
    """Commands per second: 80 % of the tighter of the configured global and per-device
    rate limits (`commands.global_rate`, `commands.device_rate`; 10/s and 1/s if unset)."""
    section = config.get("commands", {})
    global_rate = float(section.get("global_rate", 10.0))
    device_rate = float(section.get("device_rate", 1.0))
    return 0.8 * min(global_rate, device_rate * devices)


def fmt(m: Measurement) -> str:
    if m.value is None:
        return m.note
    text = f"{m.value:,.1f} {m.unit}"
    return f"{text} ({m.note})" if m.note else text
