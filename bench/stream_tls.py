"""The stream's built-in TLS (issue 25): what putting asyncio's TLS layer on each connection
after admitting it (`bridge.http.tls_layer`, so handshakes count against the caps) costs,
against the event loop's own TLS (`create_server(ssl=...)`, which the guard cannot count)
in the same run, on uvloop (what `flespi-bridge run` and the image use) and on asyncio.

Each variant serves the same aiohttp application (it reads the body and answers 200) on
loopback, alternating variant by variant, `ROUNDS` times; the figures are medians: MB/s of
1,000-message batches over one keep-alive connection, and new TLS connections a second
(each a handshake and one small request). The client (httpx) is the same for both.

    python -m bench.stream_tls [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import trustme
import uvloop
from aiohttp import web

from bridge.http.guard import Guard
from bridge.http.seats import Limits
from bridge.http.server import WebServer

ROUNDS = 5
BATCHES = 200
CONNECTIONS = 100
BODY = b"[" + b",".join([b'{"device.id": 1, "timestamp": 1700000000, "battery.level": 64, '
                         b'"position.latitude": 1.5, "position.longitude": 2.5}'] * 1000) + b"]"


async def _serve(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


async def one(variant: str) -> tuple[float, float]:
    """(MB/s, new connections/s) of one variant: "layer" (the guard's) or "native"."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    app = web.Application(client_max_size=2**24)
    app.router.add_route("*", "/", _serve)
    guard = Guard(Limits(max_connections=1024, max_per_address=1024), Counter(), "bench")
    server = WebServer(app, "127.0.0.1", 0, ssl_context=server_ctx, guard=guard)
    runner: web.AppRunner | None = None
    if variant == "layer":
        await server.start()
        port = server.port
    else:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.SockSite(runner, _bound(), ssl_context=server_ctx)
        await site.start()
        port = int(site.name.rsplit(":", 1)[1])
    url = f"https://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient(verify=client_ctx) as http:
            await http.post(url, content=BODY)  # the connection and the warm-up
            began = time.perf_counter()
            for _ in range(BATCHES):
                (await http.post(url, content=BODY)).raise_for_status()
            rate = BATCHES * len(BODY) / (time.perf_counter() - began) / 1e6
        began = time.perf_counter()
        for _ in range(CONNECTIONS):
            async with httpx.AsyncClient(verify=client_ctx) as http:
                (await http.post(url, content=b"[]")).raise_for_status()
        return rate, CONNECTIONS / (time.perf_counter() - began)
    finally:
        await server.stop()
        if runner is not None:
            await runner.cleanup()


def _bound() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_tls")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    rounds = parser.parse_args().rounds
    loops: dict[str, Callable[[Coroutine[Any, Any, tuple[float, float]]], Any]] = {
        "uvloop": uvloop.run, "asyncio": asyncio.run}
    for loop_name, run in loops.items():
        got: dict[str, list[tuple[float, float]]] = {"layer": [], "native": []}
        for _ in range(rounds):
            for variant in got:
                got[variant].append(run(one(variant)))
        for variant, figures in got.items():
            mbs = statistics.median(f[0] for f in figures)
            conns = statistics.median(f[1] for f in figures)
            print(f"{loop_name:8} {variant:7} {mbs:6.1f} MB/s  {conns:5.0f} new connections/s "
                  f"(median of {rounds})")


if __name__ == "__main__":
    main()
