"""Commands: local topics -> flespi REST (over MQTT or HTTPS) -> one result per request."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import (
    TOKEN,
    BridgeFactory,
    BridgeProcess,
    Procs,
    Recorder,
    commands_sent,
    make_settings,
    names_looked_up,
    retained,
    wait_until,
)

from bridge.app.bridge import Bridge
from bridge.commands.gateway import (
    CommandGateway,
    flespi_command,
    parse_entity_command,
    parse_set,
)
from bridge.commands.limits import TokenBucket
from bridge.config.profiles import CommandSettings
from bridge.core.store import Device, Info
from bridge.exceptions import CommandError
from bridge.flespi.rest import RestResponse
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
PROFILE = CommandSettings(**PROFILES).profile(DEVICE_TYPE_ID)


# -- parsing (pure) -----------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "entity", "value"), [
    (b'{"lock": true}', "lock", True),
    (b'{"lock": false, "transaction": "t-1"}', "lock", False),
    (b'{"lock": "UNLOCK"}', "lock", False),
    (b'{"command": "restart"}', "restart", None),
    (b'{"command": "restart", "transaction": 7}', "restart", None),
    (b'{"upload_interval": 10}', "upload_interval", 10),
    (b'{"upload_interval": 10.0}', "upload_interval", 10),
    (b'{"command": "upload_interval", "value": 30}', "upload_interval", 30),
])
def test_parse_set(payload: bytes, entity: str, value: Any) -> None:
    request = parse_set(PROFILE, payload)
    assert (request.entity, request.value) == (entity, value)


@pytest.mark.parametrize(("payload", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"{}", "invalid_payload"),
    (b'{"lock": true, "command": "restart"}', "invalid_payload"),
    (b'{"lock": true, "upload_interval": 5}', "invalid_payload"),
    (b'{"fly": true}', "unknown_command"),
    (b'{"command": 5}', "unknown_command"),
    (b'{"command": "reboot_everything"}', "unknown_command"),
    (b'{"lock": "maybe"}', "invalid_value"),
    (b'{"lock": 1}', "invalid_value"),
    (b'{"upload_interval": 1}', "invalid_value"),       # below min
    (b'{"upload_interval": 99999}', "invalid_value"),   # above max
    (b'{"upload_interval": 10.5}', "invalid_value"),    # not a step
    (b'{"upload_interval": true}', "invalid_value"),
    (b'{"upload_interval": "NaN"}', "invalid_value"),
    (b'{"command": "restart", "transaction": {"a": 1}}', "invalid_value"),
    (b'{"command": "restart", "transaction": ""}', "invalid_value"),
])
def test_parse_set_errors(payload: bytes, code: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_set(PROFILE, payload)
    assert err.value.code == code


def test_parse_home_assistant_payloads() -> None:
    assert parse_entity_command(PROFILE, "lock", b"LOCK").value is True
    assert parse_entity_command(PROFILE, "lock", b"UNLOCK").value is False
    assert parse_entity_command(PROFILE, "restart", b"PRESS").value is None
    assert parse_entity_command(PROFILE, "upload_interval", b"60").value == 60
    for entity, payload, code in [("lock", b"OPEN", "invalid_value"),
                                  ("restart", b"NOW", "invalid_value"),
                                  ("upload_interval", b"ten", "invalid_value"),
                                  ("upload_interval", b"inf", "invalid_value"),
                                  ("lock", b"\xff", "invalid_payload"),
                                  ("horn", b"PRESS", "unknown_command")]:
        with pytest.raises(CommandError) as err:
            parse_entity_command(PROFILE, entity, payload)
        assert err.value.code == code


def test_flespi_command_bodies_match_the_reference() -> None:
    lock = PROFILE["lock"]
    assert flespi_command(lock, True, 10) == [
        {"name": "setting.r0.set", "properties": {"key_time": 1, "user_id": "", "lock": 1},
         "timeout": 10}]
    assert flespi_command(PROFILE["restart"], None, 10)[0]["properties"] == {"event_code": 2}
    assert flespi_command(PROFILE["upload_interval"], 10, 10)[0] == {
        "name": "setting.d1.set", "properties": {"upload_interval": 10}, "timeout": 10}


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    t = 100.0
    assert [bucket.take(t), bucket.take(t), bucket.take(t)] == [True, True, False]
    assert bucket.take(t + 1.01)


class RecordingRest:
    """A stand-in for the transport boundary that records what would reach flespi."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def call(self, method: str, uri: str, body: Any, timeout: float) -> RestResponse:
        self.calls.append((method, uri, body))
        return RestResponse(200, {"result": [{"executed": True}]})


