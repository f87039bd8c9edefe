"""`python -m bench`: run the scenarios, print the table, write JSON (and Markdown)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import bridgecfg, scenarios
from bench import cluster as cluster_bench
from bench import stream_ingest as stream_bench
from bench import track as track_bench
from bench.procs import REPO
from bench.scenarios import (
    BRIDGE,
    BRIDGE_RSS,
    ECHO,
    REPLAY,
    STOCK_BRIDGE,
    Measurement,
    Settings,
    command_contestant,
    startup_label,
)

SCENARIOS = ("ingest", "latency", "startup", "commands", "stream", "track", "cluster")
# Run only when named (`--only cluster`): its 100,000-device start-up alone takes minutes,
# and a full run must end within its budget.
OPT_IN = ("cluster",)
README = REPO / "bench" / "README.md"
TABLE_START = "<!-- bench:table:start -->"
TABLE_END = "<!-- bench:table:end -->"

# The issues' targets (issue 8, part 4; issue 12, point 5: start-up at fleet scale).
TARGETS = {
    "gmqtt": 0.60,  # bridge >= 60 % of a gmqtt counting subscriber
    "aiomqtt": 1.3,  # >= 1.3x an aiomqtt counting subscriber
    "relay": 3.0,  # >= 3x the minimal aiomqtt relay
    "latency_p99_ms": 20.0,
    "startup_s": 15.0,
    "startup_rss_mb": 250.0,
    "startup_ratio": 1.5,  # bridge <= 1.5x the gmqtt replay counter (issue 12) ...
    "startup_rss_40k_mb": 300.0,  # ... and peak RSS <= 300 MB at 40,000 devices
    "stock_ingest": 1.0,  # on a stock local broker: >= the gmqtt counter (issue 21)
    "command_p99_ms": 25.0,
    "stream": 0.5,  # stream ingest >= 0.5x a minimal receiver on the same server (issue 15)
}


def scale(args: argparse.Namespace) -> Settings:
    s = Settings(results=args.results, profile=args.profile, nodelay=args.tcp_nodelay)
    if args.quick:
        s.ingest_messages, s.ingest_devices = 2_000, 200
        s.ingest_publications = None
        s.latency_seconds, s.latency_warmup = 5.0, 1.0
        s.startup_devices = [2_000]
        s.commands = 20
        s.contestant_timeout = 60.0
        s.track_days = 3.0
        s.cluster_devices = 4_000
    if args.messages:
        s.ingest_messages, s.ingest_publications = args.messages, None
    if args.devices:
        s.ingest_devices = args.devices
    if args.startup_devices:
        s.startup_devices = args.startup_devices
    if args.cluster_devices:
        s.cluster_devices = args.cluster_devices
    if args.latency_seconds:
        s.latency_seconds = args.latency_seconds
    if args.track_days:
        s.track_days = args.track_days
    if args.track_formats:
        s.track_formats = args.track_formats
    if args.commands is not None:
        s.commands = args.commands
    if args.command_payload:
        s.command_payload = json.loads(args.command_payload)
    s.extra = bridgecfg.load_extra(args.bridge_extra)
    return s


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    from importlib import metadata

    for pkg in ("gmqtt", "aiomqtt", "paho-mqtt", "uvloop", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    mosq = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        from bridge.sim import brokers as mosquitto

        binary = mosquitto.find_binary()
        if binary:
            out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5)
            mosq = (out.stdout or out.stderr).splitlines()[0]
    commit = os.environ.get("BENCH_COMMIT", "")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        if head:
            dirty = subprocess.run([*git, "status", "--porcelain", "--", "bridge"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit = head + (" + uncommitted changes in bridge/" if dirty else "")
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "mosquitto": mosq, "packages": versions,
            "commit": commit, "load_average": os.getloadavg()}


def _find(ms: list[Measurement], scenario: str, prefix: str,
          exact: bool = False) -> Measurement | None:
    for m in ms:
        if m.scenario == scenario and (
            m.contestant == prefix if exact else m.contestant.startswith(prefix)
        ):
            return m
    return None


def verdicts(ms: list[Measurement]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and met / missed / n/a."""
    rows: list[dict[str, Any]] = []
    bridge = _find(ms, "ingest", "flespi-bridge", exact=True)

    def ratio(base_prefix: str, label: str, key: str) -> None:
        base = _find(ms, "ingest", base_prefix)
        value = None
        if bridge and base and bridge.value and base.value:
            value = bridge.value / base.value
        rows.append({"target": f"ingest: bridge / {label}", "goal": f">= {TARGETS[key]:.2f}x",
                     "measured": None if value is None else round(value, 2), "unit": "x",
                     "met": None if value is None else value >= TARGETS[key]})

    ratio("gmqtt counter", "gmqtt counter", "gmqtt")
    ratio("aiomqtt counter", "aiomqtt counter", "aiomqtt")
    ratio("aiomqtt relay", "aiomqtt relay", "relay")
    mos = _find(ms, "ingest", "Mosquitto bridge")
    if bridge and mos and bridge.value and mos.value:
        rows.append({"target": "ingest: bridge / Mosquitto bridge (ceiling, no target)",
                     "goal": "-", "measured": round(bridge.value / mos.value, 2), "unit": "x",
                     "met": None})

    def limit(m: Measurement | None, label: str, key: str, unit: str) -> None:
        value = None if m is None else m.value
        rows.append({"target": label, "goal": f"<= {TARGETS[key]:g} {unit}",
                     "measured": None if value is None else round(value, 1), "unit": unit,
                     "met": None if value is None else value <= TARGETS[key],
                     "note": "" if m is None or value is not None else m.note})

    limit(_find(ms, "latency", "flespi-bridge"), "added latency p99 at 2,000/s",
          "latency_p99_ms", "ms")
    fleets = startup_fleets(ms)
    first = next((f for f in fleets if f["devices"] == 10_000), fleets[0] if fleets else None)
    if first is None:  # the scenario failed or was skipped: its targets are n/a
        failed = _find(ms, "startup", BRIDGE, exact=True)
        limit(failed, "start-up, 10,000 devices (issue 8)", "startup_s", "s")
    else:
        limit(first["bridge"], f"start-up, {first['devices']:,} devices (issue 8)",
              "startup_s", "s")
        limit(first["rss"], f"start-up peak RSS, {first['devices']:,} devices (issue 8)",
              "startup_rss_mb", "MB")
    for f in fleets:
        d, times = f["devices"], f["ratio"]
        target = d in (10_000, 40_000)
        rows.append({
            "target": f"start-up, {d:,} devices: bridge / gmqtt replay counter (issue 12"
                      + ("" if target else ", no target") + ")",
            "goal": f"<= {TARGETS['startup_ratio']:.2f}x" if target else "-",
            "measured": times, "unit": "x",
            "met": None if times is None or not target else times <= TARGETS["startup_ratio"],
            "note": "" if times is not None else (f["bridge"].note or "no baseline")})
        if d == 40_000:
            limit(f["rss"], "start-up peak RSS, 40,000 devices (issue 12)",
                  "startup_rss_40k_mb", "MB")
    rows += stock_verdicts(ms)
    rows += cluster_bench.verdicts(ms)
    # the command target is judged on the configuration recommended for latency-sensitive
    # setups (local Mosquitto with `set_tcp_nodelay true`); the stock local broker's figure
    # and the echo that shows where it comes from stand beside it
    recommended = (_find(ms, "commands", command_contestant(BRIDGE, True), exact=True)
                   or _find(ms, "commands", BRIDGE, exact=True))  # the scenario failed
    limit(recommended, "command round trip p99 (local broker `set_tcp_nodelay true`, "
          "recommended)", "command_p99_ms", "ms")
    stock = _find(ms, "commands", command_contestant(BRIDGE, False), exact=True)
    if stock is not None:
        echo = _find(ms, "commands", command_contestant(ECHO, False), exact=True)
        rows.append({
            "target": "command round trip p99, stock local broker (no target)", "goal": "-",
            "measured": None if stock.value is None else round(stock.value, 1), "unit": "ms",
            "met": None,
            "note": stock.note if stock.value is None else (
                "no echo baseline" if echo is None or echo.value is None else
                f"local echo without any bridge on the same stock broker: p99 "
                f"{echo.value:.1f} ms (the broker's Nagle delay)")})
    for size in stream_bench.BATCH_SIZES:
        mine = _find(ms, "stream", f"flespi-bridge, batches of {size:,}", exact=True)
        base = _find(ms, "stream", f"minimal aiohttp receiver, batches of {size:,}",
                     exact=True)
        ceiling = _find(ms, "stream", f"{stream_bench.LOCAL_ALONE}, batches of {size:,}",
                        exact=True)
        value = None
        if mine and base and mine.value and base.value:
            value = mine.value / base.value
        note = ""
        if ceiling is not None and ceiling.value and base and base.value:
            note = (f"the local broker alone takes the states at {ceiling.value:,.0f} msg/s "
                    f"({ceiling.value / base.value:.2f}x the receiver)")
            if mine and mine.value:
                note += f"; the bridge reaches {mine.value / ceiling.value:.2f}x of that"
        rows.append({"target": f"stream ingest, batches of {size:,}: bridge / minimal "
                     "receiver", "goal": f">= {TARGETS['stream']:.2f}x",
                     "measured": None if value is None else round(value, 2), "unit": "x",
                     "met": None if value is None else value >= TARGETS["stream"],
                     "note": note})
    return rows


