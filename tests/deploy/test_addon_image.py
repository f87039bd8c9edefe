"""The Home Assistant add-on's image, built from a wheel of this repository and run as the
Supervisor runs it: a stand-in Supervisor answers its `services/mqtt` with a real Mosquitto,
the project's simulator plays flespi behind `mqtt.flespi.io:8883` with TLS (the add-on's own
flespi defaults, which its options cannot change), and the add-on starts, reports the wheel's
version, publishes every simulated device with its Home Assistant discovery, answers the
Supervisor's watchdog on /healthz, and stops within the Supervisor's timeout with offline
published.

What differs from Home Assistant (docs/deployment.md, "The add-on's image in CI"):
- The base: Home Assistant's `ghcr.io/home-assistant/*-base-python` (Alpine) is out of reach,
  so BUILD_FROM is a stand-in built from Debian packages (Debian's Python 3.11 in a virtualenv
  that provides `python3` and `pip` as the Alpine base does; no s6-overlay or bashio, which
  the add-on bypasses: `ENTRYPOINT []` and `init: true`).
- The Supervisor: SUPERVISOR_URL points the add-on at the stand-in (the real one is
  `http://supervisor` on the add-on network); /data/options.json is written as the Supervisor
  writes it (the options validated against config.yaml's schema, tests/support/supervisor_
  schema.py); `docker run --init` is config.yaml's `init: true`.
- The network: --network host (the only network the CI engine has), so the add-on's
  metrics listener (9871) and the simulated flespi (127.0.0.1:8883) take fixed ports,
  checked free first; the metrics listener is kept on loopback by the environment
  (FLESPI_BRIDGE_METRICS__HOST, over the add-on's 0.0.0.0, which its own network needs);
  mqtt.flespi.io and flespi.io resolve to 127.0.0.1 (--add-host) and SSL_CERT_FILE trusts
  the test's private CA.
- parameters = "all": with a *.flespi.io host the bridge subscribes with flespi's comma-list
  topic levels, which only flespi's broker expands; "all" subscribes with `+`.

Marked `image`: .ci/run runs it in its image step, after starting a Docker engine."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import REPO, supervisor_schema
from support.docker_engine import answering, base_images, docker, inspect, require_engine, wait_for
from support.helpers import (
    TOKEN,
    Brokers,
    Recorder,
    every_device_state,
    retained,
    server_certificate,
)
from support.supervisor_stand_in import supervisor

from bridge.homeassistant import addon
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

ADDON = REPO / "homeassistant-addon" / "flespi-bridge"
CONFIG = yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))
IMAGE = "flespi-bridge-addon:test-image"
BASE = "flespi-bridge-addon-base:debian-stand-in"
FLESPI_PORT = 8883  # the bridge's default flespi port, which the add-on keeps
SUPERVISOR_TOKEN = "SupervisorTokenOfTheAddon0123456789"
# The stand-in base: Debian's Python in a virtualenv first on PATH, so `python3` and `pip`
# are what the add-on's Dockerfile calls, as on Home Assistant's Alpine Python base.
BASE_DOCKERFILE = """\
FROM {builder}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the add-on's wheels/README.md says to build, from this checkout."""
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           "--wheel-dir", str(out), str(REPO)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("flespi_bridge-*.whl")
    return built


