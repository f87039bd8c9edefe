"""The guard's canned answers: what a refused or timed-out client reads."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from aiohttp import web
from support.helpers import wait_until

from bridge.http.guard import REFUSED, TIMED_OUT, Guard, Limits
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


async def _a_client_that_never_reads(limits: Limits) -> tuple[float, int, bytes]:
    """Seconds until the guard cut a client that pipelines many requests and never reads
    the answers (a small receive buffer, set before connecting, so they back up to the
    server), how many write_timeout closes it counted, and what a new client gets."""
    closed: Counter[str] = Counter()
    server = WebServer(web.Application(), "127.0.0.1", 0, guard=Guard(limits, closed, "t.g"))
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket() as rude:
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            rude.setblocking(False)
            await loop.sock_connect(rude, ("127.0.0.1", server.port))
            await loop.sock_sendall(rude, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000)
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
