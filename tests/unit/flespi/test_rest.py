"""The REST transports at the unit level: answer shapes, MQTT replies (chunks, odd
`http_code` properties, oversize answers), and whether a failed request was sent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from bridge.exceptions import RestError, UpstreamError
from bridge.flespi import rest as rest_module
from bridge.flespi.rest import HttpRest, MqttRest, RestResponse

PREFIX = "bridge/replies/"


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


# -- RestResponse.result: any JSON shape -----------------------------------------------------

@pytest.mark.parametrize(("code", "body", "result"), [
    (200, {"result": [{"id": 1}]}, [{"id": 1}]),
    (200, {"result": None}, None),
    (201, {"result": [], "errors": []}, []),
])
def test_result_of_good_answers(code: int, body: Any, result: Any) -> None:
    assert RestResponse(code, body).result() == result


@pytest.mark.parametrize(("code", "body", "error", "words"), [
    (200, None, "bad_response", "no body"),                   # empty 200: not ok
    (200, {}, "bad_response", "without result"),
    (200, {"res": 1}, "bad_response", "without result"),
    (200, [1, 2], "bad_response", "list"),
    (200, "ok", "bad_response", "str"),
    (200, 5, "bad_response", "int"),
    (204, None, "bad_response", "no body"),
    (200, {"result": [], "errors": [{"reason": "half done"}]}, "flespi_error", "half done"),
    (400, {"errors": 5}, "flespi_error", "5"),                # crashed with a TypeError
    (400, {"errors": "busy"}, "flespi_error", "busy"),
    (400, {"errors": {"reason": "gone"}}, "flespi_error", "gone"),
    (400, {"errors": [5, None, "x", [1], {"code": 3}]}, "flespi_error", '{"code":3}'),
    (400, {"errors": [{"reason": {"deep": True}}]}, "flespi_error", "deep"),
    (400, {"errors": [{"reason": orjson.loads(nested(300))}]}, "flespi_error", "<list>"),
    (400, {"errors": []}, "flespi_error", "no reason given"),
    (400, None, "flespi_error", "no reason given"),
    (400, [1], "flespi_error", "no reason given"),
    (500, "text", "flespi_error", "500"),
    (429, {"errors": [{"reason": "slow down"}]}, "rate_limited", "slow down"),
    (429, None, "rate_limited", "429"),
])
def test_result_of_odd_answers(code: int, body: Any, error: str, words: str) -> None:
    with pytest.raises(RestError) as err:
        RestResponse(code, body).result()
    assert err.value.code == error
    assert words in err.value.message
    assert err.value.sent  # flespi answered: it was sent


def test_reasons_are_bounded() -> None:
    body = {"errors": [{"reason": "x" * 10_000}] * 50}
    with pytest.raises(RestError) as err:
        RestResponse(400, body).result()
    assert len(err.value.message) < 2000
    assert "and 45 more" in err.value.message


# -- MqttRest on a stand-in upstream ----------------------------------------------------------

class FakeUpstream:
    def __init__(self, *, connected: bool = True, fail: bool = False) -> None:
        self.connected = connected
        self.fail = fail
        self.published: list[tuple[str, bytes, dict[str, Any]]] = []
        self.event = asyncio.Event()

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        if self.fail:
            raise UpstreamError("publish failed")
        self.published.append((topic, payload, kwargs))
        self.event.set()


async def request(rest: MqttRest, up: FakeUpstream) -> tuple[asyncio.Task[RestResponse], str]:
    """Start a call and return it with the response topic it asked for."""
    task = asyncio.create_task(rest.call("post", "gw/devices/1/commands", [{}], 5))
    await asyncio.wait_for(up.event.wait(), 5)
    return task, up.published[-1][2]["response_topic"]


def reply(rest: MqttRest, topic: str, data: bytes, code: str | None, size: int = 0,
          extra: Sequence[tuple[str, str]] = ()) -> None:
    chunks = [data[i:i + size] for i in range(0, len(data), size)] if size else [data]
    chunks = chunks or [b""]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        props = [*extra, ("http_code", code)] if last and code is not None else list(extra)
        assert rest.on_reply(topic, chunk, props)


async def test_mqtt_chunks_are_joined() -> None:
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, topic = await request(rest, up)
    assert topic.startswith(PREFIX + "rest/")
    data = orjson.dumps({"result": [{"id": n, "name": "x" * 30} for n in range(20)]})
    reply(rest, topic, data, "200", size=7, extra=[("other", "1")])
    answer = await asyncio.wait_for(task, 5)
    assert answer.http_code == 200
    assert len(answer.result()) == 20
    assert rest.in_flight == 0
    assert not rest.on_reply("elsewhere/x", b"", [])
    assert rest.on_reply(topic, b"late", [("http_code", "200")])  # stale answer: ignored


async def test_a_request_is_never_left_for_the_session_to_replay() -> None:
    """Issue 21: gmqtt keeps every unacknowledged QoS 1 PUBLISH and sends it again when it
    reconnects with the (persistent) session present, so a command that flespi had run
    before the connection dropped ran a second time. At QoS 0 it is never kept."""
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, topic = await request(rest, up)
    assert up.published[-1][2]["qos"] == 0
    reply(rest, topic, b'{"result": []}', "200")
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("code", ["", "abc", "2e2", "20", "2000", "-200", "99", "600",
                                  "٢٠٠", "9" * 5000, "200.0", "0x10"])
async def test_mqtt_odd_http_code_is_bad_response(code: str) -> None:
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, topic = await request(rest, up)
    reply(rest, topic, b'{"result": []}', code)
    with pytest.raises(RestError) as err:
        await asyncio.wait_for(task, 5)
    assert (err.value.code, err.value.sent) == ("bad_response", True)
    assert len(err.value.message) < 200


async def test_mqtt_http_code_with_spaces_is_read() -> None:
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, topic = await request(rest, up)
    reply(rest, topic, b'{"result": 1}', " 200 ")
    assert (await asyncio.wait_for(task, 5)).result() == 1


@pytest.mark.parametrize(("data", "code"), [
    (b"not json", "bad_response"),
    (b"\xff\xfe", "bad_response"),
    (nested(2000), "bad_response"),  # deeper than orjson reads
])
async def test_mqtt_unreadable_bodies(data: bytes, code: str) -> None:
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, topic = await request(rest, up)
    reply(rest, topic, data, "200", size=100)
    with pytest.raises(RestError) as err:
        await asyncio.wait_for(task, 5)
    assert err.value.code == code


async def test_mqtt_oversize_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rest_module, "MAX_RESPONSE", 1000)
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, topic = await request(rest, up)
    reply(rest, topic, orjson.dumps({"result": "x" * 5000}), "200", size=300)
    with pytest.raises(RestError) as err:
        await asyncio.wait_for(task, 5)
    assert err.value.code == "bad_response"
    assert "larger than 1000 bytes" in err.value.message
    assert rest.in_flight == 0


async def test_mqtt_not_sent_when_not_connected_or_publish_fails() -> None:
    for up in (None, FakeUpstream(connected=False), FakeUpstream(fail=True)):
        def current(up: FakeUpstream | None = up) -> FakeUpstream | None:
            return up
        rest = MqttRest(current, PREFIX)
        with pytest.raises(RestError) as err:
            await rest.call("post", "gw/devices/1/commands", [], 5)
        assert (err.value.code, err.value.sent) == ("upstream_disconnected", False)
        assert rest.in_flight == 0


async def test_mqtt_connection_lost_after_publishing_may_have_executed() -> None:
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    task, _ = await request(rest, up)
    rest.connection_lost()
    with pytest.raises(RestError) as err:
        await asyncio.wait_for(task, 5)
    assert (err.value.code, err.value.sent) == ("upstream_disconnected", True)
    assert "may or may not" in err.value.message


async def test_mqtt_timeout_was_sent() -> None:
    up = FakeUpstream()
    rest = MqttRest(lambda: up, PREFIX)
    with pytest.raises(RestError) as err:
        await rest.call("post", "gw/devices/1/commands", [], 0.01)
    assert (err.value.code, err.value.sent) == ("timeout", True)


# -- HttpRest: sent or not --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_http_connect_error_is_not_sent() -> None:
    rest = HttpRest(f"http://127.0.0.1:{free_port()}", "token")
    try:
        with pytest.raises(RestError) as err:
            await rest.call("post", "gw/devices/1/commands", [], 5)
    finally:
        await rest.close()
    assert (err.value.code, err.value.sent) == ("upstream_disconnected", False)
    assert "token" not in err.value.message


async def serve(answer: bytes | None) -> tuple[asyncio.Server, asyncio.Event]:
    """A server that reads a request, then answers raw bytes or drops the connection."""
    got = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got.set()
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), got


async def test_http_connection_dropped_after_sending_may_have_executed() -> None:
    server, got = await serve(None)
    port = server.sockets[0].getsockname()[1]
    rest = HttpRest(f"http://127.0.0.1:{port}", "token")
    try:
        with pytest.raises(RestError) as err:
            await rest.call("post", "gw/devices/1/commands", [], 5)
    finally:
        await rest.close()
        server.close()
    assert got.is_set()
    assert (err.value.code, err.value.sent) == ("upstream_disconnected", True)


@pytest.mark.parametrize(("raw", "code"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "bad_response"),
    (b'HTTP/1.1 400 Bad\r\nContent-Length: 13\r\n\r\n{"errors": 5}', "flespi_error"),
    (b'HTTP/1.1 429 Slow\r\nContent-Length: 2\r\n\r\n{}', "rate_limited"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope", "bad_response"),
])
async def test_http_odd_answers(raw: bytes, code: str) -> None:
    server, _ = await serve(raw)
    port = server.sockets[0].getsockname()[1]
    rest = HttpRest(f"http://127.0.0.1:{port}", "token")
    try:
        with pytest.raises(RestError) as err:
            (await rest.call("post", "gw/devices/1/commands", [], 5)).result()
    finally:
        await rest.close()
        server.close()
    assert (err.value.code, err.value.sent) == (code, True)


async def test_http_oversize_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rest_module, "MAX_RESPONSE", 100)
    body = orjson.dumps({"result": "x" * 500})
    server, _ = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    port = server.sockets[0].getsockname()[1]
    rest = HttpRest(f"http://127.0.0.1:{port}", "token")
    try:
        with pytest.raises(RestError) as err:
            await rest.call("post", "gw/devices/1/commands", [], 5)
    finally:
        await rest.close()
        server.close()
    assert err.value.code == "bad_response"