@pytest.fixture(scope="module")
def image(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    require_engine()
    _, builder = base_images()
    started = time.monotonic()
    base_context = tmp_path_factory.mktemp("addon-base")
    (base_context / "Dockerfile").write_text(BASE_DOCKERFILE.format(builder=builder),
                                             encoding="utf-8")
    docker("build", "--network", "host", "-t", BASE, str(base_context), timeout=600)
    # The add-on's folder as the Supervisor builds it, with the wheel in wheels/.
    context = tmp_path_factory.mktemp("addon") / "flespi-bridge"
    subprocess.run(["cp", "-r", str(ADDON), str(context)], check=True, timeout=60)
    (context / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    docker("build", "--network", "host", "--build-arg", f"BUILD_FROM={BASE}", "-t", IMAGE,
           str(context), timeout=1800)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\nadd-on image {IMAGE} ({wheel.name}): {size / 1e6:.0f} MB, "
          f"built in {time.monotonic() - started:.0f} s")
    return IMAGE


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def options() -> dict[str, Any]:
    """/data/options.json as the Supervisor writes it: config.yaml's defaults with the user's
    token (and parameters, see the module docstring), validated against its schema."""
    return supervisor_schema.validate_options(
        CONFIG["schema"], {**CONFIG["options"], "token": TOKEN, "parameters": "all"})


async def test_the_addon_runs_from_the_repository_wheel(image: str, wheel: Path,
                                                        brokers: Brokers,
                                                        tmp_path: Path) -> None:
    for port in (FLESPI_PORT, addon.METRICS_PORT):
        assert not port_taken(port), f"127.0.0.1:{port} is taken: the add-on test needs it"
    ca, cert_file, key_file = server_certificate(tmp_path, host="mqtt.flespi.io")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # flespi: the simulator publishes on the plain listener, the add-on reads the TLS one.
    upstream = brokers(extra_config=(*mosquitto.FLESPI_LIKE,
                                     f"listener {FLESPI_PORT} 127.0.0.1",
                                     f"certfile {cert_file}", f"keyfile {key_file}"))
    local = brokers()  # the Mosquitto broker add-on
    data = tmp_path / "data"
    data.mkdir()
    (data / "options.json").write_text(json.dumps(options()), encoding="utf-8")
    service = {"host": "127.0.0.1", "port": local.port, "ssl": False, "protocol": "3.1.1",
               "username": "addons", "password": "Supervisor-Generated-Pw"}
    sim = Simulator(upstream.host, upstream.port, devices=2, seed=11)
    name = f"flespi-bridge-addon-test-{uuid.uuid4().hex[:8]}"
    await sim.start()
    try:
        with supervisor(service) as stand_in:
            async with Recorder(local, ["flespi/#", "homeassistant/#"]) as rec:
                docker("run", "-d", "--name", name, "--network", "host", "--init",
                       "--add-host", "mqtt.flespi.io:127.0.0.1",
                       "--add-host", "flespi.io:127.0.0.1",
                       "-v", f"{data}:/data", "-v", f"{ca_file}:/etc/test-ca.pem:ro",
                       "-e", "SSL_CERT_FILE=/etc/test-ca.pem",
                       "-e", f"SUPERVISOR_TOKEN={SUPERVISOR_TOKEN}",
                       "-e", "FLESPI_BRIDGE_METRICS__HOST=127.0.0.1",
                       "-e", f"SUPERVISOR_URL={stand_in.url}", image)
                try:
                    await check_the_addon(name, wheel, sim, rec, local)
                    assert stand_in.seen == [f"Bearer {SUPERVISOR_TOKEN}"]
                except BaseException:
                    print(docker("logs", name, check=False).stderr[-5000:])
                    raise
                finally:
                    logs = docker("logs", name, check=False)
                    docker("rm", "-f", name, check=False)
                assert TOKEN not in logs.stdout + logs.stderr
    finally:
        await sim.stop()


async def check_the_addon(name: str, wheel: Path, sim: Simulator, rec: Recorder,
                          local: mosquitto.Broker) -> None:
    # The Supervisor's watchdog (config.yaml) polls /healthz.
    await wait_for(answering(name, f"http://127.0.0.1:{addon.METRICS_PORT}/healthz"),
                   "the watchdog's /healthz", timeout=90)
    # Every simulated device: its state, and its Home Assistant device.
    await every_device_state(rec, sim, timeout=60)
    for device_id in sim.devices:
        topic = f"homeassistant/device/flespi/flespi_{device_id}/config"
        config = await rec.wait_for(functools.partial(rec.latest.get, topic), timeout=30,
                                    what=f"discovery of device {device_id}")
        # The add-on's default command profiles: the scooter's lock is there.
        platforms = {c["p"] for c in json.loads(config.payload)["cmps"].values()}
        assert "lock" in platforms, platforms
    # The bridge in the add-on is the repository's wheel, not a release from PyPI.
    version = wheel.name.split("-")[1]
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{addon.METRICS_PORT}/metrics",
                                    timeout=5)).text
    assert f'flespi_bridge_build_info{{version="{version}"}} 1.0' in metrics
    # The Supervisor stops an add-on with `docker stop -t <timeout>`.
    started = time.monotonic()
    await asyncio.to_thread(docker, "stop", "-t", str(CONFIG["timeout"]), name,
                            timeout=CONFIG["timeout"] + 30)
    assert inspect(name, "{{.State.ExitCode}}") == "0"
    assert time.monotonic() - started < CONFIG["timeout"]
    assert (await retained(local, ["flespi/bridge/state"])) == {
        "flespi/bridge/state": b"offline"}