payloads = st.one_of(
    st.binary(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["lock", "command", "value", "transaction",
                                           "upload_interval", "restart", "x"]) | st.text(),
                          children, max_size=4),
        max_leaves=12,
    ).map(lambda v: json.dumps(v).encode()),  # NaN, Infinity and huge ints included
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, entity=st.sampled_from([None, "lock", "restart", "upload_interval",
                                                 "nope"]))
def test_no_payload_crashes_or_reaches_flespi_unchecked(payload: bytes, entity: str | None
                                                        ) -> None:
    rest = RecordingRest()
    results: list[dict[str, Any]] = []

    async def publish(_device: int, outcome: dict[str, Any]) -> None:
        results.append(outcome)

    dev = Device(5537000, info=Info(name="x", device_type_id=DEVICE_TYPE_ID))
    gateway = CommandGateway(CommandSettings(**PROFILES, device_burst=10**6,
                                             global_burst=10**6),
                             rest, device=lambda i: dev if i == dev.id else None,
                             publish_result=publish, count=lambda _: None)
    outcome = asyncio.run(gateway.handle(dev.id, entity, payload))
    assert results == [outcome]
    assert (outcome["status"] == "ok") == bool(rest.calls) == (outcome["code"] is None)
    orjson.dumps(outcome)  # the result is always valid JSON
    if outcome["status"] == "ok":
        [(method, uri, body)] = rest.calls
        assert (method, uri) == ("post", f"gw/devices/{dev.id}/commands")
        assert body[0]["name"] in {"setting.r0.set", "setting.s1.set", "setting.d1.set"}
    else:
        assert rest.calls == []
        assert outcome["error"]


# -- end to end on real brokers, both transports --------------------------------------------

@pytest.fixture
async def responder(sim: Simulator) -> AsyncIterator[Responder]:
    r = Responder(sim, chunk_size=64, token=TOKEN)
    await r.attach()
    yield r
    await r.close()


@pytest.fixture(params=["mqtt", "http"])
async def commanding(request: pytest.FixtureRequest, upstream: mosquitto.Broker,
                     local: mosquitto.Broker, sim: Simulator, responder: Responder,
                     bridge_factory: BridgeFactory) -> AsyncIterator[tuple[Bridge, Recorder]]:
    """A bridge with commands over the given transport, and a recorder on the local side."""
    commands: dict[str, Any] = {**PROFILES, "transport": request.param, "timeout": 1}
    if request.param == "http":
        commands["http_url"] = await responder.serve_http()
    bridge = await bridge_factory(make_settings(upstream, local, commands=commands))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    await names_looked_up(responder.requests)
    async with Recorder(local, [f"{BASE}/+/result", f"{BASE}/+/state", f"{BASE}/+/lock/state",
                                f"{BASE}/+/last_command", "homeassistant/device/#"]) as rec:
        yield bridge, rec


async def command(rec: Recorder, device_id: int, payload: bytes | str, entity: str | None = None,
                  *, retain: bool = False) -> dict[str, Any]:
    """Send one request and return its result (matched by position on the result topic)."""
    topic = f"{BASE}/{device_id}/" + (f"{entity}/set" if entity else "set")
    result_topic = f"{BASE}/{device_id}/result"
    before = sum(1 for m in rec.messages if m.topic == result_topic)
    await rec.publish(topic, payload, qos=1, retain=retain)
    results = await rec.wait_for(
        lambda: [m for m in rec.messages if m.topic == result_topic][before:] or None,
        what=f"result of {payload!r}")
    result: dict[str, Any] = results[0].json()
    return result


