"""Metrics and health endpoints end to end: simulator -> upstream Mosquitto -> bridge, scraped
over HTTP on 127.0.0.1 the way Prometheus and Kubernetes probes do."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from support.helpers import BridgeFactory, Brokers, make_settings, poll

from bridge import __version__
from bridge.app.bridge import Bridge
from bridge.core.shards import shard_of
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

P = "flespi_bridge_"
BATTERY = P + "device_battery_percent"
ONLINE = P + "device_online"
LAST_SEEN = P + "device_last_seen_timestamp_seconds"
VOLTAGE = P + "device_voltage_volts"
SIGNAL = P + "device_signal_percent"
SPEED = P + "device_speed_meters_per_second"
SATELLITES = P + "device_satellites"
FLEET = (BATTERY, ONLINE, LAST_SEEN, VOLTAGE, SIGNAL, SPEED)
FLEET_PARAMETERS = ["voltage", "signal", "speed", "satellites"]
TIMEOUT = 30.0  # generous: two cores shared with other test runs


# --- scraping ---------------------------------------------------------------------------

@dataclass
class Scrape:
    text: str
    content_type: str
    # sample name -> {labels as sorted tuples: value}
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]]
    types: dict[str, str]  # family name as exposed -> type
    helps: dict[str, str]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get(name, {}).get(tuple(sorted(labels.items())))

    def number(self, name: str, **labels: str) -> float:
        """`value` of a sample that must be there."""
        value = self.value(name, **labels)
        assert value is not None, f"no sample {name}{labels}"
        return value

    def by_device(self, name: str) -> dict[int, float]:
        return {int(dict(key)["device_id"]): value
                for key, value in self.samples.get(name, {}).items()}

    def names(self, name: str) -> dict[int, str]:
        """device_id -> device_name of the series of `name`."""
        return {int(dict(key)["device_id"]): dict(key)["device_name"]
                for key in self.samples.get(name, {})}


def parse(text: str, content_type: str) -> Scrape:
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    return Scrape(text, content_type, samples, types, helps)


def url(bridge: Bridge, path: str) -> str:
    assert bridge.health is not None
    return f"http://127.0.0.1:{bridge.health.port}{path}"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def scrape(http: httpx.AsyncClient, bridge: Bridge) -> Scrape:
    response = await http.get(url(bridge, "/metrics"))
    assert response.status_code == 200
    return parse(response.text, response.headers["content-type"])


async def scrape_until(http: httpx.AsyncClient, bridge: Bridge,
                       predicate: Callable[[Scrape], Any], what: str,
                       timeout: float = TIMEOUT) -> Scrape:
    """Scrape (every 50 ms) until the predicate holds; the last scrape is in the error."""
    return await poll(lambda: scrape(http, bridge), predicate, timeout,
                      lambda last: f"{what}; last scrape:\n{last.text}")


async def status_until(http: httpx.AsyncClient, bridge: Bridge, path: str, status: int,
                       timeout: float = TIMEOUT) -> httpx.Response:
    return await poll(lambda: http.get(url(bridge, path)),
                      lambda response: response.status_code == status, timeout,
                      lambda last: f"{path} to answer {status} (last: {last.status_code})")


# --- what the fleet gauges must say, from the simulator's own telemetry ------------------

def expected_fleet(sim: Simulator) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {name: {} for name in (*FLEET, SATELLITES)}
    for device_id, dev in sim.devices.items():
        out[BATTERY][device_id] = dev.value("battery.level")
        out[ONLINE][device_id] = 1.0 if dev.connected else 0.0
        out[LAST_SEEN][device_id] = max(ts for _, ts in dev.telemetry.values())
        out[VOLTAGE][device_id] = dev.value("battery.voltage")
        out[SIGNAL][device_id] = dev.value("gsm.signal.level")
        out[SPEED][device_id] = dev.value("position.speed") / 3.6  # km/h -> m/s
        out[SATELLITES][device_id] = dev.value("position")["satellites"]
    return out


def fleet_matches(result: Scrape, sim: Simulator) -> bool:
    for name, values in expected_fleet(sim).items():
        got = result.by_device(name)
        if set(got) != set(values):
            return False
        if any(got[d] != pytest.approx(v, abs=1e-6) for d, v in values.items()):
            return False
    return True


def fleet_settings(upstream: mosquitto.Broker, local: mosquitto.Broker,
                         **metrics: Any) -> Any:
    return make_settings(upstream, local,
                         metrics={"fleet_parameters": FLEET_PARAMETERS, **metrics})


# --- the fleet ----------------------------------------------------------------------------

async def test_fleet_gauges_follow_the_simulator(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(fleet_settings(upstream, local))
    await scrape_until(http, bridge, lambda s: fleet_matches(s, sim), "the initial fleet")
    # Scraped while the simulator drives the fleet: the series are there and move on.
    run = asyncio.create_task(sim.run(rate=30, duration=3.0))
    try:
        first = await scrape_until(http, bridge, lambda s: len(s.by_device(BATTERY)) == 3,
                                   "battery gauges")
        before = first.value(P + "upstream_messages_total", kind="telemetry")
        assert before is not None
        during = await scrape_until(
            http, bridge,
            lambda s: (s.value(P + "upstream_messages_total", kind="telemetry") or 0) > before,
            "telemetry counted while the simulator runs")
        for level in during.by_device(BATTERY).values():
            assert 0 <= level <= 100
    finally:
        sent = await run
    assert sent > 0
    await sim.flush()
    # The chosen speed shows the unit conversion: 18 km/h is 5 m/s.
    moving = list(sim.devices)[1]
    await sim.set_values(moving, {"position.speed": 18.0})
    await sim.flush()
    result = await scrape_until(http, bridge, lambda s: fleet_matches(s, sim),
                                "gauges equal to the simulated values")
    assert result.by_device(SPEED)[moving] == pytest.approx(5.0)
    names = {d: dev.name for d, dev in sim.devices.items()}
    for metric in FLEET:
        assert result.names(metric) == names
    assert result.value(P + "devices") == 3
    assert result.value(P + "devices_online") == 3
    assert result.value(P + "fleet_devices_not_exported") == 0
    # Every update counted, and its latency observed.
    assert result.number(P + "upstream_messages_total", kind="telemetry") >= sent * 5
    assert result.number(P + "local_publications_total", kind="state") >= 3
    assert result.number(P + "processing_latency_seconds_count") >= 3
    assert result.number(P + "processing_latency_seconds_sum") > 0


async def test_online_and_name_follow_flespi(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                             sim: Simulator, bridge_factory: BridgeFactory,
                                             http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(fleet_settings(upstream, local))
    await scrape_until(http, bridge, lambda s: fleet_matches(s, sim), "the initial fleet")
    device_id = list(sim.devices)[2]
    await sim.set_connected(device_id, False)
    result = await scrape_until(http, bridge, lambda s: s.by_device(ONLINE)[device_id] == 0,
                                "the device offline")
    assert result.value(P + "devices_online") == 2
    await sim.rename(device_id, "scooter-renamed")
    result = await scrape_until(
        http, bridge, lambda s: s.names(BATTERY)[device_id] == "scooter-renamed", "new name")
    # Renamed, not duplicated: no series is left under the old name.
    for metric in FLEET:
        assert result.names(metric)[device_id] == "scooter-renamed"
        assert len(result.samples[metric]) == 3
    assert 'device_name="scooter-003"' not in result.text


async def test_removed_device_leaves_the_fleet_series(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(fleet_settings(upstream, local))
    await scrape_until(http, bridge, lambda s: fleet_matches(s, sim), "the initial fleet")
    gone = next(iter(sim.devices))
    assert bridge.store.remove(gone) is not None
    result = await scrape(http, bridge)
    for metric in (*FLEET, SATELLITES):
        assert set(result.by_device(metric)) == set(sim.devices) - {gone}, metric
    assert f'device_id="{gone}"' not in result.text
    assert result.value(P + "devices") == 2
    assert result.value(P + "devices_online") == 2


async def test_max_devices_caps_the_per_device_series(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(fleet_settings(upstream, local, max_devices=2))
    result = await scrape_until(
        http, bridge, lambda s: s.value(P + "devices") == 3
        and s.value(P + "devices_online") == 3 and len(s.by_device(LAST_SEEN)) == 2,
        "three devices tracked")
    kept = sorted(sim.devices)[:2]  # the lowest ids
    for metric in (*FLEET, SATELLITES):
        assert sorted(result.by_device(metric)) == kept, metric
    assert result.value(P + "fleet_devices_not_exported") == 1
    assert f'device_id="{sorted(sim.devices)[2]}"' not in result.text


async def test_unknown_fleet_parameters_do_not_break_the_scrape(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient) -> None:
    """A fleet parameter that would clash with a built-in gauge, or be listed twice, must not
    produce a duplicate metric family (Prometheus rejects the whole scrape then)."""
    device_id = next(iter(sim.devices))
    await sim.set_values(device_id, {"battery.percent": 12, "custom.fuel.tank": 42.5})
    await sim.flush()
    settings = make_settings(
        upstream, local,
        flespi={"extra_parameters": ["battery.percent", "custom.fuel.tank"]},
        metrics={"fleet_parameters": ["battery_percent", "custom_fuel_tank", "custom_fuel_tank",
                                      "signal", "battery"]})
    bridge = await bridge_factory(settings)
    result = await scrape_until(
        http, bridge, lambda s: device_id in s.by_device(P + "device_custom_fuel_tank")
        and len(s.by_device(BATTERY)) == 3, "the extra parameter")
    assert result.by_device(P + "device_custom_fuel_tank") == {device_id: 42.5}
    assert result.by_device(BATTERY)[device_id] == sim.devices[device_id].value("battery.level")
    assert len(re.findall(r"^# TYPE (\S+)", result.text, re.M)) == len(result.types)
    promtool_lint(result.text)


# --- health endpoints ---------------------------------------------------------------------

@pytest.fixture
def idle_brokers() -> Iterator[tuple[mosquitto.Broker, mosquitto.Broker]]:
    """An upstream and a local broker on reserved ports, not started yet (the test starts
    them); stopped by PID at the end."""
    upstream = mosquitto.Broker(port=mosquitto.free_port(), extra_config=mosquitto.FLESPI_LIKE)
    local = mosquitto.Broker(port=mosquitto.free_port())
    yield upstream, local
    for broker in (upstream, local):
        broker.__exit__()


async def test_readyz_is_503_until_both_brokers_are_connected(
        idle_brokers: tuple[mosquitto.Broker, mosquitto.Broker], bridge_factory: BridgeFactory,
        http: httpx.AsyncClient) -> None:
    upstream, local = idle_brokers
    bridge = await bridge_factory(make_settings(upstream, local))
    health = await http.get(url(bridge, "/healthz"))
    assert (health.status_code, health.text) == (200, "ok\n")
    ready = await http.get(url(bridge, "/readyz"))
    assert (ready.status_code, ready.text) == (503, "not ready\n")
    result = await scrape(http, bridge)
    assert result.value(P + "connection_up", side="upstream") == 0
    assert result.value(P + "connection_up", side="local") == 0

    await asyncio.to_thread(local.start)
    await scrape_until(http, bridge, lambda s: s.value(P + "connection_up", side="local") == 1,
                       "the local connection")
    # One broker is not enough.
    assert (await http.get(url(bridge, "/readyz"))).status_code == 503

    await asyncio.to_thread(upstream.start)
    ready = await status_until(http, bridge, "/readyz", 200)
    assert ready.text == "ready\n"
    result = await scrape(http, bridge)
    assert result.value(P + "connection_up", side="upstream") == 1
    assert result.value(P + "connection_up", side="local") == 1
    # First connections are not reconnections.
    assert result.value(P + "reconnects_total", side="upstream") == 0
    assert result.value(P + "reconnects_total", side="local") == 0
    assert (await http.get(url(bridge, "/healthz"))).status_code == 200


@pytest.mark.parametrize("side", ["local", "upstream"])
async def test_readyz_follows_a_broker_outage(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                              bridge_factory: BridgeFactory,
                                              http: httpx.AsyncClient, side: str) -> None:
    bridge = await bridge_factory(make_settings(upstream, local))
    await status_until(http, bridge, "/readyz", 200)
    broker = {"local": local, "upstream": upstream}[side]
    await asyncio.to_thread(broker.kill)
    await status_until(http, bridge, "/readyz", 503)
    result = await scrape(http, bridge)
    assert result.value(P + "connection_up", side=side) == 0
    assert (await http.get(url(bridge, "/healthz"))).status_code == 200  # alive, not ready
    await asyncio.to_thread(broker.start)
    await status_until(http, bridge, "/readyz", 200)
    result = await scrape_until(
        http, bridge, lambda s: s.value(P + "reconnects_total", side=side) == 1,
        f"a {side} reconnect counted")
    assert result.value(P + "connection_up", side=side) == 1


async def test_http_endpoint_details(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                     bridge_factory: BridgeFactory,
                                     http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(make_settings(upstream, local))
    await status_until(http, bridge, "/readyz", 200)
    get = await http.get(url(bridge, "/metrics"))
    assert get.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    # HEAD: the headers of a GET, no body (some probes and proxies use it).
    head = await http.head(url(bridge, "/metrics"))
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) > 1000
    assert (await http.head(url(bridge, "/readyz"))).status_code == 200
    # Prometheus asks for OpenMetrics first; it gets it, and it parses.
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    om = await http.get(url(bridge, "/metrics"), headers={"Accept": accept})
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    # prometheus_client's OpenMetrics parser is unannotated
    families = {f.name: f for f in openmetrics_families(om.text)}  # type: ignore[no-untyped-call]
    assert families[P + "build"].type == "info"
    assert families[P + "upstream_messages"].type == "counter"
    assert families[P + "processing_latency_seconds"].type == "histogram"
    # Everything else is refused plainly.
    post = await http.post(url(bridge, "/metrics"), content=b"x")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert (await http.get(url(bridge, "/nope"))).status_code == 404
    assert (await http.get(url(bridge, "/metrics/"))).status_code == 404
    # A request that is not HTTP gets a 400 rather than a dropped connection.
    assert bridge.health is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.health.port)
    writer.write(b"hello\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert reply.split(b" ", 2)[1] == b"400", reply  # aiohttp answers it as HTTP/1.0


async def test_invalid_inputs_are_counted_by_reason(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(fleet_settings(upstream, local))
    result = await scrape_until(http, bridge, lambda s: fleet_matches(s, sim), "the fleet")
    # Known reasons are there from the start, at zero, so rate() and alerts see them.
    for reason in ("bad_json", "bad_value", "oversized"):
        assert result.value(P + "invalid_inputs_total", source="upstream", reason=reason) == 0
    device_id = next(iter(sim.devices))
    topic = f"flespi/state/gw/devices/{device_id}/telemetry/"
    async with aiomqtt.Client(upstream.host, upstream.port) as client:
        await client.publish(topic + "battery.level", b"{not json", qos=1)
        await client.publish(topic + "battery.level", b"250", qos=1)  # beyond 100 %
        await client.publish(topic + "battery.level", b"7", qos=1)
    result = await scrape_until(
        http, bridge,
        lambda s: s.value(P + "invalid_inputs_total", source="upstream", reason="bad_value") == 1
        and s.by_device(BATTERY)[device_id] == 7, "the rejected inputs counted")
    assert result.value(P + "invalid_inputs_total", source="upstream", reason="bad_json") == 1
    assert result.value(P + "invalid_inputs_total", source="upstream", reason="oversized") == 0


# --- naming -------------------------------------------------------------------------------

def promtool_lint(exposition: str) -> None:
    """`promtool check metrics`: Prometheus's own linter of metric naming conventions."""
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                         if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package "
                    "(apt-get install prometheus; .ci/run does)")
    lint = subprocess.run([found, "check", "metrics"], input=exposition, capture_output=True,
                          text=True, timeout=60, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


async def test_metric_names_follow_prometheus_conventions(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient) -> None:
    bridge = await bridge_factory(fleet_settings(upstream, local))
    result = await scrape_until(
        http, bridge, lambda s: fleet_matches(s, sim)
        and (s.value(P + "processing_latency_seconds_count") or 0) > 0, "a full scrape")
    promtool_lint(result.text)
    assert result.types, "no metric families"
    for name, kind in result.types.items():
        assert name.startswith(P), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert result.helps.get(name), f"{name} has no HELP"
        assert name.endswith("_total") == (kind == "counter"), f"{name} is a {kind}"
        # base units only
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kmh|km_h|kilo\w*|mv)(_|$)",
                             name), name
        assert not name.endswith("_created"), name
    assert result.types[P + "build_info"] == "gauge"
    assert result.samples[P + "build_info"] == {(("version", __version__),): 1.0}
    assert result.types[P + "processing_latency_seconds"] == "histogram"
    assert result.types[LAST_SEEN] == "gauge"
    assert result.types[SPEED] == "gauge"
    # Latency buckets resolve milliseconds, and are cumulative.
    buckets = sorted((float(dict(k)["le"]), v)
                     for k, v in result.samples[P + "processing_latency_seconds_bucket"].items())
    bounds = [le for le, _ in buckets]
    assert bounds[0] <= 0.001
    assert bounds[-1] == float("inf")
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)
    assert buckets[-1][1] == result.value(P + "processing_latency_seconds_count")
    # Timestamps are Unix seconds, not milliseconds.
    for device_id, seen in result.by_device(LAST_SEEN).items():
        assert seen == pytest.approx(expected_fleet(sim)[LAST_SEEN][device_id], abs=1e-3)
        assert 1.5e9 < seen < 1e10
    # Label names are snake_case and per-device series carry exactly the two fleet labels.
    for name, series in result.samples.items():
        for key in series:
            for label, _ in key:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label), (name, label)
            if name.startswith(P + "device_"):
                assert [label for label, _ in key] == ["device_id", "device_name"], name
    assert set(result.samples[P + "queue_depth"]) >= {
        (("queue", "upstream_acks"),), (("queue", "dirty_devices"),)}


