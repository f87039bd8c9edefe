"""The HTTP stream port faces the internet ("Hardening the doors"): idle and half-sent
connections are closed within their deadline (408 to a client that sent part of a request),
connections beyond the caps are answered 503 at once, a flood leaves `/healthz` and
authorized batches alone (a quarter of the slots is kept for clients that pushed), TLS
handshakes under way count against the caps, and malformed requests cannot fill the log.
Real Mosquitto brokers, the bridge in-process, raw sockets on loopback only (the flood comes
from 127.0.0.2-127.0.0.9, the authorized batches from 127.0.0.1: all of 127/8 is loopback)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from support.helpers import (
    BridgeFactory,
    BridgeProcess,
    Procs,
    make_settings,
    metric,
    server_certificate,
    wait_until,
)

from bridge.app.bridge import Bridge
from bridge.sim import brokers as mosquitto

AUTH = "Bearer stream-secret-0123456789"
PATH = "/flespi/stream"
P = "flespi_bridge_"
HEADER, BODY, IDLE = 1.0, 1.5, 1.0  # the deadlines of these tests, seconds
MARGIN = 1.5  # a deadline plus this: the socket must have seen EOF by then
HALF_SENT = f"POST {PATH} HTTP/1.1\r\nHost: x\r\n".encode()  # and then nothing


def doors(**extra: Any) -> dict[str, Any]:
    return {"enabled": True, "host": "127.0.0.1", "port": 0, "authorization": AUTH,
            "header_timeout": HEADER, "body_timeout": BODY, "keepalive_timeout": IDLE,
            **extra}


async def started(factory: BridgeFactory, upstream: mosquitto.Broker,
                  local: mosquitto.Broker, **stream: Any) -> Bridge:
    bridge = await factory(make_settings(upstream, local, stream=doors(**stream)))
    await asyncio.wait_for(bridge.local.connected.wait(), 20)
    await asyncio.wait_for(bridge.loaded.wait(), 20)
    return bridge


async def held(port: int, send: bytes, source: str = "127.0.0.1", limit: float = 10.0
               ) -> tuple[bytes, float]:
    """Connect from `source`, send `send`, then nothing: what the server answered until it
    closed, and after how many seconds (AssertionError if it still holds on after `limit`)."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(source, 0))
    try:
        if send:
            writer.write(send)
        try:
            answer = await asyncio.wait_for(reader.read(), limit)  # up to EOF
        except TimeoutError:
            raise AssertionError(f"a connection sending {send[:40]!r} still open after "
                                 f"{limit} s") from None
        except ConnectionResetError:
            answer = b"<reset>"
        return answer, time.monotonic() - began
    finally:
        writer.close()


async def closed(health_port: int, reason: str) -> float | None:
    """How many stream connections the bridge closed or refused for `reason` so far."""
    return await metric(health_port, P + "stream_connections_closed_total", reason=reason)


def partial_body() -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{").encode()


async def post(url: str, *, source: str = "127.0.0.1", verify: ssl.SSLContext | bool = True
               ) -> httpx.Response:
    batch = orjson.dumps([{"device.id": 21, "ident": "i21", "timestamp": time.time(),
                           "battery.level": 64}])
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=verify)
    async with httpx.AsyncClient(timeout=10, transport=transport) as http:
        return await http.post(url, content=batch, headers={"Authorization": AUTH})


async def test_slowloris_connections_are_closed_within_the_deadline(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    bridge = await started(bridge_factory, upstream, local)
    assert bridge.stream is not None
    assert bridge.health is not None
    port = bridge.stream.port
    limit = max(HEADER, BODY) + MARGIN
    idle = [held(port, b"", limit=limit) for _ in range(10)]
    half = [held(port, HALF_SENT, limit=limit) for _ in range(10)]
    body = [held(port, partial_body(), limit=limit) for _ in range(5)]
    results = await asyncio.gather(*idle, *half, *body)
    for answer, took in results[:10]:  # sent nothing: closed without a word
        assert answer == b""
        assert took <= HEADER + MARGIN
    for answer, took in results[10:20]:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert took <= HEADER + MARGIN
    for answer, took in results[20:]:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert took <= BODY + MARGIN
    health = bridge.health.port
    assert await closed(health, "header_timeout") == 20
    assert await closed(health, "body_timeout") == 5


async def test_idle_keepalive_connections_are_closed(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    bridge = await started(bridge_factory, upstream, local)
    assert bridge.stream is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.stream.port)
    body = orjson.dumps([{"device.id": 21, "timestamp": time.time(), "battery.level": 64}])
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    began = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), IDLE + MARGIN + 1)  # EOF: closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert IDLE - 0.2 <= time.monotonic() - began <= IDLE + MARGIN