def lock_states(rec: Recorder, device_id: int) -> list[str]:
    """Every payload the device's lock state topic carried, in order."""
    topic = f"{BASE}/{device_id}/lock/state"
    return [m.payload.decode() for m in rec.messages if m.topic == topic]


async def test_lock_from_home_assistant_reaches_flespi_and_state_follows(
        commanding: tuple[Bridge, Recorder], sim: Simulator, responder: Responder) -> None:
    _, rec = commanding
    device_id = next(iter(sim.devices))
    cfg_topic = f"homeassistant/device/flespi/flespi_{device_id}/config"
    cfg = (await rec.wait_for(lambda: rec.latest.get(cfg_topic), what="lock config")).json()
    assert cfg["cmps"]["lock"]["p"] == "lock"
    cfg = cfg["cmps"]["lock"]
    assert cfg["command_topic"] == f"{BASE}/{device_id}/lock/set"
    assert cfg["state_topic"] == f"{BASE}/{device_id}/lock/state"
    assert (cfg["state_locked"], cfg["state_unlocked"], cfg["state_locking"],
            cfg["state_unlocking"]) == ("LOCKED", "UNLOCKED", "LOCKING", "UNLOCKING")
    state = await rec.wait_for(lambda: rec.state(BASE, device_id), what="the state")
    assert state["locked"] is True
    await rec.wait_for(lambda: lock_states(rec, device_id) == ["LOCKED"], what="LOCKED")

    result = await command(rec, device_id, "UNLOCK", entity="lock")
    assert result["status"] == "ok", result
    assert result["command"] == "lock"
    assert result["response"][0]["name"] == "setting.r0.set"
    request = responder.requests[-1]
    assert (request.method, request.uri) == ("post", f"gw/devices/{device_id}/commands")
    assert request.body == [{"name": "setting.r0.set",
                             "properties": {"key_time": 1, "user_id": "", "lock": 0},
                             "timeout": 1}]
    # The lock's state comes from telemetry the device reports, not from the command (an
    # UNLOCKING in flight may be coalesced away by so quick an answer: see the next test).
    await rec.wait_for(lambda: rec.seen_state(BASE, device_id)["locked"] is False, what="unlocked")
    await rec.wait_for(lambda: lock_states(rec, device_id)[-1] == "UNLOCKED", what="UNLOCKED")
    result = await command(rec, device_id, "LOCK", entity="lock")
    assert result["status"] == "ok"
    await rec.wait_for(lambda: rec.seen_state(BASE, device_id)["locked"] is True, what="locked")
    await rec.wait_for(lambda: lock_states(rec, device_id)[-1] == "LOCKED", what="LOCKED")


