"""The guard's canned answers: what a refused or timed-out client reads."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from aiohttp import web

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
