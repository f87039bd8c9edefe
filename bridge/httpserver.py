"""A minimal HTTP/1.1 server on asyncio streams (one request per connection), for the health
endpoints and the simulator's REST endpoint: no web framework dependency for three routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
# method, path (without query), headers (lower-case names), body -> status, type, body
Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[tuple[int, str, bytes]]]


class HttpServer:
    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if not 0 <= length <= MAX_BODY:
                raise ValueError("bad content-length")
            body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
            status, ctype, payload = await self.handler(method, path, headers, body)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        except ValueError:
            status, ctype, payload = 400, "text/plain; charset=utf-8", b"bad request\n"
        reason = HTTPStatus(status).phrase
        head_out = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head_out.encode() + (payload if method != "HEAD" else b""))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
