"""The ingest endpoint of flespi's HTTP stream: batches of device messages pushed to us.

flespi POSTs a JSON array of messages and sends the next batch only after a 200; any other
answer makes it keep the batch and retry. So a 200 here means "published": a batch is
answered 200 only once every state it changed has been acknowledged by the local broker
(the ack ledger's `waiter`, settled by the publisher's claims like an MQTT message's ack),
and 503 whenever that cannot be promised (local broker away, pipeline full, no
acknowledgement within `stream.timeout`): flespi retries, and a batch applied twice changes
nothing (the message timestamps decide what is newer).

A batch is checked whole before any of it is applied: a malformed one (400) changes nothing.
It is applied in chunks, each handed to the publisher at once, so the local broker works on
one chunk while the next is applied; the answer still waits for the last acknowledgement.
Values that do not fit the catalogue, and messages of devices the bridge cannot name, are
left out, counted and logged like invalid telemetry; the rest of the batch is applied
(a 400 would make flespi resend the same batch forever).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from bridge.config.settings import Settings
from bridge.config.tls import stream_tls_context
from bridge.core.ledger import AckLedger
from bridge.core.stats import Stats
from bridge.core.store import Store
from bridge.core.transport import Intake
from bridge.flespi.ingest import Ingest
from bridge.http.guard import BodyTimeout, Guard, expect_continue, read_body
from bridge.http.seats import Limits
from bridge.http.server import WebServer, listen, text
from bridge.logs import RateLimitedLog
from bridge.normalize import messages

log = logging.getLogger(__name__)

SOURCE = "stream"
# Batches waiting for the local broker at most; more are answered 503 (flespi sends one at
# a time, so only several streams, or retries of abandoned requests, get here).
MAX_WAITING = 64
# A quarter of `stream.max_connections` is kept for addresses that sent an authorized batch
# within the hour: strangers filling the port cannot lock out flespi (bridge.http.guard).
RESERVED_SHARE = 4
PASSED = web.RequestKey("headers_passed", bool)  # a request's headers were checked, and pass
ANSWERS = ("200", "400", "401", "405", "408", "413", "503")
# A batch is applied in CHUNKS chunks of at least CHUNK messages, the publisher getting a
# turn after each: the local broker acknowledges the states of one chunk while the next is
# applied (on another core), instead of all of them after the whole batch.
CHUNK = 25
CHUNKS = 8


class BadBatch(ValueError):
    """The batch as a whole is malformed; the message is the short reason answered."""


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """flespi's batch: a JSON array of JSON objects (pure; raises BadBatch)."""
    try:
        batch = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadBatch(f"not JSON: {exc}") from None
    if not isinstance(batch, list):
        raise BadBatch(f"expected a JSON array of messages, got {type(batch).__name__}")
    for i, item in enumerate(batch):
        if not isinstance(item, dict):
            raise BadBatch(f"message {i} is not a JSON object")
    return batch


def _not_found(_: web.Request) -> web.Response:
    return text(404, "not found\n")


async def _nowhere(request: web.Request) -> web.Response:
    return _not_found(request)


