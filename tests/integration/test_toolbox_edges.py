"""The toolbox as a newcomer meets it: errors that name the URL, relative times that look like
options, output cut short by `| head`, export counts that match the file, the telemetry table
sorted with units, and a parameter the device does not report said so."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tomli_w
from support.helpers import PYTHON, TOKEN, bridge_env
from support.toolbox_helpers import Api, cli, hours_ago, start_api

from bridge.sim import brokers as mosquitto


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a


@pytest.fixture
async def vans(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path, kind="vans"):
        yield a


def test_a_rest_error_names_the_url(tmp_path: Path) -> None:
    port = mosquitto.free_port()  # nothing listens there
    conf = tmp_path / "config.toml"
    conf.write_text(tomli_w.dumps({"flespi": {"token": TOKEN},
                                   "commands": {"http_url": f"http://127.0.0.1:{port}"}}))
    result = subprocess.run([PYTHON, "-m", "bridge", "telemetry", "1", "--config", str(conf)],
                            capture_output=True, text=True, env=bridge_env(), timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: cannot reach flespi REST at http://127.0.0.1:{port}: "), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert TOKEN not in result.stderr


async def test_relative_times_with_a_minus_are_values_not_options(api: Api) -> None:
    run = await cli(api, "track", str(api.device), "--from", "-2h", "--to", "-1h",
                    "--summary")
    assert run.code == 0, run.err
    assert run.out.splitlines()[0].split()[:2] == ["trip", "start"]


async def test_output_cut_short_by_head_is_not_an_error(api: Api) -> None:
    start = int(hours_ago(6))
    command = (f"{PYTHON} -m bridge track {api.device} --from {start} --to {start + 6 * 3600} "
               f"--format csv --config {api.config} | head -n 3")
    proc = await asyncio.create_subprocess_exec(  # the REST API answers on this loop
        "bash", "-o", "pipefail", "-c", command, env=bridge_env(), cwd=api.tmp,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert len(out.decode().splitlines()) == 3
    assert err.decode() == ""
    assert proc.returncode == 141  # as `yes | head` under pipefail: ended by SIGPIPE


async def test_the_export_line_counts_what_the_file_holds(api: Api) -> None:
    start = int(hours_ago(3))
    run = await cli(api, "track", str(api.device), "--from", str(start), "--to",
                    str(start + 3 * 3600), "--format", "geojson", "-o", "trips.geojson")
    assert run.code == 0, run.err
    doc = json.loads((api.tmp / "trips.geojson").read_text())
    lines = [f for f in doc["features"] if f["geometry"]["type"] == "LineString"]
    held = sum(len(f["geometry"]["coordinates"]) for f in lines)
    assert run.err.startswith(f"trips.geojson: {len(lines)} trip(s) of {held} points ("), run.err


async def test_telemetry_is_sorted_with_units_and_says_what_is_not_reported(
        vans: Api) -> None:
    run = await cli(vans, "telemetry", str(vans.device), "position", "battery.level",
                    "engine.ignition.status")
    assert run.code == 0, run.err
    rows = [line.split() for line in run.out.splitlines()[2:]]
    names = [row[0] for row in rows if "(not" not in " ".join(row)]
    assert names == sorted(names)
    assert names, run.out
    assert ["speed", rows[names.index("speed")][1], "km/h"] == rows[names.index("speed")][:3]
    assert any(row[0] == "battery.level" and "(not reported by this device)" in " ".join(row)
               for row in rows), run.out