async def test_a_refused_request_gets_its_answer_and_the_door(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    """A stranger's request refused (401, 405, 404) closes its connection at once: no
    stranger keeps a slot with one small request every few seconds."""
    bridge = await started(bridge_factory, upstream, local, keepalive_timeout=30)
    assert bridge.stream is not None
    for request in (f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n",
                    f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]",
                    "GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n"):
        answer, took = await held(bridge.stream.port, request.encode(), limit=5)
        assert answer[9:12] in (b"405", b"401", b"404"), answer[:40]
        assert b"Connection: close" in answer
        assert took < 5


async def test_junk_cannot_grow_the_bridges_memory(
        upstream: mosquitto.Broker, local: mosquitto.Broker, procs: Procs,
        tmp_path: Path) -> None:
    """32 unauthenticated connections from 4 addresses send 8 MB each of bytes that are
    not HTTP (or follow an Upgrade request): each is answered 400 (or closed) and nothing
    more of it is parsed or kept. The bridge (a process) grows by less than 64 MB at its
    peak; aiohttp alone kept ~15 MB a connection here (341 MB for these 32)."""
    port = mosquitto.free_port()
    bridge = procs(BridgeProcess(tmp_path, upstream, local, stream=doors(port=port),
                                 log={"level": "INFO"}).start())
    assert bridge.proc is not None
    await wait_for_port(port)
    before = _peak_rss_kb(bridge.proc.pid)
    upgrade = f"GET {PATH} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"

    async def spray(i: int) -> None:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 4}", 0))
        writer.write(upgrade.encode() if i % 2 else b"")
        try:
            for _ in range(128):  # 8 MB
                writer.write(b"z" * 65536)
                await asyncio.wait_for(writer.drain(), 10)
        except (OSError, TimeoutError):
            pass  # closed by the bridge: what it should do
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(spray(i) for i in range(32))), 60)
    grew = (_peak_rss_kb(bridge.proc.pid) - before) / 1024
    assert grew < 64, f"the bridge grew by {grew:.0f} MB at its peak"
    assert bridge.proc.poll() is None


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


async def wait_for_port(port: int) -> None:
    def answers() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    await wait_until(answers, timeout=30, what=f"the bridge's stream port {port}")