class StreamEndpoint:
    def __init__(self, settings: Settings, ingest: Ingest, store: Store, ledger: AckLedger,
                 stats: Stats, intake: Intake) -> None:
        """`intake` (the publisher) says whether a batch can be taken now (else a 503) and
        publishes a batch's states at once."""
        self.settings = stream = settings.stream
        self.ingest = ingest
        self.store = store
        self.ledger = ledger
        self.stats = stats
        self.intake = intake
        selection = settings.flespi.devices
        self._selected = None if selection == "all" else frozenset(selection)
        self._idents: Mapping[str, int] = stream.devices
        assert stream.authorization is not None  # the settings refuse a stream without one
        self._expected = stream.authorization.get_secret_value().encode()
        self._bad = RateLimitedLog(log)
        app = web.Application(client_max_size=stream.max_body)
        app.router.add_route("*", stream.path, self._serve,
                             expect_handler=expect_continue(self._refusal))
        # any other path: 404, and with `Expect: 100-continue` before the body, not after it
        app.router.add_route("*", "/{elsewhere:.*}", _nowhere,
                             expect_handler=expect_continue(_not_found))
        self.limits = Limits(stream.header_timeout, stream.body_timeout,
                             stream.keepalive_timeout, stream.max_connections,
                             stream.max_connections_per_address,
                             reserved=stream.max_connections // RESERVED_SHARE)
        self.guard = Guard(self.limits, stats.stream_connections_closed, __name__)
        stats.stream_connections_open = lambda: self.guard.open
        self.server = WebServer(app, stream.host, stream.port,
                                ssl_context=stream_tls_context(stream), guard=self.guard)
        for code in ANSWERS:
            stats.stream_requests.setdefault(code, 0)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        s = self.settings
        await listen(self.server.start(), "the stream endpoint", s.host, s.port)
        log.info("flespi HTTP stream endpoint on %s%s", self.server.url, self.settings.path)

    async def stop(self) -> None:
        await self.server.stop()

    def _answer(self, status: int, reason: str, headers: dict[str, str] | None = None
                ) -> web.Response:
        self.stats.stream_requests[str(status)] += 1
        return text(status, reason + "\n", headers)

    def _invalid(self, reason: str, detail: str) -> None:
        self.stats.invalid[SOURCE, reason] += 1
        self._bad.warning(f"{SOURCE}:{reason}", "refused a stream batch: %s: %.200s",
                          reason, detail)

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization")
        if given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._expected)

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request refused on its headers alone, else None (a client that
        asks `Expect: 100-continue` gets it before sending its body)."""
        if request.method != "POST":
            return self._answer(405, "POST a JSON array of messages", {"Allow": "POST"})
        if not self._authorized(request):
            self._invalid("unauthorized", f"from {request.remote}")  # never the value
            return self._answer(401, "wrong or missing Authorization")
        self.guard.trust(request.remote or "")  # flespi: the reserved slots are its own
        limit = self.settings.max_body
        if (request.content_length or 0) > limit:
            self._invalid("oversized", f"{request.content_length} bytes")
            return self._answer(413, f"the body is over {limit} bytes")
        request[PASSED] = True
        return None

    async def _serve(self, request: web.Request) -> web.Response:
        if not request.get(PASSED):  # else passed before its 100 Continue
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
        limit = self.settings.max_body
        try:
            body = await read_body(request, self.limits.body_timeout)
        except BodyTimeout as exc:
            self._bad.warning(f"{SOURCE}:body_timeout", "closed a stream connection: %s from %s",
                              exc, request.remote)
            response = self._answer(408, str(exc))
            response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            self._invalid("oversized", f"over {limit} bytes")
            return self._answer(413, f"the body is over {limit} bytes")
        try:
            batch = parse_batch(body)
        except BadBatch as exc:
            self._invalid("bad_batch", str(exc))
            return self._answer(400, str(exc)[:200])
        busy = self.intake.accepting()
        if busy is None and self.ledger.waiting >= MAX_WAITING:
            busy = "too many batches waiting"
        if busy is not None:
            return self._answer(503, f"{busy}; retry later", {"Retry-After": "1"})
        chunk = max(CHUNK, len(batch) // CHUNKS)
        for start in range(0, len(batch), chunk):
            if start:  # the publisher's turn: the broker takes these while we go on
                self.intake.hurry()
                await asyncio.sleep(0)
            self._apply(batch[start:start + chunk], start)
        settled = self.ledger.waiter()
        self.intake.hurry()
        try:
            await asyncio.wait_for(asyncio.shield(settled), self.settings.timeout)
        except TimeoutError:
            settled.cancel()
            return self._answer(503, "the local broker did not acknowledge in time; retry",
                                {"Retry-After": "1"})
        return self._answer(200, "ok")

    def _device(self, msg: messages.Mapped) -> int | None:
        if msg.device_id is not None:
            return msg.device_id
        if msg.ident is None:
            return None
        return self._idents.get(msg.ident) or self.store.by_ident(msg.ident)

    def _apply(self, chunk: list[dict[str, Any]], start: int) -> None:
        """A chunk of the batch, from its message `start` on, becomes state."""
        keys = self.ingest.keys
        apply = self.ingest.apply_message
        selected = self._selected
        applied = ignored = 0
        try:
            for i, raw in enumerate(chunk, start):
                msg = messages.map_message(keys, raw)
                device_id = msg.device_id
                if device_id is None:
                    device_id = self._device(msg)
                    if device_id is None:
                        self.stats.stream_messages["unknown_device"] += 1
                        self.ingest.invalid(
                            "unknown_device", f"message {i}",
                            f"no device.id, and ident {msg.ident!r:.60} is not known "
                            "(stream.devices, or flespi's device objects)", SOURCE)
                        continue
                if selected is not None and device_id not in selected:
                    ignored += 1
                    continue
                applied += 1
                try:
                    apply(device_id, msg, f"message {i}" if msg.problems else "", SOURCE)
                except Exception:  # a bug must not turn the rest of the batch away
                    log.exception("cannot apply stream message %d of device %s", i, device_id)
                    self.stats.dropped["internal_error"] += 1
        finally:  # counted per chunk: one message is a few microseconds
            counts = self.stats.stream_messages
            if applied:
                counts["applied"] += applied
            if ignored:
                counts["ignored"] += ignored
