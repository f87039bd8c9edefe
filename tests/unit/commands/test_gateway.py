"""The command gateway at the unit level: one result per request whatever flespi answers,
transaction memory, rate limits, number steps and empty payloads."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import REPO

from bridge.commands.gateway import (
    INVALID_INPUT,
    RESULT_CODES,
    CommandGateway,
    parse_entity_command,
    parse_set,
)
from bridge.config.profiles import CommandSettings, CommandSpec
from bridge.core.store import Device, Info
from bridge.exceptions import CommandError, RestError
from bridge.flespi.rest import MqttRest, RestResponse
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
PROFILE = CommandSettings(**PROFILES).profile(DEVICE_TYPE_ID)
DEVICES = (101, 102)
RESTART = b'{"command": "restart"}'
OK = RestResponse(200, {"result": [{"executed": True}]})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Answer = RestResponse | BaseException | Callable[[], Any]


class ScriptedRest:
    """Answers each call with the next scripted answer (a response, or an exception to
    raise); an asyncio.Event in the script holds the call until it is set."""

    def __init__(self, *answers: Answer | asyncio.Event) -> None:
        self.answers = list(answers)
        self.calls: list[Any] = []
        self.started = asyncio.Event()

    async def call(self, method: str, uri: str, body: Any, timeout: float) -> RestResponse:
        self.calls.append(body)
        self.started.set()
        answer = self.answers.pop(0) if self.answers else OK
        if isinstance(answer, asyncio.Event):
            await answer.wait()
            answer = self.answers.pop(0) if self.answers else OK
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, RestResponse)
        return answer


def gateway(rest: Any, device: Callable[[int], Device | None] | None = None,
            **overrides: Any) -> tuple[CommandGateway, list[dict[str, Any]], list[str], Clock]:
    published: list[dict[str, Any]] = []
    counted: list[str] = []

    async def publish(_device: int, outcome: dict[str, Any]) -> None:
        published.append(orjson.loads(orjson.dumps(outcome)))  # as the service encodes it

    devices = {i: Device(i, info=Info(name="x", device_type_id=DEVICE_TYPE_ID))
               for i in DEVICES}
    gw = CommandGateway(CommandSettings(**PROFILES, **overrides), rest,
                        device=device or devices.get, publish_result=publish,
                        count=counted.append)
    clock = Clock()
    gw.limits.clock = clock
    return gw, published, counted, clock


def tx(name: str) -> bytes:
    return orjson.dumps({"command": "restart", "transaction": name})


# -- exactly one result, whatever flespi answers -----------------------------------------------

@pytest.mark.parametrize(("answer", "code"), [
    (RestResponse(400, {"errors": 5}), "flespi_error"),
    (RestResponse(400, {"errors": [None, 3, {"reason": ["x"]}]}), "flespi_error"),
    (RestResponse(200, None), "bad_response"),
    (RestResponse(200, {"errors": []}), "bad_response"),
    (RestResponse(200, [1]), "bad_response"),
    (RestResponse(200, {"result": orjson.loads(b"[" * 600 + b"]" * 600)}), "bad_response"),
    (RestResponse(200, {"result": 2**70}), "bad_response"),  # orjson writes 64-bit ints only
    (RestResponse(200, {"result": {1: "non-string key"}}), "bad_response"),
    (RestResponse(429, {"errors": [{"reason": "too many requests"}]}), "rate_limited"),
    (RestError("timeout", "no answer"), "timeout"),
    (ValueError("a bug"), "internal_error"),
    (KeyError("a bug"), "internal_error"),
])
async def test_any_answer_gives_one_result(answer: Answer, code: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    gw, published, counted, _ = gateway(ScriptedRest(answer))
    outcome = await gw.handle(DEVICES[0], None, tx("a"))
    assert published == [orjson.loads(orjson.dumps(outcome))]
    assert (outcome["status"], outcome["code"], outcome["transaction"]) == ("error", code, "a")
    assert outcome["error"]
    assert outcome["response"] is None
    assert counted == [code]
    if code == "internal_error":
        assert any(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)


async def test_a_bug_before_sending_is_an_internal_error(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    def broken(_device_id: int) -> Device | None:
        raise RuntimeError("store is broken")

    gw, published, counted, _ = gateway(ScriptedRest(), device=broken)
    outcome = await gw.handle(DEVICES[0], "restart", b"PRESS")
    assert published == [outcome]
    assert (outcome["code"], outcome["command"]) == ("internal_error", "restart")
    assert counted == ["internal_error"]
    assert "store is broken" in caplog.text  # the traceback is logged


# -- transactions ------------------------------------------------------------------------------

async def test_not_sent_request_can_be_retried_with_the_same_transaction() -> None:
    rest = ScriptedRest(RestError("upstream_disconnected", "not connected", sent=False))
    gw, published, _, _ = gateway(rest)
    first = await gw.handle(DEVICES[0], None, tx("retry"))
    assert first["code"] == "upstream_disconnected"
    second = await gw.handle(DEVICES[0], None, tx("retry"))
    assert second["status"] == "ok"
    assert len(rest.calls) == 2
    third = await gw.handle(DEVICES[0], None, tx("retry"))
    assert third["code"] == "duplicate"
    assert len(rest.calls) == 2
    assert len(published) == 3


@pytest.mark.parametrize("error", [
    RestError("upstream_disconnected", "lost after publishing", sent=True),
    RestError("timeout", "no answer"),
    RestError("flespi_error", "device is busy", http_code=400),
    RuntimeError("unknown: may have been sent"),
])
async def test_possibly_sent_request_is_not_retried(error: BaseException) -> None:
    rest = ScriptedRest(error)
    gw, _, _, _ = gateway(rest)
    first = await gw.handle(DEVICES[0], None, tx("once"))
    assert first["status"] == "error"
    again = await gw.handle(DEVICES[0], None, tx("once"))
    assert again["code"] == "duplicate"
    assert len(rest.calls) == 1


async def test_duplicate_while_in_flight_is_refused() -> None:
    hold = asyncio.Event()
    rest = ScriptedRest(hold, OK)
    gw, published, _, _ = gateway(rest)
    first = asyncio.create_task(gw.handle(DEVICES[0], None, tx("slow")))
    await asyncio.wait_for(rest.started.wait(), 5)
    dup = await gw.handle(DEVICES[0], None, tx("slow"))
    assert dup["code"] == "duplicate"
    other_device = await gw.handle(DEVICES[1], None, tx("slow"))  # ids are per device
    assert other_device["status"] == "ok"
    hold.set()
    assert (await asyncio.wait_for(first, 5))["status"] == "ok"
    assert len(rest.calls) == 2
    assert len(published) == 3


async def test_in_flight_then_not_sent_releases_the_transaction() -> None:
    hold = asyncio.Event()
    rest = ScriptedRest(hold, RestError("upstream_disconnected", "x", sent=False))
    gw, _, _, _ = gateway(rest)
    first = asyncio.create_task(gw.handle(DEVICES[0], None, tx("t")))
    await asyncio.wait_for(rest.started.wait(), 5)
    assert (await gw.handle(DEVICES[0], None, tx("t")))["code"] == "duplicate"
    hold.set()
    assert (await asyncio.wait_for(first, 5))["code"] == "upstream_disconnected"
    assert (await gw.handle(DEVICES[0], None, tx("t")))["status"] == "ok"


async def test_dedup_window_expires() -> None:
    rest = ScriptedRest()
    gw, _, _, clock = gateway(rest, dedup_window=60, device_burst=100)
    assert (await gw.handle(DEVICES[0], None, tx("w")))["status"] == "ok"
    clock.now += 59
    assert (await gw.handle(DEVICES[0], None, tx("w")))["code"] == "duplicate"
    clock.now += 1.5
    assert (await gw.handle(DEVICES[0], None, tx("w")))["status"] == "ok"
    assert len(rest.calls) == 2


async def test_dedup_window_zero_remembers_nothing() -> None:
    rest = ScriptedRest()
    gw, _, _, _ = gateway(rest, dedup_window=0, device_burst=100)
    for _ in range(3):
        assert (await gw.handle(DEVICES[0], None, tx("z")))["status"] == "ok"
    assert len(rest.calls) == 3


# -- rate limits -------------------------------------------------------------------------------

async def test_global_limit() -> None:
    rest = ScriptedRest()
    gw, _, _, clock = gateway(rest, device_burst=10, global_burst=3, global_rate=1)
    codes = [(await gw.handle(DEVICES[i % 2], None, RESTART))["code"] for i in range(5)]
    assert codes == [None, None, None, "rate_limited", "rate_limited"]
    clock.now += 1.01
    assert (await gw.handle(DEVICES[0], None, RESTART))["code"] is None
    assert len(rest.calls) == 4


async def test_refused_by_the_global_limit_spends_no_device_token() -> None:
    rest = ScriptedRest()
    gw, _, _, clock = gateway(rest, device_burst=2, device_rate=0.001,
                              global_burst=1, global_rate=1)
    assert (await gw.handle(DEVICES[0], None, RESTART))["code"] is None
    for _ in range(5):  # the global bucket is empty: each is refused
        assert (await gw.handle(DEVICES[0], None, RESTART))["code"] == "rate_limited"
    clock.now += 1.01  # the global bucket refills; the device still has its second token
    assert (await gw.handle(DEVICES[0], None, RESTART))["code"] is None
    assert len(rest.calls) == 2


async def test_refused_by_the_device_limit_spends_no_global_token() -> None:
    rest = ScriptedRest()
    gw, _, _, _ = gateway(rest, device_burst=1, device_rate=0.001, global_burst=2,
                          global_rate=0.001)
    assert (await gw.handle(DEVICES[0], None, RESTART))["code"] is None
    for _ in range(5):
        assert (await gw.handle(DEVICES[0], None, RESTART))["code"] == "rate_limited"
    assert (await gw.handle(DEVICES[1], None, RESTART))["code"] is None


# -- number steps ------------------------------------------------------------------------------

def number(**fields: Any) -> dict[str, CommandSpec]:
    spec = {"component": "number", "command": "setting.d1.set", "value_property": "v",
            **fields}
    return {"n": CommandSpec(**spec)}


@pytest.mark.parametrize(("fields", "value", "expected"), [
    ({"min": 5, "max": 3600, "step": 5}, "15", 15),
    ({"min": 5, "max": 3600, "step": 5}, "5", 5),
    ({"min": 5, "max": 3600, "step": 5}, "3600.0", 3600),
    ({"min": 1, "max": 100, "step": 3}, "4", 4),
    ({"min": 1, "max": 100, "step": 3}, "100", 100),
    ({"min": 0, "max": 1, "step": 0.1}, "0.3", 0.3),
    ({"min": 0, "max": 1, "step": 0.1}, "0.7", 0.7),
    ({"min": 0.5, "max": 10, "step": 0.25}, "1.25", 1.25),
    ({"min": -1, "max": 1, "step": 0.5}, "-0.5", -0.5),
])
def test_number_on_a_step(fields: dict[str, Any], value: str, expected: Any) -> None:
    got = parse_entity_command(number(**fields), "n", value.encode()).value
    assert got == expected
    assert type(got) is type(expected)
    assert parse_set(number(**fields), orjson.dumps({"n": float(value)})).value == expected


@pytest.mark.parametrize(("fields", "value", "nearest"), [
    ({"min": 5, "max": 3600, "step": 5}, "7", "5 or 10"),
    ({"min": 5, "max": 3600, "step": 5}, "3599", "3595 or 3600"),
    ({"min": 1, "max": 100, "step": 3}, "3", "1 or 4"),
    ({"min": 0, "max": 1, "step": 0.1}, "0.35", "0.3 or 0.4"),
    ({"min": 0.5, "max": 10, "step": 0.25}, "1.3", "1.25 or 1.5"),
])
def test_number_off_the_step(fields: dict[str, Any], value: str, nearest: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_entity_command(number(**fields), "n", value.encode())
    assert err.value.code == "invalid_value"
    assert "not a valid step" in err.value.message
    assert f"nearest: {nearest}" in err.value.message


# -- empty payloads ----------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b" ", b"\n\t ", "\u00a0".encode()])
@pytest.mark.parametrize("entity", [None, "restart", "lock", "upload_interval"])
async def test_empty_payload_never_executes(payload: bytes, entity: str | None) -> None:
    rest = ScriptedRest()
    gw, published, _, _ = gateway(rest)
    outcome = await gw.handle(DEVICES[0], entity, payload)
    assert (outcome["code"], outcome["error"]) == ("invalid_payload", "empty payload")
    assert rest.calls == []
    assert published == [outcome]


def test_button_takes_press() -> None:
    assert parse_entity_command(PROFILE, "restart", b"PRESS").value is None
    with pytest.raises(CommandError):
        parse_entity_command(PROFILE, "restart", b"press now")


def test_every_result_code_is_documented() -> None:
    """Users write automations on result codes: docs/commands.md's table lists exactly these."""
    page = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    table = page[page.index("| code | meaning |"):]
    table = table[:table.index("\n\n")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    assert INVALID_INPUT <= RESULT_CODES
    assert documented == RESULT_CODES


# -- any answer over the MQTT transport: exactly one result, and it is JSON --------------------

class AnsweringUpstream:
    """Answers every publish on the next loop turn with the given chunks and http_code."""

    connected = True

    def __init__(self) -> None:
        self.rest: MqttRest | None = None
        self.answer: tuple[str | None, list[bytes]] = ("200", [b""])

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        code, chunks = self.answer
        loop = asyncio.get_running_loop()
        for i, chunk in enumerate(chunks):
            props = [("http_code", code)] if i == len(chunks) - 1 and code is not None else []
            assert self.rest is not None
            loop.call_soon(self.rest.on_reply, kwargs["response_topic"], chunk, props)


json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_leaves,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["result", "errors", "reason", "code"]) | st.text(max_size=4), c,
        max_size=3),
    max_leaves=10)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),  # big ints and NaN included
    st.dictionaries(st.sampled_from(["result", "errors"]), json_values, max_size=2).map(
        lambda v: json.dumps(v).encode()),
    st.integers(0, 1100).map(lambda n: b'{"result": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(0, 1100).map(lambda n: b'{"errors": ' + b"{\"a\":" * n + b"1" + b"}" * n
                             + b"}"),
    st.sampled_from([b"", b'{"errors": 5}', b'{"result": null}', b"null",
                     b'{"result": 123456789012345678901234567890}']),
)
http_codes = st.one_of(
    st.sampled_from(["200", "201", "204", "400", "404", "429", "500", " 200", "2e2", "",
                     "abc", "٢٠٠", "-1", "0"]),
    st.integers(-1000, 1000).map(str),
    st.text(max_size=5),
    st.none(),  # never a final chunk: the request times out
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=http_codes, body=bodies, size=st.integers(1, 64))
def test_any_answer_over_mqtt_gives_exactly_one_json_result(code: str | None, body: bytes,
                                                            size: int) -> None:
    async def run() -> tuple[dict[str, Any], list[bytes]]:
        up = AnsweringUpstream()
        rest = MqttRest(lambda: up, "replies/")
        up.rest = rest
        up.answer = (code, [body[i:i + size] for i in range(0, len(body), size)] or [b""])
        published: list[bytes] = []

        async def publish(_device: int, outcome: dict[str, Any]) -> None:
            published.append(orjson.dumps(outcome))  # what the service does

        dev = Device(7, info=Info(name="x", device_type_id=DEVICE_TYPE_ID))
        timeout = 0.01 if code is None else 5  # no final chunk: let it time out
        gw = CommandGateway(CommandSettings(**PROFILES, timeout=timeout),
                            rest, device=lambda i: dev if i == 7 else None,
                            publish_result=publish, count=lambda _: None)
        outcome = await gw.handle(7, None, b'{"command": "restart", "transaction": 1}')
        assert rest.in_flight == 0
        return outcome, published

    outcome, published = asyncio.run(run())
    assert len(published) == 1
    parsed = orjson.loads(published[0])
    assert parsed == orjson.loads(orjson.dumps(outcome))
    assert parsed["transaction"] == 1
    assert (parsed["status"] == "ok") == (parsed["code"] is None)
    assert parsed["code"] in RESULT_CODES | {None}
    if parsed["status"] == "ok":
        assert code is not None
        assert 200 <= int(code) < 300
        assert b'"result"' in body
    if body in (b"", b"null", b'{"errors": 5}'):
        assert parsed["status"] == "error"
