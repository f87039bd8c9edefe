"""The compose quick start brought up: compose.yaml with deploy/compose/debian.yaml (Mosquitto
and Prometheus built from Debian's packages; the bridge from the repository's Dockerfile) and
an override of the test's own for CI, the simulator playing flespi. The bridge publishes every
simulated device to the compose Mosquitto, Prometheus scrapes the bridge and loads the
project's alert rules. Grafana has no Debian package and Docker Hub is out of CI's reach, so
it is not started: test_release.py checks its provisioning against the files compose.yaml
mounts.

The override (written per run): every service on the host's network (`network_mode: host`,
the only network the CI engine has: no bridge network, no private address), on free loopback
ports; the bridge's configuration, Mosquitto's and Prometheus' are the repository's files
with only their addresses changed (and a 1-second scrape interval). docker-compose merges
the three files, the test drops the published ports (nothing to publish on the host's
network) and brings that up.

Marked `image`: .ci/run runs it in its image step, after starting a Docker engine."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import REPO
from support.docker_engine import base_images, checkout_version, require_engine, wait_for
from support.helpers import TOKEN, Brokers, Recorder, every_device_state

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

COMPOSE = REPO / "compose.yaml"
DEBIAN = REPO / "deploy" / "compose" / "debian.yaml"
SERVICES = ("bridge", "mosquitto", "prometheus")


def ci_override(tmp: Path, ports: dict[str, int], upstream: mosquitto.Broker) -> Path:
    """The CI override and the configuration files it mounts, in `tmp`."""
    base, builder = base_images()
    source = REPO / "deploy" / "compose"
    config = (source / "config.toml").read_text(encoding="utf-8")
    config = config.replace("[flespi]\n", f'[flespi]\nhost = "127.0.0.1"\n'
                            f"port = {upstream.port}\ntls = false\n")
    config = config.replace('host = "mosquitto"\nport = 1883',
                            f'host = "127.0.0.1"\nport = {ports["mqtt"]}')
    conf = (source / "mosquitto.conf").read_text(encoding="utf-8").replace(
        "listener 1883\n", f"listener {ports['mqtt']} 127.0.0.1\n")
    prometheus = (source / "prometheus.yml").read_text(encoding="utf-8").replace(
        "bridge:9871", f"127.0.0.1:{ports['metrics']}").replace(
        "scrape_interval: 15s", "scrape_interval: 1s")
    for name, text in (("config.toml", config), ("mosquitto.conf", conf),
                       ("prometheus.yml", prometheus)):
        assert text != (source / name).read_text(encoding="utf-8"), name
        (tmp / name).write_text(text, encoding="utf-8")
        (tmp / name).chmod(0o644)  # read by the containers' own users
    host: dict[str, Any] = {"network_mode": "host", "build": {"network": "host"}}
    override = {"services": {
        "bridge": {**host, "build": {"network": "host", "args": {
            "PYTHON_IMAGE": base, "BUILDER_IMAGE": builder, "VERSION": checkout_version()}},
            "environment": {"FLESPI_BRIDGE_METRICS__HOST": "127.0.0.1",
                            "FLESPI_BRIDGE_METRICS__PORT": str(ports["metrics"])},
            "volumes": [f"{tmp / 'config.toml'}:/config/config.toml:ro"]},
        "mosquitto": {**host, "volumes": [
            f"{tmp / 'mosquitto.conf'}:/mosquitto/config/mosquitto.conf:ro"]},
        "prometheus": {**host, "command": [
            "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}"], "volumes": [
            f"{tmp / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro"]},
        # Not started, but a service on compose's default network would make compose create
        # that network (a bridge with a private subnet) for the whole project.
        "grafana": {"network_mode": "host"},
    }}
    path = tmp / "ci.yaml"
    path.write_text(yaml.safe_dump(override), encoding="utf-8")
    return path


def compose(*args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "FLESPI_TOKEN": TOKEN,
           "DEBIAN_IMAGE": base_images()[0],
           **{k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}}
    proc = subprocess.run(["docker-compose", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker-compose {' '.join(args)}:\n{proc.stderr[-4000:]}"
    return proc


def merged(override: Path) -> Path:
    """compose.yaml + debian.yaml + the override as docker-compose merges them, less the
    published ports: on the host's network there is nothing to publish, and compose v1 (what
    Debian packages) refuses ports there and cannot drop them in an override."""
    config = yaml.safe_load(compose("-f", str(COMPOSE), "-f", str(DEBIAN), "-f", str(override),
                                    "config").stdout)
    # Every service on the host's network, or compose creates a bridge network first.
    assert {s.get("network_mode") for s in config["services"].values()} == {"host"}
    assert not config.get("networks"), config.get("networks")
    for service in config["services"].values():
        service.pop("ports", None)
    path = override.with_name("compose.ci.yaml")
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def test_the_quick_start_comes_up(brokers: Brokers, tmp_path: Path) -> None:
    require_engine()
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE)
    ports = {name: mosquitto.free_port() for name in ("mqtt", "metrics", "prometheus")}
    stack = ["-p", f"flespi-bridge-compose-{uuid.uuid4().hex[:8]}",
             "-f", str(merged(ci_override(tmp_path, ports, upstream)))]
    sim = Simulator(upstream.host, upstream.port, devices=2, seed=5)
    await sim.start()
    try:
        compose(*stack, "up", "-d", "--build", *SERVICES, timeout=1500)
        try:
            await check_the_stack(sim, ports)
        except BaseException:
            print(compose(*stack, "logs", "--tail", "40", check=False).stdout)
            raise
        finally:
            compose(*stack, "down", "--volumes", check=False)
    finally:
        await sim.stop()


async def check_the_stack(sim: Simulator, ports: dict[str, int]) -> None:
    # The bridge publishes every simulated device to the compose Mosquitto.
    broker = mosquitto.Broker(port=ports["mqtt"])  # only its address: started by compose
    async with Recorder(broker, ["flespi/#"]) as rec:
        await every_device_state(rec, sim, timeout=90)
    # Prometheus scrapes the bridge (its job, its metrics) and loads the alert rules.
    api = f"http://127.0.0.1:{ports['prometheus']}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        try:
            answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=5)
        except httpx.HTTPError:
            return []
        return list(answer.json()["data"]["result"]) if answer.status_code == 200 else []

    def scraped() -> bool:
        up = query('up{job="flespi-bridge"}')
        return bool(up) and up[0]["value"][1] == "1" and bool(
            query("flespi_bridge_build_info"))

    await wait_for(scraped, "Prometheus to scrape the bridge", timeout=90)
    (info,) = await asyncio.to_thread(query, "flespi_bridge_build_info")
    assert info["metric"]["version"] == checkout_version()
    async with httpx.AsyncClient() as client:
        groups = (await client.get(f"{api}/rules", timeout=5)).json()["data"]["groups"]
    alerts = yaml.safe_load((REPO / "monitoring" / "alerts.yml").read_text(encoding="utf-8"))
    assert {g["name"] for g in groups} == {g["name"] for g in alerts["groups"]}