async def test_connections_beyond_the_caps_are_answered_503(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    bridge = await started(bridge_factory, upstream, local, max_connections=6,
                           max_connections_per_address=4)
    assert bridge.stream is not None
    assert bridge.health is not None
    port = bridge.stream.port
    same = [held(port, b"", "127.0.0.2") for _ in range(6)]  # 4 held, 2 refused
    others = [held(port, b"", f"127.0.0.{3 + i}") for i in range(3)]
    results = await asyncio.gather(*same)
    refused = [a for a, took in results if a.startswith(b"HTTP/1.1 503 ")]
    assert len(refused) == 2
    assert all(b"Retry-After: 1" in a for a in refused)
    results = await asyncio.gather(*[held(port, b"", "127.0.0.2") for _ in range(4)],
                                   *others)
    # 7 > 5: of the 6 slots, one (a quarter, rounded down) is kept for clients that pushed
    assert sum(a.startswith(b"HTTP/1.1 503 ") for a, _ in results) == 2
    health = bridge.health.port
    assert await closed(health, "per_address") == 2
    assert await closed(health, "connections") == 2


async def test_a_flood_leaves_healthz_and_authorized_batches_alone(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    """800 unauthenticated connections, idle or half-sent, from 8 addresses over a few
    seconds (at most 25), enough to take every one of the 64 slots: each closed within its
    deadline, and meanwhile /healthz answers 200 and a client that had pushed before gets
    200 for every batch (the 16 reserved slots)."""
    bridge = await started(bridge_factory, upstream, local, max_connections=64,
                           max_connections_per_address=8)
    assert bridge.stream is not None
    assert bridge.health is not None
    port, health = bridge.stream.port, bridge.health.port
    url = f"http://127.0.0.1:{port}{PATH}"
    began = time.monotonic()
    stop = asyncio.Event()
    assert (await post(url)).status_code == 200  # flespi pushed before the flood came

    async def flood() -> list[tuple[bytes, float]]:
        out: list[tuple[bytes, float]] = []
        for _wave in range(10):  # 10 waves of 80: 10 per address, at most 8 held
            attempts = [held(port, HALF_SENT if i % 2 else b"", f"127.0.0.{2 + i % 8}",
                             limit=HEADER + MARGIN) for i in range(80)]
            out += await asyncio.gather(*attempts)
        stop.set()
        return out

    async def legitimate() -> tuple[int, int]:
        probes = batches = 0
        async with httpx.AsyncClient(timeout=5) as http:
            while not stop.is_set():
                answer = await http.get(f"http://127.0.0.1:{health}/healthz")
                assert answer.status_code == 200
                probes += 1
                assert (await post(url)).status_code == 200
                batches += 1
        return probes, batches

    results, (probes, batches) = await asyncio.wait_for(
        asyncio.gather(flood(), legitimate()), 25)
    took = time.monotonic() - began
    assert len(results) == 800
    assert took <= 25
    assert probes >= 3
    assert batches >= 3
    for answer, seconds in results:
        assert seconds <= HEADER + MARGIN
        assert answer == b"" or answer.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 503 "))
    refused = sum(a.startswith(b"HTTP/1.1 503 ") for a, _ in results)
    assert refused >= 320  # of each wave's 80: 16 over the per-address cap, 16 over 48
    by_reason = [await closed(health, r)
                 for r in ("per_address", "connections")]
    assert sum(n or 0 for n in by_reason) == refused
    logging.getLogger(__name__).warning(
        "flood: 800 connections in %.1f s, %d refused 503 (per address, in all: %s), "
        "%d /healthz and %d batches answered 200 meanwhile", took, refused, by_reason,
        probes, batches)


async def test_tls_handshakes_under_way_count_against_the_caps(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    """With the built-in TLS, 40 connections that never finish their handshake (20 silent,
    20 stopping inside their ClientHello) from 2 addresses: the 6 strangers' slots of 8 are
    held until the header deadline, every other connection is closed at once, /healthz
    answers 200, and the client that had pushed still gets its batches in (the reserve)."""
    ca, cert_file, key_file = server_certificate(tmp_path)
    bridge = await started(bridge_factory, upstream, local, max_connections=8,
                           max_connections_per_address=8, cert_file=str(cert_file),
                           key_file=str(key_file))
    assert bridge.stream is not None
    assert bridge.health is not None
    port, health = bridge.stream.port, bridge.health.port
    client = ssl.create_default_context()
    ca.configure_trust(client)
    url = f"https://127.0.0.1:{port}{PATH}"
    assert (await post(url, verify=client)).status_code == 200
    hello = bytes.fromhex("16030100c8010000c40303")  # a ClientHello's first 11 bytes
    stalled = [held(port, hello if i % 2 else b"", f"127.0.0.{2 + i % 2}",
                    limit=HEADER + MARGIN) for i in range(40)]
    flood = asyncio.gather(*stalled)
    await wait_until(lambda: bridge.stats.stream_connections_closed["connections"] >= 34,
                     timeout=HEADER, what="the stalled handshakes beyond the cap closed")
    assert (await post(url, verify=client)).status_code == 200  # meanwhile
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"http://127.0.0.1:{health}/healthz")).status_code == 200
    results = await flood
    assert all(answer in (b"", b"<reset>") for answer, _ in results)  # no plain-text answer
    assert sorted(took > HEADER - 0.2 for _, took in results) == [False] * 34 + [True] * 6
    assert await closed(health, "header_timeout") == 6
    assert await closed(health, "connections") == 34
    assert await metric(health, P + "stream_connections_open") == 0


async def test_malformed_requests_cannot_fill_the_log(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    bridge = await started(bridge_factory, upstream, local)
    assert bridge.stream is not None
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    garbage = [b"POST /flespi/stream HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: " + b"x" * 9000 + b"\r\n\r\n",
               b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"]
    for i in range(60):
        answer, _ = await held(bridge.stream.port, garbage[i % 3])
        assert answer[8:13] == b" 400 " or answer == b"<reset>", answer[:80]
    from_aiohttp = [r for r in caplog.records if r.name.endswith(".aiohttp")]
    assert 1 <= len(from_aiohttp) <= 5, [r.getMessage()[:100] for r in from_aiohttp]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in from_aiohttp)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_expect_100_continue_is_answered_only_once_the_headers_pass(
        upstream: mosquitto.Broker, local: mosquitto.Broker,
        bridge_factory: BridgeFactory) -> None:
    """A client asking `Expect: 100-continue` with a wrong Authorization (or too big a body)
    gets the refusal at once, never a `100 Continue` inviting its body; an authorized one is
    told to go on and its batch is taken. An empty Expect skips nothing."""
    bridge = await started(bridge_factory, upstream, local)
    assert bridge.stream is not None
    port = bridge.stream.port
    body = orjson.dumps([{"device.id": 21, "timestamp": time.time(), "battery.level": 64}])

    def head(auth: str, expect: str = "100-continue", length: int = len(body)) -> bytes:
        return (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                f"Expect: {expect}\r\nContent-Length: {length}\r\n\r\n").encode()

    elsewhere = head(AUTH).replace(PATH.encode(), b"/elsewhere")
    for request, status in ((head("Bearer wrong"), b"401"), (head("", ""), b"401"),
                            (head(AUTH, length=10**9), b"413"), (elsewhere, b"404")):
        answer, _ = await held(port, request)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:60]
        assert b"100 Continue" not in answer
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(AUTH))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    writer.write(body)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    assert bridge.stats.invalid["stream", "unauthorized"] == 2
