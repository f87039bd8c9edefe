"""flespi's HTTP stream into the bridge (issue 15): batches in -> states, discovery and
metrics out; a 200 only once the local broker has everything; 503 while it is away, and
nothing lost; 400/401/413; TLS; hostile batches. Real Mosquitto brokers throughout, the
bridge in-process or as a process, the simulator's stream as a process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import (
    PYTHON,
    BridgeFactory,
    BridgeProcess,
    Procs,
    Recorder,
    bridge_env,
    make_settings,
    metric,
    retained,
    server_certificate,
    wait_metric,
    wait_until,
)

from bridge.app.bridge import Bridge
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import Fleet
from bridge.sim.http_stream import HttpStream, feed, final_telemetry

AUTH = "Bearer stream-secret-0123456789"
PATH = "/flespi/stream"
P = "flespi_bridge_"


def stream_options(**extra: Any) -> dict[str, Any]:
    return {"enabled": True, "host": "127.0.0.1", "port": 0, "authorization": AUTH,
            **extra}


async def started(factory: BridgeFactory, settings: Any) -> Bridge:
    """A bridge connected to its local broker with flespi's state loaded (until then the
    stream is answered 503)."""
    bridge = await factory(settings)
    await asyncio.wait_for(bridge.local.connected.wait(), 20)
    await asyncio.wait_for(bridge.loaded.wait(), 20)
    return bridge


def endpoint(bridge: Bridge, scheme: str = "http") -> str:
    assert bridge.stream is not None
    return f"{scheme}://127.0.0.1:{bridge.stream.port}{PATH}"


def message(device_id: int | None, ts: float, **values: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"timestamp": ts, "ident": f"ident-{device_id}", "channel.id": 7}
    if device_id is not None:
        msg["device.id"] = device_id
    msg.update({k.replace("__", "."): v for k, v in values.items()})
    return msg


def expected_state(telemetry: dict[str, Any]) -> dict[str, Any]:
    """The state attributes a scooter's telemetry should give (the catalogue table in
    docs/parameters.md)."""
    pos = telemetry["position"]
    return {
        "battery": telemetry["battery.level"], "voltage": telemetry["battery.voltage"],
        "charging": telemetry["battery.charging.status"],
        "signal": telemetry["gsm.signal.level"], "locked": telemetry["lock.status"],
        "latitude": pos["latitude"], "longitude": pos["longitude"],
        "altitude": pos["altitude"], "satellites": pos["satellites"], "hdop": pos["hdop"],
        "speed": pos["speed"], "direction": pos["direction"], "position_valid": pos["valid"],
    }


async def post(url: str, body: bytes, auth: str | None = AUTH, **kwargs: Any
               ) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with httpx.AsyncClient(timeout=20, **kwargs) as http:
        return await http.post(url, content=body, headers=headers)


async def states(local: mosquitto.Broker) -> dict[int, dict[str, Any]]:
    found = await retained(local, ["flespi/+/state"])
    return {int(topic.split("/")[1]): orjson.loads(payload) for topic, payload in found.items()
            if topic.split("/")[1].isdigit()}  # not the bridge's own flespi/bridge/state


async def test_a_batch_becomes_state_discovery_and_metrics(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    bridge = await started(bridge_factory, make_settings(
        upstream, local, stream=stream_options(devices={"860000111": 5537002})))
    now = time.time()
    batch = [
        message(5537001, now - 5, battery__level=81, lock__status=True,
                position__latitude=-17.7, position__longitude=-63.2, position__satellites=9,
                **{"device.name": "scooter-a"}),
        # from a channel: the ident alone names the device (stream.devices)
        {"ident": "860000111", "timestamp": now - 4, "battery.level": 55,
         "engine.ignition.status": 1, "gsm.signal.level": 70},
        # later than the first: it wins; a value out of range is left out, the rest kept
        message(5537001, now - 1, battery__level=80, gsm__signal__level=140,
                position__speed=12.5),
        # older than what is held: loses
        message(5537001, now - 3, battery__level=12),
    ]
    answer = await post(endpoint(bridge), orjson.dumps(batch))
    assert answer.status_code == 200, answer.text
    # A 200 means published: the states are on the broker now, without waiting.
    got = await states(local)
    first = got[5537001]
    assert {k: first[k] for k in ("battery", "locked", "latitude", "longitude",
                                  "satellites", "speed")} == {
        "battery": 80, "locked": True, "latitude": -17.7, "longitude": -63.2,
        "satellites": 9, "speed": 12.5}
    assert "signal" not in first  # 140 % was refused
    assert first["last_seen"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 1))
    assert got[5537002] == {"battery": 55, "ignition": True, "signal": 70,
                            "last_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                       time.gmtime(now - 4))}
    # discovery follows (at start-up it waits for the inventory of retained topics)
    topic = "homeassistant/device/flespi/flespi_{}/config"
    async with Recorder(local, ["homeassistant/device/flespi/+/config"]) as rec:
        configs = await rec.wait_for(
            lambda: {d: rec.latest[topic.format(d)].json() for d in (5537001, 5537002)}
            if all(topic.format(d) in rec.latest for d in (5537001, 5537002)) else None,
            what="both devices' discovery configs")
    assert configs[5537001]["dev"]["name"] == "scooter-a"  # the message's device.name
    assert {"battery", "locked"} <= set(configs[5537001]["cmps"])
    assert configs[5537002]["cmps"]["battery"]["unique_id"] == "flespi_5537002_battery"
    assert bridge.health is not None
    port = bridge.health.port
    assert await metric(port, P + "stream_requests_total", code="200") == 1
    assert await metric(port, P + "stream_messages_total", outcome="applied") == 4
    assert await metric(port, P + "invalid_inputs_total", source="stream",
                        reason="bad_value") == 1
    assert await metric(port, P + "device_battery_percent", device_id="5537002",
                        device_name="flespi 5537002") == 55


async def test_unknown_idents_and_unselected_devices_are_left_out(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    bridge = await started(bridge_factory, make_settings(
        upstream, local, flespi={"devices": [11, 12]}, stream=stream_options()))
    now = time.time()
    batch = [message(11, now, battery__level=50), message(13, now, battery__level=51),
             {"ident": "nobody-knows", "timestamp": now, "battery.level": 52}]
    answer = await post(endpoint(bridge), orjson.dumps(batch))
    assert answer.status_code == 200  # a 400 would make flespi resend it forever
    assert set(await states(local)) == {11}
    assert bridge.health is not None
    port = bridge.health.port
    assert await metric(port, P + "stream_messages_total", outcome="ignored") == 1
    assert await metric(port, P + "invalid_inputs_total", source="stream",
                        reason="unknown_device") == 1


async def test_refusals_change_nothing_and_never_log_the_authorization(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bridge = await started(bridge_factory, make_settings(
        upstream, local, stream=stream_options(max_body=4096)))
    url = endpoint(bridge)
    good = orjson.dumps([message(21, time.time(), battery__level=64)])
    wrong = "Bearer not-the-secret"
    assert (await post(url, good, auth=None)).status_code == 401
    assert (await post(url, good, auth=wrong)).status_code == 401
    assert (await post(url, good, auth=AUTH + "x")).status_code == 401
    for body, reason in ((b"[{", "not JSON"), (b'{"battery.level": 5}', "JSON array"),
                         (b"[1, {}]", "message 0 is not a JSON object")):
        answer = await post(url, body)
        assert answer.status_code == 400
        assert reason in answer.text
    big = orjson.dumps([message(21, time.time(), battery__level=64, pad="x" * 5000)])
    assert (await post(url, big)).status_code == 413
    async with httpx.AsyncClient(timeout=10) as http:  # a chunked body over the limit too
        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1000
        answer = await http.post(url, content=chunks(), headers={"Authorization": AUTH})
        assert answer.status_code == 413
        assert (await http.get(url, headers={"Authorization": AUTH})).status_code == 405
    assert await states(local) == {}  # nothing refused was applied
    assert bridge.health is not None
    port = bridge.health.port
    for reason, count in (("unauthorized", 3), ("bad_batch", 3), ("oversized", 2)):
        assert await metric(port, P + "invalid_inputs_total", source="stream",
                            reason=reason) == count
    assert await metric(port, P + "stream_requests_total", code="401") == 3
    assert (await post(url, good)).status_code == 200
    assert (await states(local))[21]["battery"] == 64
    assert AUTH not in caplog.text
    assert wrong not in caplog.text
    assert "unauthorized" in caplog.text


async def test_tls_with_a_private_ca(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                     bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    ca, cert_file, key_file = server_certificate(tmp_path)
    bridge = await started(bridge_factory, make_settings(
        upstream, local,
        stream=stream_options(cert_file=str(cert_file), key_file=str(key_file))))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    fleet = Fleet(3, seed=5, first_id=4400)
    stream = HttpStream(endpoint(bridge, "https"), authorization=AUTH, limit_messages=4,
                        retry_delay=0.1, verify=client_ctx)
    sender = asyncio.create_task(stream.run())
    try:
        await feed(fleet, stream, rate=200, duration=0.1)
        await stream.drain(timeout=30)
    finally:
        sender.cancel()
        await stream.close()
    assert set(stream.answers) == {"200"}
    got = await states(local)
    for device_id, telemetry in final_telemetry(fleet).items():
        state = got[int(device_id)]
        assert {k: state.get(k) for k in expected_state(telemetry)} == expected_state(telemetry)
    with pytest.raises(httpx.HTTPError):  # a client that does not trust the CA gets nothing
        await post(endpoint(bridge, "https"), b"[]")


async def test_503_while_the_local_broker_is_away_and_nothing_lost(
        brokers: Any, procs: Procs, tmp_path: Path) -> None:
    """The simulator's stream (a process) into the bridge (a process); the local broker is
    killed mid-stream: batches are answered 503 and resent, and once it is back, every
    device's state equals the simulator's last values."""
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE)
    local = brokers()
    metrics_port, stream_port = mosquitto.free_port(), mosquitto.free_port()
    procs(BridgeProcess(
        tmp_path, upstream, local, metrics={"enabled": True, "port": metrics_port},
        stream={"enabled": True, "host": "127.0.0.1", "port": stream_port,
                "authorization": AUTH, "timeout": 2.0},
        log={"level": "INFO"})).start()
    await wait_metric(metrics_port, P + "connection_up", lambda v: v == 1, 20, side="local")
    report = tmp_path / "report.json"
    sim = subprocess.Popen(
        [PYTHON, "-m", "bridge", "simulate", "--http-stream",
         f"http://127.0.0.1:{stream_port}{PATH}", "--authorization", AUTH, "--devices", "6",
         "--rate", "150", "--duration", "5", "--limit-messages", "40", "--retry-delay", "0.2",
         "--seed", "11", "--report", str(report)],
        stdout=(tmp_path / "sim.log").open("wb"), stderr=subprocess.STDOUT, env=bridge_env())
    try:
        async with Recorder(local, ["flespi/+/state"]) as rec:
            await rec.wait_for(lambda: len({m.topic for m in rec.messages}) >= 6, 20,
                               "the first states")
        local.kill()
        await wait_metric(metrics_port, P + "stream_requests_total", lambda v: v >= 3, 20,
                          code="503")
        local.start()
        await wait_until(lambda: sim.poll() is not None, 60, "the stream to deliver all")
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, (tmp_path / "sim.log").read_text()[-3000:]
    result = orjson.loads(report.read_bytes())
    assert result["pending"] == 0
    assert result["answers"].get("503", 0) >= 3
    expected = {int(d): expected_state(t) for d, t in result["telemetry"].items()}

    async def settled() -> bool:
        got = await states(local)
        return all(d in got and {k: got[d].get(k) for k in want} == want
                   for d, want in expected.items())

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await settled():
        assert loop.time() < deadline, (await states(local), expected)
        await asyncio.sleep(0.1)


async def test_503_while_the_pipeline_is_full_and_nothing_lost(
        brokers: Any, bridge_factory: BridgeFactory) -> None:
    """A local broker that takes the connection but acknowledges nothing (stopped): one big
    batch fills the publisher's pipeline, so the next one is answered 503 at once, saying
    so; once the broker goes on, flespi's retries are answered 200 and every device of
    both batches has its state."""
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE)
    local = brokers(extra_config=mosquitto.FLESPI_LIKE)  # hands a checker every retained state
    bridge = await started(bridge_factory, make_settings(
        upstream, local, stream=stream_options(timeout=1.0)))
    url = endpoint(bridge)
    now = time.time()
    first = [message(7_000_000 + i, now - 10, battery__level=i % 100)
             for i in range(bridge.publisher.pipeline + 200)]  # a state each: the pipeline
    second = [message(7_100_000 + i, now - 5, battery__level=42) for i in range(50)]
    assert local.pid is not None
    os.kill(local.pid, signal.SIGSTOP)  # connected, reading nothing, acknowledging nothing
    try:
        answer = await post(url, orjson.dumps(first))
        assert answer.status_code == 503
        assert "did not acknowledge in time" in answer.text
        answer = await post(url, orjson.dumps(second))
        assert answer.status_code == 503
        assert answer.text == "the local broker is behind; retry later\n"
        assert answer.headers["Retry-After"] == "1"
    finally:
        os.kill(local.pid, signal.SIGCONT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    for batch in (first, second):  # flespi resends what was not answered 200, until it is
        while (answer := await post(url, orjson.dumps(batch))).status_code != 200:
            assert answer.status_code == 503, answer.text  # the broker still catching up
            assert loop.time() < deadline, answer.text
            await asyncio.sleep(0.05)
    got = await states(local)
    assert {d: got[d]["battery"] for d in range(7_000_000, 7_000_000 + len(first))} == {
        7_000_000 + i: i % 100 for i in range(len(first))}
    assert all(got[7_100_000 + i]["battery"] == 42 for i in range(len(second)))
    assert bridge.health is not None
    assert await metric(bridge.health.port, P + "stream_requests_total", code="503") == 2


# -- hostile batches ------------------------------------------------------------------------

CANARY = 999_001
KEYS = ["battery.level", "battery.voltage", "lock.status", "position.latitude",
        "position.longitude", "position.valid", "position.speed", "gsm.signal.level",
        "timestamp", "device.id", "ident", "device.name", "can.junk", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
hostile_messages = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), json_values,
                                   max_size=8).map(
    lambda m: {**m, "device.id": 1} if m.get("device.id") == CANARY else m)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # orjson writes 64-bit integers only


def _a_batch(body: bytes) -> bool:
    try:
        batch = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(batch, list) and all(isinstance(item, dict) for item in batch)


malformed = st.one_of(
    st.binary(max_size=200).filter(lambda b: not _a_batch(b)),
    json_values.filter(lambda v: not isinstance(v, list)).map(_dumps),
    st.lists(json_values, min_size=1, max_size=5).filter(
        lambda items: any(not isinstance(i, dict) for i in items)).map(_dumps),
    st.just(b'[{"battery.level": NaN}]'), st.just(b"[" * 5000),
)


@pytest.fixture
def running(brokers: Any, procs: Procs, tmp_path: Path) -> tuple[str, mosquitto.Broker]:
    upstream = brokers(extra_config=mosquitto.FLESPI_LIKE)
    local = brokers()
    stream_port = mosquitto.free_port()
    procs(BridgeProcess(tmp_path, upstream, local,
                        stream={"enabled": True, "host": "127.0.0.1", "port": stream_port,
                                "authorization": AUTH},
                        log={"level": "INFO"})).start()
    url = f"http://127.0.0.1:{stream_port}{PATH}"
    deadline = time.monotonic() + 20
    while True:  # up, and the local broker connected (a 503 until then)
        try:
            if httpx.post(url, content=b"[]", headers={"Authorization": AUTH}).status_code \
                    == 200:
                return url, local
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the stream endpoint never answered 200"
        time.sleep(0.05)


_last = [0.0]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(hostile_messages, max_size=6), at=st.integers(min_value=0),
       body=st.none() | malformed)
def test_hostile_batches_never_crash_and_never_ack_partly(
        running: tuple[str, mosquitto.Broker], batch: list[dict[str, Any]], at: int,
        body: bytes | None) -> None:
    """Any batch is answered (the endpoint never dies); a well-formed one (an array of
    objects, whatever they hold) 200 only with all of it published — the canary message
    among the junk is on the broker the moment the 200 arrives — and a malformed one 400
    with nothing of it applied."""
    url, local = running
    _last[0] = ts = max(time.time(), _last[0] + 0.001)
    voltage = round(ts % 1000, 3)
    canary = message(CANARY, ts, external__powersource__voltage=voltage)
    batch.insert(at % (len(batch) + 1), canary)
    sent = _dumps(batch) if body is None else body
    answer = httpx.post(url, content=sent, headers={"Authorization": AUTH}, timeout=20)
    state = asyncio.run(retained(local, [f"flespi/{CANARY}/state"])).get(
        f"flespi/{CANARY}/state")
    published = state is not None and orjson.loads(state)["external_voltage"] == voltage
    if body is None:
        assert answer.status_code == 200, answer.text
        assert published
    else:
        assert answer.status_code == 400, answer.text
        assert not published


# -- messages on the MQTT path ---------------------------------------------------------------

async def test_messages_alone_drive_the_state_over_mqtt(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    """`flespi.messages` with `flespi.telemetry = false`: flespi/message/gw/devices/+ is the
    only source, mapped by the same catalogue (and still republished as it is)."""
    from bridge.sim import Simulator

    bridge = await started(bridge_factory, make_settings(
        upstream, local, flespi={"messages": True, "telemetry": False}))
    assert not any("/telemetry/" in f for f in bridge.session.subscriptions())
    sim = Simulator(upstream.host, upstream.port, devices=2, seed=3)
    await sim.start()
    try:
        async with Recorder(local, ["flespi/+/state", "flespi/+/message"]) as rec:
            for dev in sim.devices.values():
                await sim.set_values(dev.id, {"lock.status": False})
                await sim.step(dev)
            await sim.flush()
            want = {dev.id: expected_state({p: v for p, (v, _) in dev.telemetry.items()})
                    for dev in sim.devices.values()}

            def matches() -> bool:
                return all((s := rec.state("flespi", d)) is not None
                           and {k: s.get(k) for k in w} == w for d, w in want.items())

            await rec.wait_for(matches, 20, "states from messages alone")
            assert f"flespi/{min(sim.devices)}/message" in rec.latest
    finally:
        await sim.stop()


def test_check_config_masks_the_authorization(tmp_path: Path) -> None:
    secret = tmp_path / "auth"
    secret.write_text(AUTH + "\n")
    conf = tmp_path / "bridge.toml"
    conf.write_text('[flespi]\ntoken = "FlespiTestToken0123456789"\n[stream]\nenabled = true\n'
                    f'authorization_file = "{secret}"\n')
    result = subprocess.run([PYTHON, "-m", "bridge", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, env=bridge_env(), check=False)
    assert result.returncode == 0, result.stderr
    assert f"authorization=<set, {len(AUTH)} characters>" in result.stdout
    assert AUTH not in result.stdout + result.stderr
    conf.write_text('[flespi]\ntoken = "FlespiTestToken0123456789"\n[stream]\nenabled = true\n')
    result = subprocess.run([PYTHON, "-m", "bridge", "check-config", "--config", str(conf)],
                            capture_output=True, text=True, env=bridge_env(), check=False)
    assert result.returncode == 2
    assert "the stream needs an authorization" in result.stderr
