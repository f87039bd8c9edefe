"""A minimal HTTP/1.1 server on asyncio streams (one request per connection), for the health
endpoints and the simulator's REST endpoint: no web framework dependency for a few routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus

MAX_BODY = 1024 * 1024
# A response: status, extra headers (Content-Type defaults to text/plain), body.
Response = tuple[int, dict[str, str], bytes]
# method, path (without query, unless the server keeps it), headers (lower-case names),
# body -> response
Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler, host: str, port: int, *,
                 keep_query: bool = False) -> None:
        self.handler = handler
        self.keep_query = keep_query  # hand the handler `path?query` as requested
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
        method = ""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(parts) != 3 or not parts[2].startswith("HTTP/") or not 0 <= length <= MAX_BODY:
                raise ValueError("bad request")
            method = parts[0]
            body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
            target = parts[1] if self.keep_query else parts[1].split("?", 1)[0]
            status, extra, payload = await self.handler(method, target, headers, body)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        except ValueError:
            status, extra, payload = 400, {}, b"bad request\n"
        extra = {"Content-Type": "text/plain; charset=utf-8", **extra}
        out = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        out += [f"{k}: {v}" for k, v in extra.items()]
        out += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
        try:
            writer.write("\r\n".join(out).encode("latin-1")
                         + (payload if method != "HEAD" else b""))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