async def test_a_failed_lock_command_is_visible(commanding: tuple[Bridge, Recorder],
                                                sim: Simulator, responder: Responder,
                                                local: mosquitto.Broker) -> None:
    """A silent flespi: the lock shows UNLOCKING, then the telemetry state again; the Last
    command sensor (retained `last_command`) carries the timeout, then a refusal."""
    _, rec = commanding
    device_id = next(iter(sim.devices))
    cfg_topic = f"homeassistant/device/flespi/flespi_{device_id}/config"
    cfg = (await rec.wait_for(lambda: rec.latest.get(cfg_topic), what="config")).json()
    sensor = cfg["cmps"]["last_command"]
    last_topic = f"{BASE}/{device_id}/last_command"
    assert (sensor["p"], sensor["state_topic"], sensor["json_attributes_topic"],
            sensor["entity_category"]) == ("sensor", last_topic, last_topic, "diagnostic")
    await rec.wait_for(lambda: lock_states(rec, device_id) == ["LOCKED"], what="LOCKED")

    responder.silent = True
    await rec.publish(f"{BASE}/{device_id}/lock/set", "UNLOCK", qos=1)
    await rec.wait_for(lambda: lock_states(rec, device_id)[-1] == "UNLOCKING", what="UNLOCKING")
    last = await rec.wait_for(lambda: rec.latest.get(last_topic), what="last command")
    # back to what telemetry says (the simulated device did unlock; only flespi is silent)
    telemetry = "LOCKED" if sim.devices[device_id].value("lock.status") else "UNLOCKED"
    await rec.wait_for(lambda: lock_states(rec, device_id) == ["LOCKED", "UNLOCKING", telemetry],
                       what="back to the telemetry state")
    outcome = last.json()
    assert "response" not in outcome
    assert (outcome["status"], outcome["code"], outcome["command"]) == (
        "error", "timeout", "lock")
    env = jinja2.Environment()
    assert env.from_string(sensor["value_template"]).render(value_json=outcome) == "error"
    attrs = orjson.loads(env.from_string(sensor["json_attributes_template"]).render(
        value_json=outcome))
    # the command's label (what its entity shows), and the time of the result
    assert attrs == {"code": "timeout", "error": outcome["error"], "command": "Lock",
                     "transaction": None, "time": outcome["time"]}

    result = await command(rec, device_id, b'{"upload_interval": 0, "transaction": "x"}')
    assert result["code"] == "invalid_value"
    await rec.wait_for(lambda: rec.latest[last_topic].json()["transaction"] == "x",
                       what="the refusal as last command")
    assert rec.latest[last_topic].json()["code"] == "invalid_value"
    found = await retained(local, [last_topic, f"{BASE}/{device_id}/lock/state"])
    assert orjson.loads(found[last_topic])["code"] == "invalid_value"
    assert found[f"{BASE}/{device_id}/lock/state"] == telemetry.encode()
    assert lock_states(rec, device_id) == ["LOCKED", "UNLOCKING", telemetry]


async def test_set_topic_commands_with_transactions(commanding: tuple[Bridge, Recorder],
                                                    sim: Simulator, responder: Responder) -> None:
    _, rec = commanding
    device_id = list(sim.devices)[1]
    result = await command(rec, device_id, b'{"command": "restart", "transaction": "r-1"}')
    assert (result["transaction"], result["command"], result["status"]) == (
        "r-1", "restart", "ok")
    assert responder.requests[-1].body[0]["properties"] == {"event_code": 2}
    result = await command(rec, device_id, b'{"upload_interval": 10, "transaction": 2}')
    assert (result["transaction"], result["status"]) == (2, "ok")
    assert sim.devices[device_id].settings["upload_interval"] == {"upload_interval": 10}


ERRORS = [
    (b"{oops", None, "invalid_json"),
    (b'{"fly": true, "transaction": "e-1"}', None, "unknown_command"),
    (b'{"upload_interval": 0, "transaction": "e-2"}', None, "invalid_value"),
    (b"OPEN", "lock", "invalid_value"),
    (b'{"command": "restart", "x": ' + b"1" * 2000 + b"}", None, "payload_too_large"),
]


async def test_every_error_yields_one_result_and_nothing_upstream(
        commanding: tuple[Bridge, Recorder], sim: Simulator, responder: Responder) -> None:
    _, rec = commanding
    device_id = list(sim.devices)[2]
    before = len(commands_sent(responder.requests))
    for payload, entity, code in ERRORS:
        result = await command(rec, device_id, payload, entity)
        assert (result["status"], result["code"]) == ("error", code), result
        assert result["error"]
    # a device outside the selection / unknown to flespi
    result = await command(rec, 4242, b'{"command": "restart", "transaction": "x"}')
    assert (result["code"], result["transaction"]) == ("device_not_allowed", "x")
    # a repeated transaction is not executed twice
    ok = await command(rec, device_id, b'{"command": "restart", "transaction": "dup"}')
    assert ok["status"] == "ok"
    again = await command(rec, device_id, b'{"command": "restart", "transaction": "dup"}')
    assert (again["status"], again["code"]) == ("error", "duplicate")
    assert len(commands_sent(responder.requests)) == before + 1
    # exactly one result per request: the results so far match the requests one to one
    results = [m.json() for m in rec.messages if m.topic.endswith("/result")]
    assert len(results) == len(ERRORS) + 3


