"""`python -m bench --only cluster` (issue #23): one fleet split over replicas.

(a) CPU per replica at the same total load: the ingest scenario's workload (its publications
    over `ingest_devices` devices, whose device objects are retained upstream first) through
    1 replica (`shards = 1`, the baseline of the same run), then N = 2 and 4 replicas, each
    with its own local broker (publishing is the local side's: here every replica only
    writes its own devices). CPU seconds of each bridge process from just before the stream
    until every device's final state is on its replica's local broker. Target: each of N
    replicas <= 1.25/N of the one replica.
(b) Start-up of `cluster_devices` devices over 4 shards. Each shard alone (two cores cannot
    run four replicas and their brokers at once without measuring the contention instead):
    seconds from starting its process to `loaded` (/readyz answers 200; the local broker is
    up beforehand, so that is the start-up marker) and to every own device's state on its
    local broker, against that shard's own replay baseline: a bare gmqtt client subscribing
    the shard's per-device filters (the one-shard filters of its own ids, in packets of
    `FILTERS_PER_PACKET`) that counts the retained messages they match; the faster of a run
    before and one after the replica, as in the start-up scenario. Target: <= 1.5x.
    The replica also receives every other device's object (how it learns the fleet): that
    is its price over the baseline.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable
from typing import Any

import orjson

from bench import loadgen, workload
from bench.mqtt import RawClient
from bench.procs import PYTHON, Lab, Proc, RssSampler
from bench.scenarios import (
    BASE,
    Measurement,
    Settings,
    StateChecker,
    cpu_seconds,
    fmt,
    ingest_workload,
    metrics_address,
    scrape_metrics,
    send_stream,
    start_bridge,
    wait_or_exit,
)
from bridge.core.shards import shard_of
from bridge.flespi import topics as flespi_topics
from bridge.flespi.shard_subscriptions import FILTERS_PER_PACKET
from bridge.sim import brokers as mosquitto

CPU_TARGET = 1.25  # x 1/N of one replica's CPU seconds
STARTUP_TARGET = 1.5  # x the shard's own replay baseline
STARTUP_SHARDS = 4
REPLICAS = (2, 4)


async def cluster(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    out = await _cpu(settings, log)
    out += await _startup(settings, log)
    return out


def _objects(ids: list[int]) -> loadgen.Stream:
    builder = workload.StreamBuilder()
    for i, dev in enumerate(ids):
        builder.publish(f"{workload.STATE_PREFIX}{dev}",
                        orjson.dumps(workload.device_object(dev, i)), None)
    return builder.build()


def _shard_config(shards: int, shard: int) -> dict[str, Any]:
    return {"cluster": {"shards": shards, "shard": shard}} if shards > 1 else {}


async def ready_at(proc: Proc, timeout: float) -> float | None:
    """The monotonic time /readyz first answers 200 (polled every 20 ms); None on timeout."""
    host, port = metrics_address(proc.meta["config"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.returncode is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}")
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            if b" 200 " in status:
                return time.monotonic()
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.02)
    return None


# -- (a) CPU per replica ------------------------------------------------------------------

async def _cpu(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    w = ingest_workload(settings)
    objects = _objects(sorted(w.expected))
    log(f"cluster CPU: {w.stream.count:,} publications over {settings.ingest_devices:,} "
        f"devices, through 1, {', '.join(map(str, REPLICAS))} replicas")
    out: list[Measurement] = []
    one: float | None = None
    for shards in (1, *REPLICAS):
        try:
            cpus, note = await _cpu_run(settings, w, objects, shards)
        except Exception as exc:
            cpus, note = [], f"failed: {type(exc).__name__}: {exc}"
        known = [c for c in cpus if c is not None]
        worst = max(known) if cpus and len(known) == len(cpus) else None
        extra: dict[str, Any] = {"replicas": shards, "cpu_s": cpus,
                                 "publications": w.stream.count}
        if shards == 1:
            one = worst
            label = "1 replica (shards = 1): CPU"
        else:
            label = f"{shards} replicas: CPU of the busiest"
            extra["target"] = round(CPU_TARGET / shards, 3)
            if worst is not None and one:
                extra["ratio"] = round(worst / one, 3)
                note = note or (f"per replica {', '.join(f'{c:.2f}' for c in known)} s; "
                                f"{worst / one:.3f} of one replica (target <= "
                                f"{CPU_TARGET / shards:.3f})")
        m = Measurement("cluster", label, worst, "CPU s", note, extra)
        out.append(m)
        log(f"  cluster CPU: {label}: {fmt(m)}")
    return out


async def _cpu_run(settings: Settings, w: workload.Workload, objects: loadgen.Stream,
                   shards: int) -> tuple[list[float | None], str]:
    timeout = settings.contestant_timeout
    async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
        up = lab.upstream()
        await send_stream(lab, up, objects, f"cluster-objects-{shards}", settings,
                          stream_name="cluster-objects")
        procs: list[Proc] = []
        checkers: list[tuple[StateChecker, RawClient]] = []
        for k in range(shards):
            local = lab.local()
            state = StateChecker({d: v for d, v in w.expected.items()
                                  if shards == 1 or shard_of(d, shards) == k})
            client = await RawClient.open(local.host, local.port, f"bench-check-{shards}-{k}",
                                          state.on_message)
            await client.subscribe([f"{BASE}/+/state"])
            checkers.append((state, client))
            procs.append(await start_bridge(lab, f"cluster-cpu-{shards}-{k}", up, local,
                                            settings, extra=_shard_config(shards, k)))
        for proc in procs:
            if await ready_at(proc, timeout) is None:
                return [], f"timeout: {proc.name} not ready in {timeout:.0f}s"
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        await send_stream(lab, up, w.stream, f"cluster-cpu-{shards}", settings,
                          stream_name="cluster-ingest")
        for proc, (state, _) in zip(procs, checkers, strict=True):
            if not await wait_or_exit(state.done, proc, timeout):
                return [], f"timeout: {proc.name}: {state.diagnosis()}"
        cpu1 = [cpu_seconds(p.pid) for p in procs]
        for proc in procs:
            await scrape_metrics(proc, settings)
        for _, client in checkers:
            await client.close()
    return [None if a is None or b is None else round(b - a, 2)
            for a, b in zip(cpu0, cpu1, strict=True)], ""


# -- (b) start-up per shard ---------------------------------------------------------------

async def _startup(settings: Settings, log: Callable[[str], None]) -> list[Measurement]:
    d, shards = settings.cluster_devices, STARTUP_SHARDS
    w = workload.startup(d, settings.startup_parameters)
    per_device = 3 + settings.startup_parameters  # object, name, connected, parameters
    log(f"cluster start-up: {d:,} devices x {per_device} retained messages over {shards} "
        "shards, each shard alone against its own replay baseline")
    timeout = max(60.0, d * 0.012)
    out: list[Measurement] = []
    async with Lab(settings.logs, nodelay=settings.nodelay) as lab:
        up = lab.upstream()
        await send_stream(lab, up, w.stream, f"cluster-startup-{d}-preload", settings,
                          stream_name=f"cluster-startup-{d}", timeout=timeout)
        w.stream = loadgen.Stream(b"", array("Q", [0]))  # loaded: free the bench's memory
        for k in range(shards):
            own = {dev: v for dev, v in w.expected.items() if shard_of(dev, shards) == k}
            filters = flespi_topics.subscriptions(sorted(own), None, comma_lists=False)
            count = len(own) * per_device
            replays = [await _replay(lab, up, filters, count, f"{d}-{k}-before", timeout)]
            bridge = await _shard_startup(lab, up, settings, own, shards, k, timeout)
            replays.append(await _replay(lab, up, filters, count, f"{d}-{k}-after", timeout))
            done = [r["s"] for r in replays if r["complete"]]
            base = min(done) if done else None
            loaded = bridge.get("loaded_s")
            extra = {"devices": len(own), "retained_messages": count, "runs": replays,
                     "bridge": bridge, "baseline_s": base, "target": STARTUP_TARGET}
            note = bridge.get("note", "")
            if loaded is not None and base:
                extra["ratio"] = round(loaded / base, 2)
                note = (f"{loaded / base:.2f}x its replay baseline {base:.2f} s "
                        f"({len(own):,} devices, {count:,} retained messages; replay runs "
                        + " / ".join(f"{r['s']:.2f}" for r in replays if r["complete"])
                        + f" s); own states on the local broker at {bridge['states_s']} s, "
                        f"CPU {bridge['cpu_s']} s, peak RSS {bridge['peak_rss_mb']} MB")
            m = Measurement("cluster", f"start-up, shard {k} of {shards}, {d:,} devices: "
                            "to loaded", loaded, "s", note, extra,
                            brokers=lab.nodelay_brokers())
            out.append(m)
            log(f"  cluster start-up: shard {k}: {fmt(m)}")
    return out


async def _replay(lab: Lab, up: mosquitto.Broker, filters: list[str], n: int, name: str,
                  timeout: float) -> dict[str, Any]:
    """The shard's baseline once: a gmqtt process subscribing its per-device filters."""
    path = lab.logs / f"cluster-filters-{name}.txt"
    path.write_text("\n".join(filters) + "\n")
    t0 = time.monotonic()
    proc = await lab.spawn(f"gmqtt-replay-cluster-{name}", [
        PYTHON, "-m", "bench.clients", "gmqtt-replay", "--port", str(up.port),
        "--count", str(n), "--timeout", str(timeout), "--topics-file", str(path),
        "--per-packet", str(FILTERS_PER_PACKET)])
    await proc.event(60)  # ready: subscribed
    done = await proc.event(timeout + 30)
    await proc.stop()
    path.unlink()
    return {"s": round(done["last"] - t0, 2), "count": done["count"],
            "complete": done["complete"], "cpu_s": done["cpu_s"]}


