"""`flespi-bridge track` end to end against the simulator's REST API: every format checked
by its own rules (GPX against the GPX 1.1 XSD, GeoJSON by RFC 7946, KML parsed back, the
PNG as an image, the HTML map parsed), trips, paging and retried 429/5xx answers."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import itertools
import json
import math
import re
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import xmlschema
from PIL import Image
from support import REPO
from support.helpers import PYTHON, TOKEN, bridge_env
from support.toolbox_helpers import Api, cli, hours_ago, start_api

from bridge.sim import brokers as mosquitto
from bridge.sim import history, van_history
from bridge.toolbox.client import FlespiClient
from bridge.toolbox.timeparse import iso

SCHEMA = REPO / "tests" / "support" / "schemas" / "gpx-1.1.xsd"
GPX_NS = "{http://www.topografix.com/GPX/1/1}"
KML_NS = "{http://www.opengis.net/kml/2.2}"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a


def _range(hours: int = 3) -> tuple[str, str]:
    start = hours_ago(hours + 1)
    return str(int(start)), str(int(start + hours * 3600))


def _expected_positions(api: Api, start: str, end: str) -> list[dict[str, float]]:
    return _expected_positions_of(api, api.device, start, end)


def _expected_positions_of(api: Api, device: int, start: str, end: str
                           ) -> list[dict[str, Any]]:
    dev = api.sim.devices[device]
    return list(history.messages(api.sim.fleet, dev, float(start), float(end)))


async def test_gpx_validates_against_the_gpx_1_1_schema(api: Api) -> None:
    start, end = _range(3)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "gpx", "-o", "out.gpx", "--summary")
    assert run.code == 0, run.err
    text = (api.tmp / "out.gpx").read_text()
    xmlschema.XMLSchema(str(SCHEMA)).validate(text)  # raises on any violation
    root = ET.fromstring(text)
    segments = root.findall(f"{GPX_NS}trk/{GPX_NS}trkseg")
    assert len(segments) == 3  # the simulator rides once an hour
    summary = [line for line in run.out.splitlines() if line[:1].isdigit()]
    assert len(summary) == 3
    moving = [m for m in _expected_positions(api, start, end) if m["position.speed"] > 0]
    points = [p for s in segments for p in s.findall(f"{GPX_NS}trkpt")]
    assert len(points) == len(moving) + len(segments)  # each ride and its arrival
    first = moving[0]
    assert float(points[0].get("lat", "")) == pytest.approx(first["position.latitude"])
    assert float(points[0].get("lon", "")) == pytest.approx(first["position.longitude"])
    assert "scooter-001" in text  # the device's name from the REST device object


async def test_geojson_follows_rfc_7946(api: Api) -> None:
    start, end = _range(2)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "geojson")
    assert run.code == 0, run.err
    doc = json.loads(run.out)  # standard output, one closed JSON document
    assert doc["type"] == "FeatureCollection"
    assert "crs" not in doc
    assert len(doc["features"]) == 2
    moving = [m for m in _expected_positions(api, start, end) if m["position.speed"] > 0]
    coords = []
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] == "LineString"
        assert len(geometry["coordinates"]) >= 2
        for position in geometry["coordinates"]:
            assert len(position) in (2, 3)
            lon, lat = position[0], position[1]
            assert -180 <= lon <= 180
            assert -90 <= lat <= 90
        coords += geometry["coordinates"]
        props = feature["properties"]
        assert {"trip", "start", "end", "distance_m", "max_speed_kmh", "avg_speed_kmh"} \
            <= props.keys()
        assert 8 <= props["max_speed_kmh"] <= 25
    # longitude first: Santa Cruz is at longitude -63, latitude -17
    assert coords[0][:2] == pytest.approx([moving[0]["position.longitude"],
                                           moving[0]["position.latitude"]])
    assert all(-64 < c[0] < -63 and -18 < c[1] < -17 for c in coords)


async def test_kml_parses_back(api: Api) -> None:
    start, end = _range(2)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "kml", "-o", "out.kml")
    assert run.code == 0, run.err
    root = ET.parse(api.tmp / "out.kml").getroot()
    assert root.tag == f"{KML_NS}kml"
    lines = root.findall(f".//{KML_NS}LineString/{KML_NS}coordinates")
    assert len(lines) == 2
    moving = [m for m in _expected_positions(api, start, end) if m["position.speed"] > 0]
    first = (lines[0].text or "").split()[0].split(",")
    assert float(first[0]) == pytest.approx(moving[0]["position.longitude"])
    assert float(first[1]) == pytest.approx(moving[0]["position.latitude"])
    names = [n.text for n in root.iter(f"{KML_NS}name")]
    assert "Trip 1 start" in names
    assert "Trip 2 end" in names


async def test_csv_has_every_positioned_point_and_chosen_parameters(api: Api) -> None:
    start, end = _range(1)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "csv", "--param", "battery.level", "-o", "out.csv")
    assert run.code == 0, run.err
    rows = list(csv.DictReader(io.StringIO((api.tmp / "out.csv").read_text())))
    expected = _expected_positions(api, start, end)
    assert len(rows) == len(expected)
    assert list(rows[0]) == ["timestamp", "latitude", "longitude", "altitude", "speed",
                             "trip", "battery.level"]
    assert [float(r["latitude"]) for r in rows] == [m["position.latitude"] for m in expected]
    assert rows[0]["battery.level"] == str(expected[0]["battery.level"])
    assert {r["trip"] for r in rows} == {"", "1"}


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    data = image.convert("RGB").tobytes()
    return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def _saturated(image: Image.Image) -> int:
    """Pixels of strong colour (the path, the markers), not black/white/grey text."""
    return sum(1 for r, g, b in _pixels(image) if max(r, g, b) - min(r, g, b) > 80)


async def test_png_is_an_image_of_the_expected_size_with_the_path_drawn(api: Api) -> None:
    start, end = _range(1)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "png", "-o", "out.png")
    assert run.code == 0, run.err
    # a minute with the scooter parked: its hourly ride ends by 3,000 s into the hour
    # (bridge.sim.history), so this minute never holds a trip whatever the clock says
    quiet = int(start) // 3600 * 3600 + 3300
    empty = await cli(api, "track", str(api.device), "--from", str(quiet), "--to",
                      str(quiet + 60), "--format", "png", "-o", "empty.png")
    assert empty.code == 0, empty.err
    with Image.open(api.tmp / "out.png") as image, Image.open(api.tmp / "empty.png") as blank:
        assert image.format == "PNG"
        assert image.size == (1200, 800)
        assert blank.size == (1200, 800)
        # the colour bar alone is ~12,000 pixels; the path and markers add thousands more
        drawn, base = _saturated(image), _saturated(blank)
        assert base < 1000 < drawn - 12_000
        assert (0, 160, 0) in _pixels(image)  # the start marker's green


class _MapParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


async def test_html_map_has_a_layer_and_popups_per_trip(api: Api) -> None:
    start, end = _range(2)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "html", "-o", "map.html")
    assert run.code == 0, run.err
    parser = _MapParser()
    parser.feed((api.tmp / "map.html").read_text())
    script = "\n".join(parser.scripts)
    assert len(re.findall(r"L\.featureGroup\(", script)) == 2
    assert "L.control.layers" in script
    assert '"Trip 1" :' in script  # a layer each
    assert '"Trip 2" :' in script
    assert "bindPopup" in script
    collections = map_data(script)
    assert len(collections) == 2
    for trip, data in enumerate(collections, 1):
        kinds = [f["properties"]["kind"] for f in data["features"]]
        assert kinds == ["path", "start", "end"]
        path, start, end = data["features"]
        assert f"Trip {trip}:" in path["properties"]["summary"]
        assert "km/h" in path["properties"]["summary"]
        line = path["geometry"]["coordinates"]
        assert start["geometry"]["coordinates"] == line[0]
        assert end["geometry"]["coordinates"] == line[-1]
    lon, lat = collections[0]["features"][0]["geometry"]["coordinates"][0]
    assert -18 < lat < -17  # GeoJSON: longitude first
    assert -64 < lon < -63


def map_data(script: str) -> list[dict[str, Any]]:
    """The GeoJSON collections folium adds to the map's layers, in order."""
    return [json.loads(m) for m in re.findall(r"geo_json_\w+_add\((\{.*\})\);", script)]