def figure_text(m: Measurement) -> str:
    if m.value is None:
        return "—"
    if m.scenario in ("latency", "commands"):
        e = m.extra
        return (f"p50 {e['p50_ms']:.1f} / p99 {e['p99_ms']:.1f} / "
                f"max {e['max_ms']:.1f} ms")
    if m.unit == "msg/s":
        return f"{m.value:,.0f} msg/s"
    if m.unit == "s":
        return f"{m.value:.2f} s"
    return f"{m.value:,.1f} {m.unit}"


def notes_text(m: Measurement) -> str:
    parts = []
    e = m.extra
    if m.scenario == "ingest":
        gen = e.get("loadgen")
        if gen and "rate" in gen and "alone" not in m.contestant:
            parts.append(f"generator {gen['rate']:,.0f}/s")
        if e.get("cpu_s") is not None:
            parts.append(f"CPU {e['cpu_s']:.1f} s")
        if e.get("peak_rss_mb"):
            parts.append(f"peak RSS {e['peak_rss_mb']:.0f} MB")
    if m.scenario == "latency" and m.value is not None:
        parts.append(f"{e['matched']}/{e['updates']} updates matched at "
                     f"{e['rate_achieved']:,.0f}/s")
        internal = e.get("bridge_processing_latency") or {}
        if internal.get("mean_ms") is not None:
            parts.append(f"bridge's own processing_latency histogram: mean "
                         f"{internal['mean_ms']:.1f} ms, p50 <= {internal['p50_le_ms']:g} ms, "
                         f"p99 <= {internal['p99_le_ms']:g} ms")
    if m.scenario == "startup" and e.get("states_s") is not None:
        parts.append(f"states {e['states_s']:.2f} s")
        if e.get("discovery_s") is not None:
            parts.append(f"discovery {e['discovery_s']:.2f} s ({e['discovery_configs']} configs)")
        if e.get("ratio") is not None:
            parts.append(f"{e['ratio']:.2f}x the gmqtt replay counter")
        if e.get("cpu_s") is not None:
            parts.append(f"CPU {e['cpu_s']:.1f} s")
    if m.scenario == "startup" and e.get("runs"):
        parts.append(f"{e['retained_messages']:,} retained messages; runs before / after "
                     "the bridge: " + " / ".join(
                         f"{r['s']:.2f} s (CPU {r['cpu_s']:.1f} s)" if r["complete"]
                         else "timeout" for r in e["runs"]))
    if m.scenario == "commands" and m.value is not None:
        parts.append(", ".join(f"{v}/{e['commands']} {k}" for k, v in e["statuses"].items()))
        if e.get("lost"):
            parts.append(f"{e['lost']} without a result")
    if m.scenario == "stream" and m.value is not None:
        if "publications" in e:
            parts.append(f"{e['messages']:,} messages' states ({e['publications']:,} "
                         f"publications) in {e['seconds']:.2f} s")
        else:
            parts.append(f"{e['messages']:,} messages in {e['seconds']:.2f} s, "
                         f"{e['retries']} batches resent")
            if e.get("passes", 1) > 1:
                parts.append(f"fastest of {e['passes']} passes")
            if e.get("warm_rate"):
                parts.append(f"warm (devices known) {e['warm_rate']:,} msg/s")
    if m.note:
        parts.append(m.note)
    return "; ".join(parts)


