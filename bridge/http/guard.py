"""What keeps an HTTP listener of the bridge alive on a hostile network: deadlines on every
connection and a cap on how many there are, in total and per client address.

aiohttp has no deadline for a request's line and headers (its keep-alive timer is the only
one, and it is an hour by default) and none for a body, and it takes every connection it is
offered. A client that sends half a request and then nothing would keep its connection, a
file descriptor and about 5 KB forever; a thousand of them exhaust the process's open files,
and the metrics listener, the brokers' connections and the state with it. So each
connection here holds ONE timer, always armed while the bridge waits for the client:

- from the connection's start, and from the first byte of each later request: the header
  deadline (`header_timeout`); when it passes, a client that sent part of a request is
  answered 408 and closed, one that sent nothing is closed;
- between requests: the idle keep-alive deadline (`keepalive_timeout`), then a plain close;
- while a request is handled, none: the handler bounds its own work (the body deadline,
  `read_body`, answers 408; the stream's `stream.timeout` bounds the wait for the broker);
- while our writes are paused because the client does not read: `header_timeout`, then the
  connection is aborted; and a connection closed on purpose that is still flushing after
  `LINGER` is aborted too (`close()` waits for the client to take its data, forever if it
  never reads).

A connection beyond `max_connections`, or beyond `max_per_address` from one client (an
address; an IPv6 client by its /64, the smallest network one subscriber gets), is answered 503
(`Retry-After: 1`; with TLS, closed without an answer) at once, before a byte of it is read;
it never reaches aiohttp. The last `reserved` slots are kept for clients that sent an
authorized request within the hour (`trust`): a flood from strangers cannot lock out flespi
once it has pushed. Every connection closed on purpose is counted in `closed` by reason.

With TLS the guard puts the TLS layer on a connection after admitting it (`tls_layer`, not
`create_server(ssl=...)`, where the protocol sees a connection only once its handshake is
over): a handshake under way holds a counted slot and runs under `header_timeout`, so
stalled handshakes cannot pile up past the caps.

THE ONE PLACE WITH aiohttp INTERNALS (project rule): `GuardedHandler` subclasses
`web.RequestHandler`, aiohttp's per-connection protocol, and builds it with its keyword
arguments (`keepalive_timeout`, `max_line_size`, ...), because no public hook sees a
connection before its first request is parsed. It overrides only asyncio's protocol methods
(`connection_made`, `data_received`, `connection_lost`) and calls `force_close()`.
`expect_continue` calls aiohttp's default `Expect: 100-continue` handler once its own check
passed. `_unparseable` reads the handler's queue (`_messages`, `_ErrInfo`) and `_upgraded`
to stop parsing a connection that sent junk. `tests/unit/http/test_guard_aiohttp.py` fails
by name if an aiohttp upgrade changes any of it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import _ErrInfo
from aiohttp.web_urldispatcher import _default_expect_handler

from bridge.http import tls_layer
from bridge.http.seats import Limits, Seats
from bridge.logs import RateLimitFilter

# reasons a connection is closed on purpose (the `reason` label of the metric)
REASONS = ("connections", "per_address", "header_timeout", "body_timeout", "write_timeout")
# How long a connection closed on purpose may take to flush what it was sent before it is
# aborted: a client that never reads would otherwise keep it (and its slot) forever.
LINGER = 5.0


def _answer(status: str, body: bytes, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer that closes the connection (Content-Length from the body)."""
    return (b"HTTP/1.1 " + status.encode() + b"\r\n" + extra + b"Connection: close\r\n"
            b"Content-Type: text/plain\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


REFUSED = _answer("503 Service Unavailable", b"too many connections; retry",
                  b"Retry-After: 1\r\n")
TIMED_OUT = _answer("408 Request Timeout", b"request took too long")
_IDLE, _WAITING, _BUSY = range(3)  # between requests; a request under way; being handled


class BodyTimeout(Exception):
    """The body did not arrive within `Limits.body_timeout` (answer 408 and close)."""


class Guard(Seats):
    """The connections of one listener: its seats (counts in total and per client, the
    trusted clients), the counters of connections closed on purpose, and the logger aiohttp
    writes to (client errors one line, at warning level, at most 5 a minute per message:
    unauthenticated clients cannot fill the log)."""

    def __init__(self, limits: Limits, closed: Counter[str], name: str) -> None:
        self.closed = closed
        for reason in REASONS:
            closed.setdefault(reason, 0)
        super().__init__(limits)
        self.handshaking: set[asyncio.Transport] = set()  # admitted, TLS not yet done
        # a logger of this listener's own (not registered: each listener its own filters),
        # a child of `name` for levels and handlers
        self.logger = logging.Logger(name + ".aiohttp")
        self.logger.parent = logging.getLogger(name)
        self.logger.addFilter(RateLimitFilter(self.logger))  # first: keyed on the template
        self.logger.addFilter(_client_errors_as_warnings)

    def factory(self, server: web.Server, tls: ssl.SSLContext | None = None
                ) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for `loop.create_server` (`server`: the runner's), which is
        given no `ssl`: with `tls` the guard does the handshake, after admission."""
        lim = self.limits
        options: dict[str, Any] = {
            # ours closes idle connections; aiohttp's own timer is a backstop behind it
            "keepalive_timeout": lim.keepalive_timeout + lim.header_timeout,
            "max_line_size": lim.max_line_size, "max_field_size": lim.max_line_size,
            "lingering_time": min(lim.body_timeout, 5.0), "logger": self.logger,
            "access_log": None,
        }
        loop = asyncio.get_running_loop()
        return lambda: GuardedHandler(self, server, tls, loop=loop, **options)

    def close(self) -> None:
        """The listener stops: handshakes under way are cut (aiohttp, which closes the
        connections it has, does not know them)."""
        for transport in list(self.handshaking):
            transport.abort()


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection protocol with the guard's cap and deadline (module docstring)."""

    def __init__(self, guard: Guard, manager: web.Server, tls: ssl.SSLContext | None,
                 **options: Any) -> None:
        super().__init__(manager, **options)
        self.guard = guard
        self.tls = tls
        self.address = ""
        self.admitted = False
        self.state = _IDLE
        self.served = 0
        self.timer: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # armed while our writes are paused
        self.raw: asyncio.Transport | None = None  # the client's (TLS: the secure one)
        self.handshake: asyncio.Future[None] | None = None  # with TLS, until it is done
        self.opened = False  # aiohttp has the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        # a Transport in fact; not an isinstance check: uvloop's transports (the image runs
        # uvloop) do not subclass asyncio's
        raw = cast(asyncio.Transport, transport)
        if self.handshake is not None:  # the TLS layer hands over the secure transport
            self._open(raw)
            return
        refused = self.guard.admit(self.address)
        if refused is not None:
            self.guard.closed[refused] += 1
            if self.tls is None:  # a TLS client could not read a plain-text answer
                raw.write(REFUSED)
            raw.close()
            return  # never aiohttp's: it does not see this connection
        self.admitted = True
        if self.tls is None:
            self._open(raw)
            return
        # its TLS handshake first, under the header deadline (the layer's own is a backstop)
        self.raw = raw
        self.guard.handshaking.add(raw)
        self.handshake = tls_layer.install(raw, self, self.tls,
                                           self.guard.limits.header_timeout + LINGER)
        self.handshake.add_done_callback(self._handshake_done)
        self._arm(self.guard.limits.header_timeout)

    def _handshake_done(self, done: asyncio.Future[None]) -> None:
        """The handshake ended: unless it gave aiohttp the connection (the client's failure,
        or the connection lost, is its own loss, not ours to log), the slot comes back."""
        self.guard.handshaking.discard(cast(asyncio.Transport, self.raw))
        if not done.cancelled():
            done.exception()  # retrieved: a failed handshake is not an "unhandled" error
        if not self.opened:
            self._disarm()
            self._release()

    def _open(self, transport: asyncio.Transport) -> None:
        """The connection (TLS: its handshake done) is aiohttp's, under the header deadline."""
        self.raw = transport
        self.opened = True
        super().connection_made(transport)
        self._arm(self.guard.limits.header_timeout)

    def _release(self) -> None:
        if self.admitted:
            self.admitted = False
            self.guard.release(self.address)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.state == _IDLE and data:
            self.state = _WAITING  # the header deadline runs from a request's first byte
            self._arm(self.guard.limits.header_timeout)
        super().data_received(data)
        if _unparseable(self):
            self.close()  # its 400 is all it gets: not one more byte is parsed or kept

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.admitted:
            return
        self._release()
        self._disarm()
        if self.stall is not None:
            self.stall.cancel()
        if self.opened:
            super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client does not read what it is sent: it has `header_timeout` to start again
        (a handler blocked on it would otherwise hold the connection with no deadline)."""
        super().pause_writing()
        if self.admitted and self.stall is None:
            self.stall = self._loop.call_later(self.guard.limits.header_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _stalled(self) -> None:
        self.stall = None
        self._abort_if_open()

    def _abort_if_open(self) -> None:
        """A client that stopped reading (or a connection closed on purpose that is still
        flushing after `LINGER`): cut; connection_lost follows and releases the slot."""
        if self.admitted and self.opened and self.raw is not None:
            self.guard.closed["write_timeout"] += 1
            self.raw.abort()

    def request_started(self) -> None:
        """The request's line and headers are in: its handler runs, no deadline of ours."""
        self._disarm()
        self.state = _BUSY
        self.served += 1

    def request_done(self) -> None:
        self.state = _IDLE
        if self.admitted:
            self._arm(self.guard.limits.keepalive_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self._loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if not self.opened:  # a TLS handshake still under way: cut (the slot comes back)
            self.guard.closed["header_timeout"] += 1
            if self.raw is not None:
                self.raw.abort()
            return
        if self.state == _BUSY or self.transport is None:
            return
        if self.state == _WAITING or not self.served:
            self.guard.closed["header_timeout"] += 1
            if self.state == _WAITING:  # part of a request came: it gets an answer
                self.transport.write(TIMED_OUT)
        self.force_close()  # else an idle keep-alive connection: a plain close
        # close() waits until the client took what it was sent; one that never reads is cut
        self._loop.call_later(LINGER, self._abort_if_open)


@web.middleware
async def guarded(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Tells the connection's guard when a request is being handled (add it to every
    application served behind a `Guard`)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):
        return await handler(request)
    protocol.request_started()
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                exc.force_close()
            raise
        if response.status >= 400:  # a refused client gets its answer and the door: it
            response.force_close()  # cannot hold its slot with a request every 10 s
        return response
    finally:
        protocol.request_done()


def expect_continue(check: Callable[[web.Request], web.StreamResponse | None]
                    ) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """A route's `expect_handler`: a client sending `Expect: 100-continue` is told to go on
    only if `check` passes its headers; else it gets `check`'s answer (and the connection is
    closed: its body never comes), not a `100 Continue` and then a 401. aiohttp's own handler
    (`web_urldispatcher._default_expect_handler`) does the rest."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        refusal = check(request)
        if refusal is not None:
            refusal.force_close()
            return refusal
        await _default_expect_handler(request)
        return None

    return expect


async def read_body(request: web.Request, seconds: float) -> bytes:
    """The body within `seconds` of the headers, else `BodyTimeout` (answer 408 and close:
    what is left of the body is not waited for)."""
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        protocol = request.protocol
        if isinstance(protocol, GuardedHandler):
            protocol.guard.closed["body_timeout"] += 1
        raise BodyTimeout(f"no body within {seconds:g} s") from None


def _unparseable(handler: web.RequestHandler) -> bool:
    """aiohttp queued a parse error (or took an Upgrade the bridge never serves) for this
    connection. It would go on parsing what follows, each error holding a copy of the bytes
    buffered so far: unauthenticated junk held ~15 MB a connection (2 GB for a few hundred)."""
    queued = handler._messages  # aiohttp internals: see the module docstring
    failed = bool(queued) and isinstance(queued[-1][0], _ErrInfo)
    return failed or handler._upgraded


def _client_errors_as_warnings(record: logging.LogRecord) -> bool:
    """A request aiohttp cannot parse is the client's fault, not the bridge's: one line at
    warning level (the reason, not a traceback)."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"{record.getMessage()}: malformed request: {exc.message!r:.200}"
        record.args, record.exc_info, record.exc_text = None, None, None
    return True
