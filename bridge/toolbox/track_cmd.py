"""`flespi-bridge track`: a device's history as GPX, GeoJSON, KML, CSV, PNG or HTML, split
into trips, with `--summary`. Streams page by page to the output file."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from bridge.config import settings as config
from bridge.toolbox import common, points
from bridge.toolbox.client import FlespiClient
from bridge.toolbox.formats import BINARY, FORMATS, TrackInfo, writer
from bridge.toolbox.progress import Progress
from bridge.toolbox.summary import Tee, table
from bridge.toolbox.timeparse import parse_time
from bridge.toolbox.trips import TripOptions, TripSplitter


def add_parser(sub: Any, with_config: Any) -> None:
    p = sub.add_parser("track", help="export a device's track (gpx, geojson, kml, csv, png, "
                       "html) and its trips")
    with_config(p)
    p.add_argument("device", type=int, help="flespi device id")
    p.add_argument("--from", dest="start", default="-24h",
                   help="ISO 8601, Unix seconds, now, today, yesterday or -24h/-30m/-7d "
                        "(default -24h)")
    p.add_argument("--to", dest="end", default="now", help="same forms (default now)")
    p.add_argument("--format", "-f", choices=FORMATS, help="output format")
    p.add_argument("-o", "--output", type=Path, help="output file (default: standard output; "
                   "png needs a file)")
    p.add_argument("--summary", action="store_true",
                   help="print each trip's start, end, duration, distance, max and avg speed")
    p.add_argument("--param", action="append", default=[], metavar="NAME",
                   help="flespi parameter to add as a CSV column (repeatable)")
    p.add_argument("--min-stop", type=float, default=300, help="seconds stopped that end a "
                   "trip (default 300)")
    p.add_argument("--max-gap", type=float, default=600, help="seconds without a message "
                   "that end a trip (default 600)")
    p.add_argument("--min-speed", type=float, default=3, help="km/h below which the device "
                   "is stopped (default 3)")
    p.add_argument("--ignition-param", default=points.IGNITION,
                   help=f"parameter whose false ends a trip (default {points.IGNITION})")
    p.set_defaults(func=cmd_track)


def cmd_track(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        start, end = parse_time(args.start, now), parse_time(args.end, now)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return common.EXIT_USAGE
    if end <= start:
        print("error: --to must be after --from", file=sys.stderr)
        return common.EXIT_USAGE
    if args.format is None and not args.summary:
        print("error: give --format, --summary or both", file=sys.stderr)
        return common.EXIT_USAGE
    if args.format in BINARY and args.output is None:
        print(f"error: {args.format} needs an output file (-o)", file=sys.stderr)
        return common.EXIT_USAGE

    async def main(settings: config.Settings, rest: FlespiClient) -> int:
        return await export(args, rest, start, end)

    return common.run(args, main)


async def _device_name(rest: FlespiClient, device_id: int) -> str:
    result = await rest.get(f"gw/devices/{device_id}", {"fields": "id,name"})
    if isinstance(result, list) and result and isinstance(result[0], dict):
        return str(result[0].get("name") or device_id)
    return str(device_id)


@contextlib.contextmanager
def _output(path: Path | None, binary: bool) -> Any:
    """The output stream; a file is written beside its target and renamed when complete."""
    if path is None:
        yield sys.stdout
        return
    part = path.with_name(path.name + ".part")
    try:
        with (open(part, "wb") if binary else open(part, "w", encoding="utf-8", newline="")
              ) as f:
            yield f
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


async def export(args: argparse.Namespace, rest: FlespiClient, start: float, end: float) -> int:
    params = tuple(args.param)
    info = TrackInfo(args.device, await _device_name(rest, args.device), start, end, params)
    options = TripOptions(args.min_speed, args.min_stop, args.max_gap)
    summary_out = sys.stderr if args.format and args.output is None else sys.stdout
    with _output(args.output if args.format else None, args.format in BINARY) as out:
        stream: IO[Any] = out
        sinks = [writer(args.format, stream, info)] if args.format else []
        tee = Tee(*sinks)
        splitter = TripSplitter(tee, options)
        progress = Progress(start, end)
        try:
            async for message in rest.messages(args.device, start, end,
                                               points.fields(params, args.ignition_param)):
                point = points.point(message, params, args.ignition_param)
                if point is not None:
                    progress.update(point.ts)
                    splitter.feed(point)
            splitter.close()
        finally:
            progress.close()
        for sink in sinks:
            sink.close()
    if args.summary:
        print(table(tee.summaries), end="", file=summary_out)
    if args.output is not None:
        print(f"{args.output}: {len(tee.summaries)} trip(s) of {tee.trip_points} points "
              f"({tee.points} points in the range)", file=sys.stderr)
    return 0
