"""The Docker image, built and run: against a real Mosquitto and the simulator as flespi, the
container becomes ready, publishes every device's state, runs as uid 10001 on a read-only root
filesystem, Docker's own HEALTHCHECK turns healthy, and `docker stop` ends it within the
grace period with `offline` published.

Marked `image` (minutes on a vfs-backed engine): `python -m pytest -m image`, which .ci/run
runs after starting a Docker engine. Without a reachable engine the test fails and says why;
it never skips. The base is the Dockerfile's default (python:3.11.13-slim-bookworm) when it can
be pulled, else an equivalent built from Debian packages by tools/debian-python-base."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import pytest
from support import REPO
from support.docker_engine import (
    answering,
    base_images,
    checkout_version,
    docker,
    inspect,
    require_engine,
    wait_for,
)
from support.helpers import TOKEN, Brokers, Recorder, every_device_state, retained

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

# Building on vfs takes minutes: the build (in the fixture) counts toward the timeout.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

IMAGE = "flespi-bridge:test-image"
GRACE = 5.0  # the bridge's shutdown.grace in the container
STOP_TIMEOUT = 15  # docker stop -t: SIGKILL only after this


@pytest.fixture(scope="module")
def image() -> str:
    require_engine()
    base, builder = base_images()
    started = time.monotonic()
    docker("build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base}",
           "--build-arg", f"BUILDER_IMAGE={builder}", "--build-arg",
           f"VERSION={checkout_version()}", "-t", IMAGE, str(REPO), timeout=1800)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\nimage {IMAGE} on {base}: {size / 1e6:.0f} MB, "
          f"built in {time.monotonic() - started:.0f} s")
    assert size < 200e6, f"the image grew to {size / 1e6:.0f} MB"
    return IMAGE


def test_image_says_its_version(image: str) -> None:
    version = docker("run", "--rm", "--network", "host", "--entrypoint", "flespi-bridge", image,
                     "--version").stdout
    assert version == f"flespi-bridge {checkout_version()}\n"
    assert inspect(image, '{{index .Config.Labels "org.opencontainers.image.version"}}') == (
        checkout_version())


async def test_image_runs_the_bridge(image: str, brokers: Brokers, tmp_path: Path) -> None:
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE)
    local = brokers()
    metrics_port = mosquitto.free_port()
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[flespi]\nhost = "127.0.0.1"\nport = {upstream.port}\ntls = false\n'
        f'[local]\nhost = "127.0.0.1"\nport = {local.port}\n'
        f"[shutdown]\ngrace = {GRACE}\n", encoding="utf-8")
    config_file.chmod(0o644)  # read by uid 10001 in the container
    name = f"flespi-bridge-test-{uuid.uuid4().hex[:8]}"
    sim = Simulator(upstream.host, upstream.port, devices=3, seed=7)
    await sim.start()
    try:
        async with Recorder(local, ["flespi/#"]) as rec:
            docker("run", "-d", "--name", name, "--network", "host", "--read-only",
                   "-v", f"{config_file}:/config/config.toml:ro",
                   "-e", f"FLESPI_BRIDGE_FLESPI__TOKEN={TOKEN}",
                   # loopback only (host network): the image's default binds 0.0.0.0
                   "-e", "FLESPI_BRIDGE_METRICS__HOST=127.0.0.1",
                   "-e", f"FLESPI_BRIDGE_METRICS__PORT={metrics_port}", image)
            try:
                await check_running_container(name, sim, rec, local, metrics_port)
            except BaseException:
                print(docker("logs", name, check=False).stderr[-5000:])
                raise
            finally:
                docker("rm", "-f", name, check=False)
    finally:
        await sim.stop()


def bridge_state(rec: Recorder) -> bytes | None:
    item = rec.latest.get("flespi/bridge/state")
    return item.payload if item else None


async def check_running_container(name: str, sim: Simulator, rec: Recorder,
                                  local: mosquitto.Broker, metrics_port: int) -> None:
    await wait_for(answering(name, f"http://127.0.0.1:{metrics_port}/readyz"),
                   "/readyz to answer 200", timeout=60)
    # Every simulated device's state arrives on the local broker.
    await every_device_state(rec, sim)
    await rec.wait_for(lambda: bridge_state(rec) == b"online", timeout=10, what="bridge online")

    # uid 10001: the image's USER, and the real process on the host.
    assert inspect(name, "{{.Config.User}}") == "10001:10001"
    pid = inspect(name, "{{.State.Pid}}")
    uids = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text, encoding="utf-8")
    assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", uids, re.M), uids
    # A read-only root filesystem: the flag, and a write refused.
    assert inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    write = docker("exec", name, "python", "-c", "open('/probe', 'w')", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr
    # Nothing of the builder stage (a build machine's CA, pip) reaches the runtime image.
    assert docker("exec", name, "sh", "-c", "test ! -e /etc/builder-ca.crt && "
                  "test ! -e /opt/venv/bin/pip && env | grep -c PIP_CERT",
                  check=False).stdout.strip() == "0"

    # Docker's HEALTHCHECK (the image's own command and timing) reports healthy.
    def healthy() -> bool:
        status = inspect(name, "{{.State.Health.Status}}")
        assert status != "unhealthy", inspect(name, "{{json .State.Health}}")
        return status == "healthy"

    await wait_for(healthy, "HEALTHCHECK healthy", timeout=90)
    log = json.loads(inspect(name, "{{json .State.Health.Log}}"))
    assert log
    assert log[-1]["ExitCode"] == 0

    # docker stop: SIGTERM, a graceful exit within the grace period, offline published.
    started = time.monotonic()
    await asyncio.to_thread(docker, "stop", "-t", str(STOP_TIMEOUT), name,
                            timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - started
    assert inspect(name, "{{.State.ExitCode}}") == "0", (
        f"exit code {inspect(name, '{{.State.ExitCode}}')} (137 = killed after the timeout)")
    assert took < GRACE + 3, f"docker stop took {took:.1f}s, grace is {GRACE}s"
    await rec.wait_for(lambda: bridge_state(rec) == b"offline", timeout=10,
                       what="offline on flespi/bridge/state")
    assert (await retained(local, ["flespi/bridge/state"])) == {
        "flespi/bridge/state": b"offline"}