async def test_large_ranges_are_paged_without_loss_or_duplicates(api: Api) -> None:
    api.responder.tools.max_count = 250
    start, end = _range(2)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "csv", "-o", "out.csv")
    assert run.code == 0, run.err
    expected = _expected_positions(api, start, end)
    rows = list(csv.DictReader(io.StringIO((api.tmp / "out.csv").read_text())))
    assert [r["timestamp"] for r in rows] == [iso(m["timestamp"]) for m in expected]
    pages = [r for r in api.responder.requests if r.uri.endswith("/messages")]
    assert len(expected) > 500
    assert len(pages) in (math.ceil(len(expected) / 250), math.ceil(len(expected) / 250) + 1)
    froms = [json.loads(r.query["data"])["from"] for r in pages]
    assert froms == sorted(froms)
    assert len(set(froms)) == len(froms)


async def test_429_and_5xx_are_retried_with_backoff(api: Api) -> None:
    api.responder.fail_queue.extend([(429, "too many requests"), (503, "busy"),
                                     (429, "too many requests")])
    start, end = _range(1)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--summary")
    assert run.code == 0, run.err
    assert not api.responder.fail_queue
    assert len([line for line in run.out.splitlines() if line[:1].isdigit()]) == 1
    assert len(api.responder.requests) == 5  # 3 refused, then the device and its messages


