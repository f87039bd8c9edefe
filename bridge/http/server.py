"""HTTP listeners on aiohttp: the metrics and health port, the flespi HTTP stream's ingest
endpoint and the simulator's REST API. One small wrapper, so each of them only says what it
answers, and every listener starts (a port of 0 picks a free one) and stops the same way.

Every listener runs behind a `bridge.http.guard.Guard` of its own (its deadlines, its caps,
its counters): a flood on one port never takes a connection slot of another, and the caps
together stay well under the 1,024 open files a service commonly gets."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from bridge.exceptions import ListenError
from bridge.http.guard import Guard, guarded
from bridge.http.seats import Limits

log = logging.getLogger(__name__)

# A response: status, extra headers (Content-Type defaults to text/plain), body.
Response = tuple[int, dict[str, str], bytes]
# method, path with its query, headers (lower-case names), body -> response
Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[Response]]
# Seconds a stopping listener gives requests in flight.
SHUTDOWN_TIMEOUT = 2.0


def text(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body.encode(), headers=headers,
                        content_type="text/plain", charset="utf-8")


def add_get(app: web.Application, path: str,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
    """GET and HEAD on `path` (HEAD: the headers of a GET, no body); any other method 405
    with `Allow: GET, HEAD`."""

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return text(405, "method not allowed\n", {"Allow": "GET, HEAD"})
        return await handler(request)

    app.router.add_route("*", path, serve)


def catch_all(handler: Handler, *, max_body: int = 1024 * 1024) -> web.Application:
    """An application handing every request to `handler` (the simulator's REST API)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, extra, payload = await handler(request.method, request.path_qs, headers, body)
        out = {"Content-Type": "text/plain; charset=utf-8", **extra}
        return web.Response(status=status, body=payload, headers=out)

    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


class WebServer:
    """One aiohttp application on one address (TLS with `ssl_context`), behind `guard`
    (by default the metrics port's limits, `Limits()`)."""

    def __init__(self, app: web.Application, host: str, port: int, *,
                 ssl_context: ssl.SSLContext | None = None, guard: Guard | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.guard = guard or Guard(Limits(), Counter(), __name__)
        app.middlewares.append(guarded)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        assert runner.server is not None
        try:  # what web.TCPSite does, with the guard's protocol factory (and TLS handshake)
            self._listener = await asyncio.get_running_loop().create_server(
                self.guard.factory(runner.server, self.ssl_context), self.host, self.port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = self._listener.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # no new connections; those open are closed by the runner
        self.guard.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


async def listen(starting: Coroutine[Any, Any, None], what: str, host: str, port: int) -> None:
    """Start a listener of the bridge; a port that is taken or not ours to bind is a
    `ListenError` naming it (the CLI reports it and exits)."""
    try:
        await starting
    except OSError as exc:
        raise ListenError(f"cannot serve {what} on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