async def test_rate_limit(commanding: tuple[Bridge, Recorder], sim: Simulator,
                          responder: Responder) -> None:
    _, rec = commanding
    device_id = next(iter(sim.devices))
    codes = [(await command(rec, device_id, b'{"command": "restart"}'))["code"]
             for _ in range(5)]
    assert codes[:3] == [None, None, None]  # the default burst of 3 ...
    assert "rate_limited" in codes[3:]      # ... then 1 per second
    assert sum(r.uri.endswith("/commands") for r in responder.requests) == codes.count(None)


async def test_flespi_errors_and_timeouts(commanding: tuple[Bridge, Recorder], sim: Simulator,
                                         responder: Responder) -> None:
    _, rec = commanding
    ids = list(sim.devices)
    responder.fail_next = (400, "device is busy")
    result = await command(rec, ids[0], b'{"command": "restart", "transaction": "f"}')
    assert (result["code"], result["transaction"]) == ("flespi_error", "f")
    assert "device is busy" in result["error"]
    await sim.set_connected(ids[1], False)
    result = await command(rec, ids[1], b'{"command": "restart"}')
    assert result["code"] == "flespi_error"
    assert "not connected" in result["error"]
    responder.silent = True
    result = await command(rec, ids[2], b'{"command": "restart"}')
    assert result["code"] == "timeout"
    assert TOKEN not in str(rec.messages)


