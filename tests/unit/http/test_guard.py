"""The guard: what a refused or timed-out client reads, who counts as one client, the
reserve for clients that pushed, and TLS handshakes held to the caps and the deadline on
both event loops."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop
from aiohttp import web
from support.helpers import wait_until

from bridge.http.guard import REFUSED, TIMED_OUT, Guard
from bridge.http.seats import TRUSTED_MAX, Limits, client_key
from bridge.http.server import WebServer


@pytest.mark.parametrize(("answer", "status", "body"), [
    (REFUSED, b"503", b"too many connections; retry"),
    (TIMED_OUT, b"408", b"request took too long"),
])
def test_a_canned_answer_is_whole_http_with_its_exact_length(answer: bytes, status: bytes,
                                                             body: bytes) -> None:
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].split()[1] == status
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"Connection"] == b"close"
    assert int(headers[b"Content-Length"]) == len(rest)  # a client reads exactly the body
    assert rest == body


async def _refused_beyond_the_cap() -> bytes:
    """What a second client reads from a listener that takes one connection."""
    guard = Guard(Limits(max_connections=1, max_per_address=1), Counter(), "test.guard")
    server = WebServer(web.Application(), "127.0.0.1", 0, guard=guard)
    await server.start()
    try:
        _, held = await asyncio.open_connection("127.0.0.1", server.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = await asyncio.wait_for(reader.read(), 5)  # until the guard closes it
        writer.close()
        held.close()
        return answer
    finally:
        await server.stop()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_connection_beyond_the_cap_reads_the_whole_503_on_either_event_loop(
        run: Callable[[Coroutine[Any, Any, bytes]], bytes]) -> None:
    # the image and `flespi-bridge run` use uvloop when it is installed
    assert run(_refused_beyond_the_cap()) == REFUSED


async def _kilobyte(_: web.Request) -> web.Response:
    return web.Response(body=b"x" * 1024)


async def _a_client_that_never_reads(limits: Limits) -> tuple[float, int, bytes]:
    """Seconds until the guard cut a client that pipelines many requests (each answered 200
    with a kilobyte) and never reads the answers (a small receive buffer, set before
    connecting, so they back up to the server), how many write_timeout closes it counted,
    and what a new client gets."""
    closed: Counter[str] = Counter()
    app = web.Application()
    app.router.add_get("/", _kilobyte)
    server = WebServer(app, "127.0.0.1", 0, guard=Guard(limits, closed, "t.g"))
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket() as rude:
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            rude.setblocking(False)
            await loop.sock_connect(rude, ("127.0.0.1", server.port))
            await loop.sock_sendall(rude, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000)
            began = loop.time()
            await wait_until(lambda: closed["write_timeout"] > 0, timeout=30,
                             what="the client that never reads to be cut")
            took = loop.time() - began
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return took, closed["write_timeout"], answer
    finally:
        await server.stop()


def test_a_client_that_never_reads_its_answers_is_cut_and_frees_its_slot() -> None:
    limits = Limits(header_timeout=1.0, keepalive_timeout=1.0, max_connections=1,
                    max_per_address=1)
    took, cut, answer = asyncio.run(_a_client_that_never_reads(limits))
    assert cut == 1
    assert took < 1.0 + 5.0 + 3.0  # the stall deadline (or LINGER), with a margin
    assert answer.startswith(b"HTTP/1.1 404 ")  # the one slot is free again


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64"),  # the same subscriber
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack listener's IPv4 client
    ("fe80::1%eth0", "fe80::/64"),
    ("not an address", "not an address"),  # a unix socket's name: counted as itself
])
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_an_ipv6_subscriber_cannot_pass_the_per_address_cap_by_changing_address() -> None:
    guard = Guard(Limits(max_connections=100, max_per_address=3), Counter(), "t.g")
    answers = [guard.admit(f"2001:db8:0:7::{i:x}") for i in range(1, 6)]
    assert answers == [None, None, None, "per_address", "per_address"]
    assert guard.admit("2001:db8:0:8::1") is None  # the next /64 is someone else
    guard.release("2001:db8:0:7::2")
    assert guard.admit("2001:db8:0:7::99") is None  # a slot of the /64 came back


def test_the_reserved_slots_are_for_clients_that_pushed() -> None:
    guard = Guard(Limits(max_connections=8, max_per_address=8, reserved=2), Counter(), "t.g")
    strangers = [guard.admit("198.51.100.1") for _ in range(8)]
    assert strangers == [None] * 6 + ["connections"] * 2
    assert guard.admit("192.0.2.9") == "connections"  # flespi, before its first push
    guard.trust("192.0.2.9")
    assert [guard.admit("192.0.2.9") for _ in range(3)] == [None, None, "connections"]


def test_trust_is_bounded_and_the_oldest_forgotten_first() -> None:
    guard = Guard(Limits(max_connections=2, max_per_address=2, reserved=1), Counter(), "t.g")
    for i in range(TRUSTED_MAX + 1):
        guard.trust(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert not guard.trusted("10.0.0.0")
    assert guard.trusted("10.0.0.1")
    assert guard.trusted(f"10.0.{TRUSTED_MAX // 256 % 256}.{TRUSTED_MAX % 256}")


async def _tls_listener_with_one_slot(tmp: Path) -> tuple[bytes, bytes, int]:
    """A TLS listener with one slot: what a client gets while a silent connection holds it
    mid-handshake, what a TLS client gets once the handshake timed out, and the count of
    header timeouts."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    closed: Counter[str] = Counter()
    guard = Guard(Limits(header_timeout=0.5, max_connections=1, max_per_address=1), closed,
                  "t.g")
    server = WebServer(web.Application(), "127.0.0.1", 0, ssl_context=server_ctx, guard=guard)
    await server.start()
    try:
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", server.port)
        await wait_until(lambda: guard.open == 1, what="the silent handshake admitted")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        refused = await asyncio.wait_for(reader.read(), 5)  # closed at once, no answer
        writer.close()
        await asyncio.wait_for(silent_reader.read(), 5)  # cut at the header deadline
        silent.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                       ssl=client_ctx)
        writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return refused, answer, closed["header_timeout"]
    finally:
        await server.stop()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_tls_handshake_holds_a_slot_and_has_the_header_deadline_on_either_loop(
        loop: str, tmp_path: Path) -> None:
    run = uvloop.run if loop == "uvloop" else asyncio.run
    refused, answer, timed_out = run(_tls_listener_with_one_slot(tmp_path))
    assert refused == b""  # a TLS client cannot read a plain-text 503: closed
    assert answer.startswith(b"HTTP/1.1 404 ")  # the slot came back after the deadline
    assert timed_out == 1