async def test_readyz_of_a_replica_waits_for_its_view_of_the_others(
        upstream: mosquitto.Broker, brokers: Brokers, tmp_path: Path,
        bridge_factory: BridgeFactory, http: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """A replica of a split fleet is ready only once its own lease has come back (every
    retained lease and state before it): here the broker's ACL refuses the lease at first,
    while both connections are up and the fleet is loaded."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic deny flespi/bridge/0/lease\n", encoding="utf-8")
    local = brokers(extra_config=(f"acl_file {acl}",))
    sim = Simulator(upstream.host, upstream.port, devices=40, seed=7)
    await sim.start()
    try:
        # shard 2 of 3 online with an older claim (a resize from 3 to 2 under way): it keeps
        # the devices both may publish until it is gone
        async with aiomqtt.Client(local.host, local.port) as peer:
            await peer.publish("flespi/bridge/2/lease", b'{"shard": 2, "shards": 3, '
                               b'"since": 1.0}', qos=1, retain=True)
            await peer.publish("flespi/bridge/2/state", b"online", qos=1, retain=True)
        bridge = await bridge_factory(make_settings(upstream, local,
                                                    cluster={"shards": 2, "shard": 0}))
        await bridge.loaded.wait()
        await scrape_until(http, bridge,
                           lambda s: s.value(P + "connection_up", side="upstream") == 1,
                           "the upstream connection")
        refused = "the broker refused this replica's lease"
        await scrape_until(http, bridge, lambda s: caplog.text.count(refused) >= 2
                           or s.value(P + "connection_up", side="local") == 1,
                           "the lease refused twice (a reconnect between), or a local connection")
        assert (await http.get(url(bridge, "/readyz"))).status_code == 503
        assert (await scrape(http, bridge)).value(P + "connection_up", side="local") == 0
        assert (await http.get(url(bridge, "/healthz"))).status_code == 200
        assert (await scrape(http, bridge)).value(P + "shard_devices", shard="0") == 0

        acl.write_text("topic readwrite #\n", encoding="utf-8")
        assert local.pid is not None
        os.kill(local.pid, signal.SIGHUP)  # the broker this test started re-reads its ACL
        ready = await status_until(http, bridge, "/readyz", 200)
        assert ready.text == "ready\n"
        mine = {d for d in sim.devices if shard_of(d, 2) == 0}
        contested = {d for d in mine if shard_of(d, 3) == 2}
        assert contested
        assert mine - contested
        result = await scrape(http, bridge)
        assert result.value(P + "shard_devices", shard="0") == len(mine - contested)
    finally:
        await sim.stop()