async def test_read_only_refuses_everything(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                            sim: Simulator, responder: Responder,
                                            bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(make_settings(upstream, local,
                                                commands={**PROFILES, "read_only": True}))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    async with Recorder(local, [f"{BASE}/+/result"]) as rec:
        result = await command(rec, next(iter(sim.devices)), b'{"lock": false}')
    assert result["code"] == "read_only"
    assert commands_sent(responder.requests) == []


async def test_upstream_disconnected(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                     sim: Simulator, responder: Responder,
                                     bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(make_settings(upstream, local, commands=PROFILES))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    upstream.kill()
    async with Recorder(local, [f"{BASE}/+/result"]) as rec:
        result = await command(rec, next(iter(sim.devices)), b'{"command": "restart"}')
    assert result["code"] == "upstream_disconnected"


async def test_malformed_local_payloads_never_crash_the_bridge(commanding: tuple[Bridge, Recorder],
                                                               sim: Simulator,
                                                               responder: Responder) -> None:
    bridge, rec = commanding
    device_id = next(iter(sim.devices))
    corpus = [
        b"", b"\x00" * 50, b"null", b"[]", b'"LOCK"', b"1e999", b'{"lock": null}',
        b'{"command": ["restart"]}', b'{"transaction": "only"}', "{\"lock\": \"\u202e\"}".encode(),
        b'{"command": "restart", "value": {"deep": [[[[[[1]]]]]]}}', b"{" * 500,
    ]
    before = len(commands_sent(responder.requests))
    for payload in corpus:
        for entity in (None, "lock", "upload_interval"):
            result = await command(rec, device_id, payload, entity)
            assert result["status"] == "error", (payload, entity, result)
    assert len(commands_sent(responder.requests)) == before
    bridge.commands.gateway.limits.devices.clear()  # many requests: refill its bucket
    ok = await command(rec, device_id, b'{"command": "restart"}')
    assert ok["status"] == "ok", ok  # still answering, and still executing
    assert bridge.ready()


ODD_ANSWERS = [
    (400, b'{"errors": 5}', "flespi_error"),           # crashed result(): no result at all
    (400, b'{"errors": [7, null, {"reason": ["x"]}]}', "flespi_error"),
    (200, b"", "bad_response"),                        # was reported as ok
    (200, b"[1, 2]", "bad_response"),
    (200, b'{"result": ' + b"[" * 300 + b"]" * 300 + b"}", "bad_response"),  # too deep to pass on
    (200, b"[" * 2000 + b"]" * 2000, "bad_response"),   # too deep to read
    (200, b"not json", "bad_response"),
    (429, b'{"errors": [{"reason": "too many requests"}]}', "rate_limited"),
]


async def test_odd_flespi_answers_give_one_result_each(commanding: tuple[Bridge, Recorder],
                                                       sim: Simulator,
                                                       responder: Responder) -> None:
    bridge, rec = commanding
    device_id = list(sim.devices)[1]
    for n, (http_code, data, code) in enumerate(ODD_ANSWERS):
        responder.raw_next = (http_code, data)
        payload = orjson.dumps({"command": "restart", "transaction": f"odd-{n}"})
        # many requests to one device: refill its bucket rather than wait for it
        bridge.commands.gateway.limits.devices.clear()
        result = await command(rec, device_id, payload)
        assert (result["status"], result["code"], result["transaction"]) == (
            "error", code, f"odd-{n}"), (data[:40], result)
        assert result["error"]
        assert len(result["error"]) < 1000
    results = [m for m in rec.messages if m.topic.endswith("/result")]
    assert len(results) == len(ODD_ANSWERS)
    assert sum(r.uri.endswith("/commands") for r in responder.requests) == len(ODD_ANSWERS)
    assert bridge.ready()


async def test_429_is_rate_limited(commanding: tuple[Bridge, Recorder], sim: Simulator,
                                   responder: Responder) -> None:
    _, rec = commanding
    responder.fail_next = (429, "too many requests")
    result = await command(rec, next(iter(sim.devices)), b'{"command": "restart"}')
    assert (result["code"], result["status"]) == ("rate_limited", "error")
    assert "too many requests" in result["error"]


async def test_clearing_a_retained_command_executes_nothing(commanding: tuple[Bridge, Recorder],
                                                            sim: Simulator,
                                                            responder: Responder) -> None:
    """`mosquitto_pub -r -n` on a command topic delivers an empty payload: never a PRESS."""
    _, rec = commanding
    device_id = next(iter(sim.devices))
    before = len(commands_sent(responder.requests))
    for entity in ("restart", "lock", "upload_interval", None):
        result = await command(rec, device_id, b"", entity, retain=True)
        assert (result["code"], result["error"]) == ("invalid_payload", "empty payload")
    result = await command(rec, device_id, b"PRESS", entity="restart")
    assert result["status"] == "ok"
    assert len(commands_sent(responder.requests)) == before + 1


@pytest.mark.parametrize("transport", ["mqtt", "http"])
async def test_a_command_in_flight_at_shutdown_gets_one_honest_result(
        transport: str, upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder) -> None:
    """flespi is slow to answer a lock command and the bridge is stopped (what SIGTERM
    does) with a short grace period: the requester hears back once, that the command may
    or may not have been executed; before, the cancelled task published nothing."""
    commands: dict[str, Any] = {**PROFILES, "transport": transport, "timeout": 30}
    if transport == "http":
        commands["http_url"] = await responder.serve_http()
    bridge = Bridge(make_settings(upstream, local, commands=commands,
                                  shutdown={"grace": 0.5}))
    await bridge.start()
    stopped = False
    try:
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        await names_looked_up(responder.requests)
        device_id = next(iter(sim.devices))
        async with Recorder(local, [f"{BASE}/+/result"]) as rec:
            responder.delay = 60  # flespi takes its time
            await rec.publish(f"{BASE}/{device_id}/set", b'{"lock": true, "transaction": "t"}',
                              qos=1)
            await wait_until(lambda: commands_sent(responder.requests),
                             what="the command sent to flespi")
            await bridge.stop()
            stopped = True
            results = [m.json() for m in rec.messages if m.topic.endswith("/result")]
            assert len(results) == 1, results
            assert results[0]["transaction"] == "t"
            assert results[0]["code"] == "interrupted"
            assert "may or may not have been executed" in results[0]["error"]
    finally:
        responder.delay = 0
        if not stopped:
            await bridge.stop()


async def test_sigterm_with_a_command_waiting_for_flespi_answers_it_once(
        tmp_path: Path, upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, procs: Procs) -> None:
    """The reproduced failure, on a real process: `commands.transport = "http"`, flespi
    slow to answer, SIGTERM: one result, `interrupted`, and a clean exit."""
    url = await responder.serve_http()
    bridge = procs(BridgeProcess(tmp_path, upstream, local, log={"level": "INFO"},
                                 shutdown={"grace": 0.5},
                                 commands={**PROFILES, "transport": "http", "http_url": url,
                                           "timeout": 30}))
    device_id = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/+/result", f"{BASE}/bridge/state"]) as rec:
        bridge.start()
        await rec.wait_for(lambda: rec.latest.get(f"{BASE}/bridge/state")
                           and rec.latest[f"{BASE}/bridge/state"].payload == b"online",
                           timeout=20, what="online")
        await names_looked_up(responder.requests, timeout=20)
        responder.delay = 60
        await rec.publish(f"{BASE}/{device_id}/set", b'{"command": "restart"}', qos=1)
        await wait_until(lambda: commands_sent(responder.requests),
                         what="the command sent to flespi")
        bridge.signal(signal.SIGTERM)
        proc = bridge.proc
        assert proc is not None
        await wait_until(lambda: proc.poll() is not None, timeout=20, what="exit")
        await rec.wait_for(lambda: rec.latest[f"{BASE}/bridge/state"].payload == b"offline",
                           what="offline")
    responder.delay = 0
    results = [m.json() for m in rec.messages if m.topic.endswith("/result")]
    assert [r["code"] for r in results] == ["interrupted"], results
    assert proc.returncode == 0


async def test_a_lock_waits_for_the_device_to_confirm(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    """flespi accepts an unlock (`executed: false`) long before the device reports it: the
    lock shows UNLOCKING until the telemetry does (never LOCKED in between), and the result
    is ok only then. A device that never reports: back to its reported state after
    `commands.confirm_timeout`, result `unconfirmed`."""
    bridge = await bridge_factory(make_settings(upstream, local, commands={
        **PROFILES, "timeout": 5, "confirm_timeout": 3}))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    device_id = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/+/result", f"{BASE}/+/lock/state"]) as rec:
        await rec.wait_for(lambda: lock_states(rec, device_id) == ["LOCKED"], what="LOCKED")
        responder.report_after = 1.0
        result = await command(rec, device_id, "UNLOCK", entity="lock")
        assert (result["status"], result["code"]) == ("ok", None), result
        assert sim.devices[device_id].value("lock.status") is False
        await rec.wait_for(lambda: lock_states(rec, device_id)[-1] == "UNLOCKED",
                           what="UNLOCKED")
        assert lock_states(rec, device_id) == ["LOCKED", "UNLOCKING", "UNLOCKED"]

        responder.report_after = None  # accepted by flespi, never reported by the device
        result = await command(rec, device_id, "LOCK", entity="lock")
        assert (result["status"], result["code"]) == ("error", "unconfirmed"), result
        assert "not confirmed by the device" in result["error"]
        await rec.wait_for(lambda: lock_states(rec, device_id)[-1] == "UNLOCKED",
                           what="back to the reported state")
        assert lock_states(rec, device_id) == ["LOCKED", "UNLOCKING", "UNLOCKED", "LOCKING",
                                               "UNLOCKED"]