async def test_errors_name_the_problem_never_the_token(api: Api) -> None:
    api.responder.fail_queue.extend([(500, "internal")] * 6)
    start, end = _range(1)
    run = await cli(api, "track", str(api.device), "--from", start, "--to", end,
                    "--format", "gpx", "-o", "out.gpx")
    assert run.code == 1
    assert "flespi answered 500: internal" in run.err
    assert not (api.tmp / "out.gpx").exists()
    assert not (api.tmp / "out.gpx.part").exists()
    api.responder.token = "another-token"
    run = await cli(api, "track", str(api.device), "--summary")
    assert run.code == 1
    assert "401" in run.err
    assert TOKEN not in run.out + run.err


async def test_relative_times_and_bad_times(api: Api) -> None:
    run = await cli(api, "track", str(api.device), "--from=-2h", "--summary")
    assert run.code == 0, run.err
    data = json.loads(next(r for r in api.responder.requests
                           if r.uri.endswith("/messages")).query["data"])
    assert data["to"] - data["from"] == pytest.approx(7200, abs=5)
    assert "position.latitude" in data["fields"]
    assert data["count"] == 5000  # flespi's page size; messages know no `limit`
    bad = await cli(api, "track", str(api.device), "--from", "last tuesday", "--summary")
    assert bad.code == 2
    assert "bad time" in bad.err


@pytest.fixture
async def vans(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path, kind="mixed"):
        yield a


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