async def _shard_startup(lab: Lab, up: mosquitto.Broker, settings: Settings,
                         own: dict[int, dict[str, Any]], shards: int, k: int,
                         timeout: float) -> dict[str, Any]:
    """One replica of the split fleet, from a fresh process on a new session."""
    local = lab.local()
    states = StateChecker(own)
    checker = await RawClient.open(local.host, local.port, f"bench-check-startup-{k}",
                                   states.on_message)
    await checker.subscribe([f"{BASE}/+/state"])
    t0 = time.monotonic()
    proc = await start_bridge(lab, f"cluster-startup-{shards}-{k}", up, local, settings,
                              extra=_shard_config(shards, k))
    rss = RssSampler(proc.pid, interval=0.05).start()
    ready = await ready_at(proc, timeout)
    await wait_or_exit(states.done, proc, timeout)
    peak = await rss.stop()
    info: dict[str, Any] = {
        "loaded_s": None if ready is None else round(ready - t0, 2),
        "states_s": None if states.done_at is None else round(states.done_at - t0, 2),
        "cpu_s": round(cpu_seconds(proc.pid) or 0.0, 2),
        "peak_rss_mb": round(peak / (1024 * 1024), 1)}
    if ready is None:
        info["note"] = f"timeout: not loaded in {timeout:.0f}s"
    elif states.done_at is None:
        info["note"] = "timeout: " + states.diagnosis()
    await scrape_metrics(proc, settings)
    await checker.close()
    await proc.stop()
    return info


def verdicts(ms: list[Measurement]) -> list[dict[str, Any]]:
    """The issue's two cluster targets, one row per replica count and per shard."""
    rows: list[dict[str, Any]] = []
    for m in ms:
        if m.scenario != "cluster" or "target" not in m.extra:
            continue
        ratio = m.extra.get("ratio")
        if "replicas" in m.extra:
            n = m.extra["replicas"]
            target = f"cluster: busiest of {n} replicas' CPU / one replica's (issue 23)"
        else:
            target = f"cluster {m.contestant}: / own replay baseline (issue 23)"
        goal = m.extra["target"]
        rows.append({"target": target, "goal": f"<= {goal:g}x",
                     "measured": ratio, "unit": "x",
                     "met": None if ratio is None else ratio <= goal,
                     "note": "" if ratio is not None else m.note})
    return rows