def _verdict_text(v: dict[str, Any]) -> str:
    if v["met"] is None:
        return "n/a" if v["measured"] is None else "—"
    return "met" if v["met"] else "MISSED"


def _verdict_cell(verdict: str, note: str) -> str:
    """A Markdown verdict cell: a row without a target shows its note alone."""
    if not note:
        return verdict
    return note if verdict == "—" else f"{verdict} — {note}"


def tables(ms: list[Measurement], vs: list[dict[str, Any]]) -> tuple[str, str]:
    """(plain text for the terminal, Markdown for the README)."""
    rows = [(m.scenario, m.contestant, m.brokers or "—", figure_text(m), notes_text(m))
            for m in ms]
    head = ("scenario", "contestant", "set_tcp_nodelay on", "figure", "notes")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    text = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
            for r in [head, *rows]]
    vrows = [(v["target"], v["goal"],
              "—" if v["measured"] is None else f"{v['measured']:g} {v['unit']}",
              _verdict_text(v), v.get("note", "")) for v in vs]
    vhead = ("target (issues 8, 15)", "goal", "measured", "verdict", "")
    vw = [max(len(r[i]) for r in [vhead, *vrows]) for i in range(4)]
    text.append("")
    text += ["  ".join(c.ljust(w) for c, w in zip(r[:4], vw, strict=True)) + "  " + r[4]
             for r in [vhead, *vrows]]
    md = ["| scenario | contestant | `set_tcp_nodelay true` on | figure | notes |",
          "|---|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in rows]
    md += ["", "| target (issues 8, 15) | goal | measured | verdict |", "|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {r[2]} | {_verdict_cell(r[3], r[4])} |" for r in vrows]
    growth = growth_table(ms)
    if growth:
        text += ["", "start-up by fleet size:", *growth]
        md += ["", "Start-up by fleet size:", "", *growth]
    return "\n".join(text), "\n".join(md)


def fleet_sizes(text: str) -> list[int]:
    """`--startup-devices 10000,40000,100000` (also `40k`, `0.1M`)."""
    sizes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        factor = {"k": 1_000, "m": 1_000_000}.get(item[-1].lower(), 1)
        number = item[:-1] if factor > 1 else item
        try:
            size = round(float(number.replace("_", "")) * factor)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a fleet size: {item!r}") from None
        if size < 1:
            raise argparse.ArgumentTypeError(f"not a fleet size: {item!r}")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError("no fleet size given")
    return sizes


def stock_verdicts(ms: list[Measurement]) -> list[dict[str, Any]]:
    """Issue 21's targets, the local broker at Mosquitto's defaults: start-up within 1.5x
    the same run's replay baseline at 10,000 and 40,000 devices, ingest at or above the
    gmqtt counter."""
    rows: list[dict[str, Any]] = []
    stock = _find(ms, "ingest", STOCK_BRIDGE, exact=True)
    base = _find(ms, "ingest", "gmqtt counter")
    if stock is not None and base is not None:
        value = round(stock.value / base.value, 2) if stock.value and base.value else None
        rows.append({"target": "ingest, stock local broker: bridge / gmqtt counter (issue 21)",
                     "goal": f">= {TARGETS['stock_ingest']:.2f}x", "measured": value,
                     "unit": "x", "met": None if value is None
                     else value >= TARGETS["stock_ingest"], "note": stock.note})
    for m in ms:
        d = m.extra.get("devices")
        if m.scenario != "startup" or not isinstance(d, int) or \
                m.contestant != startup_label(STOCK_BRIDGE, d):
            continue
        times, target = m.extra.get("ratio"), d in (10_000, 40_000)
        rows.append({
            "target": f"start-up, {d:,} devices, stock local broker: bridge / gmqtt replay "
                      "counter (issue 21" + ("" if target else ", no target") + ")",
            "goal": f"<= {TARGETS['startup_ratio']:.2f}x" if target else "-",
            "measured": times, "unit": "x",
            "met": None if times is None or not target else times <= TARGETS["startup_ratio"],
            "note": "" if times is not None else (m.note or "no baseline")})
    return rows


def startup_fleets(ms: list[Measurement]) -> list[dict[str, Any]]:
    """Per fleet size measured: the bridge, its baseline, their ratio and peak RSS."""
    rows = []
    for m in ms:
        if m.scenario != "startup" or not m.contestant.startswith(f"{BRIDGE}, "):
            continue
        d = m.extra.get("devices")
        if not isinstance(d, int):
            continue
        base = _find(ms, "startup", startup_label(REPLAY, d), exact=True)
        rss = _find(ms, "startup", startup_label(BRIDGE_RSS, d), exact=True)
        rows.append({"devices": d, "bridge": m, "baseline": base, "rss": rss,
                     "ratio": m.extra.get("ratio")})
    return rows


def growth_table(ms: list[Measurement]) -> list[str]:
    """Markdown: how start-up time and memory grow with the fleet."""
    rows = startup_fleets(ms)
    if not rows:
        return []

    def cell(m: Measurement | None, fmt: str) -> str:
        return "—" if m is None or m.value is None else fmt.format(m.value)

    out = ["| devices | retained messages | flespi-bridge | gmqtt replay counter | ratio | "
           "peak RSS | states / discovery done |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, e = r["bridge"], r["bridge"].extra
        n = r["baseline"].extra.get("retained_messages") if r["baseline"] else None
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        split = ("—" if e.get("states_s") is None else
                 f"{e['states_s']:.2f} / "
                 + ("—" if e.get("discovery_s") is None else f"{e['discovery_s']:.2f}") + " s")
        out.append(f"| {r['devices']:,} | {'—' if n is None else f'{n:,}'} | "
                   f"{cell(b, '{:.2f} s')} | {cell(r['baseline'], '{:.2f} s')} | {ratio} | "
                   f"{cell(r['rss'], '{:.1f} MB')} | {split} |")
    return out


# -- profile summary ---------------------------------------------------------------------

_LINENO = re.compile(r":\d+\)$")


_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)$")


def _group(frame: str) -> str:
    """The library (or bridge module) a frame's file belongs to."""
    found = _FILE.search(frame)
    if found is None:
        return "?"
    path = found.group(1)
    if path.startswith("bridge/"):
        return path.removesuffix(".py")
    if path.startswith("<frozen"):
        return "importlib"
    head = path.split("/", 1)[0].removesuffix(".py")
    return head if "/" in path or head in {"asyncio", "threading", "enum"} else f"stdlib {head}"


def profile_summary(path: Path, top: int = 20) -> tuple[list[tuple[str, float]],
                                                        list[tuple[str, float]]]:
    """Self time per function and per library from py-spy's raw (collapsed stack) output,
    in % of samples."""
    if not path.exists():
        return [], []
    by_function: Counter[str] = Counter()
    by_group: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = _LINENO.sub(")", stack.rsplit(";", 1)[-1])
        by_function[leaf] += int(count)
        by_group[_group(leaf)] += int(count)
        total += int(count)
    if not total:
        return [], []
    return ([(name, 100.0 * c / total) for name, c in by_function.most_common(top)],
            [(name, 100.0 * c / total) for name, c in by_group.most_common(12)])


def update_readme(markdown: str, header: str) -> bool:
    if not README.exists():
        return False
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        return False
    before, rest = text.split(TABLE_START, 1)
    _, after = rest.split(TABLE_END, 1)
    README.write_text(f"{before}{TABLE_START}\n{header}\n\n{markdown}\n{TABLE_END}{after}")
    return True


async def run(args: argparse.Namespace) -> int:
    settings = scale(args)
    settings.results.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(settings.results / "streams", ignore_errors=True)  # never reuse old input
    for stale in settings.results.glob("*-profile.txt"):
        stale.unlink()
    chosen = args.only or [s for s in SCENARIOS if s not in OPT_IN]
    began = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {msg}", flush=True)

    info = machine()
    log(f"machine: {info['cpus']} CPUs, {info['cpu']}; {info['mosquitto']}; "
        f"load average {info['load_average'][0]:.2f}")
    measurements: list[Measurement] = []
    for name in SCENARIOS:
        if name not in chosen:
            continue
        func = {"stream": stream_bench.stream, "track": track_bench.track,
                "cluster": cluster_bench.cluster}.get(name) \
            or getattr(scenarios, name)
        if time.monotonic() - began > args.budget:
            log(f"{name}: skipped, the run has used its {args.budget:.0f} s budget")
            measurements.append(Measurement(name, "flespi-bridge", None, "",
                                            f"skipped: time budget ({args.budget:.0f} s) used"))
            continue
        try:
            measurements += await func(settings, log)
        except Exception as exc:  # one scenario failing must not hide the others
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            measurements.append(Measurement(name, "flespi-bridge", None, "",
                                            f"failed: {type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(settings.results / "streams", ignore_errors=True)
    elapsed = time.monotonic() - began
    vs = verdicts(measurements)
    text, md = tables(measurements, vs)
    profiles: dict[str, Any] = {}
    print()
    print(text)
    for which in ("ingest", "startup") if args.profile else ():
        functions, groups = profile_summary(settings.results / f"{which}-profile.txt")
        if not functions:
            continue
        profiles[which] = {
            "self_time_by_function": [{"function": f, "percent": round(p, 2)}
                                      for f, p in functions],
            "self_time_by_library": [{"library": g, "percent": round(p, 2)}
                                     for g, p in groups],
        }
        print(f"\nbridge self time during {which} (py-spy, % of samples), by function:")
        for fn, pct in functions:
            print(f"  {pct:5.1f}%  {fn}")
        print("by library / bridge module:")
        for group, pct in groups:
            print(f"  {pct:5.1f}%  {group}")
    print(f"\nbench finished in {elapsed:.0f} s")
    mode = ("quick" if args.quick else "full") + f", tcp-nodelay {args.tcp_nodelay}"
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "elapsed_s": round(elapsed, 1),
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in asdict(settings).items()},
        "measurements": [asdict(m) for m in measurements],
        "targets": vs,
        "profiles": profiles,
    }
    out = settings.results / "latest.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    command = shlex.join(["python", "-m", "bench",
                          *(a for a in args.argv if a != "--update-readme")])
    header = (f"Run of {doc['when']} (`{command}`, "
              f"commit {info['commit'] or '?'}, {elapsed:.0f} s): {info['cpus']} x "
              f"{info['cpu']}, Python {info['python']}, {info['mosquitto']}, "
              f"load average at start {info['load_average'][0]:.2f}. Brokers: Mosquitto's "
              f"defaults, except `set_tcp_nodelay true` where the third column says so.")
    (settings.results / "latest.md").write_text(header + "\n\n" + md + "\n")
    print(f"wrote {out} and {settings.results / 'latest.md'}")
    if args.update_readme:
        print("README table updated" if update_readme(md, header) else
              "README has no table markers: not updated")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="flespi-bridge benchmarks against baselines, on loopback Mosquitto brokers.",
    )
    p.add_argument("--quick", action="store_true", help="small scale (about 2 minutes)")
    p.add_argument("--only", nargs="+", choices=SCENARIOS,
                   help="run only these scenarios (cluster runs only when named)")
    p.add_argument("--messages", type=int,
                   help="device messages of ingest (each one publication per catalogue "
                   "parameter; default: as many as make 220,000 publications) and stream")
    p.add_argument("--devices", type=int, help="ingest: devices")
    p.add_argument("--startup-devices", type=fleet_sizes,
                   help="start-up: fleet sizes, comma-separated, each measured against its "
                        "own baseline (default 10000,40000; e.g. 10000,40000,100000)")
    p.add_argument("--cluster-devices", type=lambda text: fleet_sizes(text)[0],
                   help="cluster: the start-up fleet split over 4 shards (default 100000)")
    p.add_argument("--latency-seconds", type=float, help="latency: measured seconds")
    p.add_argument("--commands", type=int, help="command round trips to measure")
    p.add_argument("--command-payload", help='JSON for <base>/<id>/set (default '
                   '{"command": "restart"}; a "transaction" is added)')
    p.add_argument("--track-days", type=float,
                   help="track: the long range in days, against one day (default 30, 3 with "
                        "--quick)")
    p.add_argument("--track-formats", nargs="+", choices=track_bench.FORMATS,
                   help="track: only these formats (default all)")
    p.add_argument("--bridge-extra", type=Path,
                   help="TOML merged into every bridge configuration (the benchmark's "
                        "connection settings win)")
    p.add_argument("--profile", action="store_true",
                   help="also run the bridge's ingest under py-spy and list its hot spots")
    p.add_argument("--tcp-nodelay", choices=("upstream", "all", "none"), default="upstream",
                   help="which Mosquitto brokers run with `set_tcp_nodelay true` (Mosquitto's "
                        "default is false, Nagle's algorithm on): the flespi stand-in only "
                        "(default), all, or none; the command scenario also runs once more "
                        "with `all`")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds after which remaining scenarios are skipped (default 480, "
                        "so that a slow run still ends within 10 minutes)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--update-readme", action="store_true",
                   help="replace the table in bench/README.md with this run's")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