async def test_a_vans_track_is_its_own_and_splits_on_ignition_off(vans: Api) -> None:
    van = next(d for d in vans.sim.devices.values() if d.profile == "van")
    day = (math.floor(time.time() / 86400) - 1) * 86400  # yesterday, UTC
    # parked until 12:00 UTC, then three working hours of drives and short parks
    start, end = str(int(day + 11.5 * 3600)), str(int(day + 15 * 3600))
    expected = _expected_positions_of(vans, van.id, start, end)
    ignition = [m["engine.ignition.status"] for m in expected]
    drives = sum(1 for a, b in itertools.pairwise(ignition) if b and not a)
    assert drives >= 5
    # every park is shorter than --min-stop here: only ignition off ends a trip
    args = ("track", str(van.id), "--from", start, "--to", end, "--min-stop", "3000")
    run = await cli(vans, *args, "--format", "csv", "--param", "vehicle.mileage",
                    "--param", "fuel.level", "-o", "van.csv", "--summary")
    assert run.code == 0, run.err
    summary = [line.split() for line in run.out.splitlines() if line[:1].isdigit()]
    assert len(summary) == drives
    rows = _rows(vans.tmp / "van.csv")
    assert len(rows) == len(expected)
    # the van's flat keys, from its model: the odometer never goes back, and each trip's
    # haversine distance is what the odometer counted over it
    mileage = [float(r["vehicle.mileage"]) for r in rows]
    assert mileage == sorted(mileage)
    assert mileage[-1] - mileage[0] == pytest.approx(3 * van_history.HOUR_KM, abs=0.01)
    assert all(0 < float(r["fuel.level"]) <= 100 for r in rows)
    for trip, line in enumerate(summary, 1):
        odometer = [m for r, m in zip(rows, mileage, strict=True) if r["trip"] == str(trip)]
        assert float(line[4]) == pytest.approx(odometer[-1] - odometer[0], rel=0.01, abs=0.02)
    # without an ignition parameter the short parks stay inside one long trip
    merged = await cli(vans, *args, "--ignition-param", "no.such.parameter", "--summary")
    assert merged.code == 0, merged.err
    assert len([line for line in merged.out.splitlines() if line[:1].isdigit()]) == 1
    # a scooter of the same fleet still rides its own model
    scooter = next(d for d in vans.sim.devices.values() if d.profile == "scooter")
    assert "lock.status" in _expected_positions_of(vans, scooter.id, start, end)[0]
    assert "lock.status" not in expected[0]


async def _peak_while_paging(api: Api, seconds: float) -> tuple[int, int]:
    """(messages, peak bytes allocated) while `FlespiClient.messages` pages through
    `seconds` of 1-second history (the server runs in this process too: one page at a
    time), with the cyclic garbage collector off: a long export may go a long while without
    a full collection, so nothing of a page may wait for one."""
    end = hours_ago(1)
    count = 0
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        async with FlespiClient(api.url, TOKEN) as rest:
            async for _ in rest.messages(api.device, end - seconds, end, page=1000):
                count += 1
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.enable()


async def test_paging_keeps_one_page_in_memory_whatever_the_range(api: Api) -> None:
    api.responder.tools.history_period = 1.0
    api.responder.tools.max_count = 1000
    short, short_peak = await _peak_while_paging(api, 3_000)
    long, long_peak = await _peak_while_paging(api, 15_000)
    assert (short, long) == (3_001, 15_001)
    assert long_peak < short_peak + 1_000_000  # five times the pages, the same peak


async def test_simulate_serves_the_tools_a_fleet_to_try_them_on(
        upstream: mosquitto.Broker, tmp_path: Path) -> None:
    """`simulate --rest-port`: what a user runs to try `track` without a flespi account."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bridge", "simulate", "--broker", f"127.0.0.1:{upstream.port}",
        "--devices", "2", "--fleet", "vans", "--rate", "1", "--rest-port", "0",
        env=bridge_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "simulate ended without serving REST"
            found = re.match(r"REST API on (http://127\.0\.0\.1:\d+) ", line)
            url = found.group(1) if found else ""
        config = tmp_path / "config.toml"
        config.write_text(tomli_w.dumps({"flespi": {"token": TOKEN},
                                           "commands": {"http_url": url}}))
        day = (math.floor(time.time() / 86400) - 1) * 86400
        track = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "bridge", "track", "5537000", "--from", str(day + 12 * 3600),
            "--to", str(day + 13 * 3600), "--summary", "--config", str(config),
            env=bridge_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(track.communicate(), 60)
        assert track.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        assert 2 <= len([line for line in lines if line[:1].isdigit()]) <= 4  # its drives
        assert lines[-1].split()[:1] == ["total"]
        # the hour's distance, less each drive's last 10 s (a trip ends at its last point
        # with the ignition on)
        assert float(lines[-1].split()[2]) == pytest.approx(van_history.HOUR_KM, rel=0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
