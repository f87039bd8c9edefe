"""flespi REST calls over two transports sharing one interface.

- `MqttRest`: REST over MQTT on the upstream connection. The request is published to
  `flespi/rest/<method>/<uri>` with a response topic unique to the request (outside
  `flespi/`, under the bridge's reply prefix), correlation data, and
  `response_chunked=true`; chunks are joined until the one carrying `http_code`.
  At QoS 0: the upstream session is persistent, and gmqtt replays every QoS 1 PUBLISH not
  yet acknowledged when it reconnects with the session present (without the DUP flag), so
  a command flespi had already run would run again, or one already answered `timeout` would
  run late. A request lost on the way is a `timeout`: "may or may not have been executed".
- `HttpRest`: REST over HTTPS with httpx and `Authorization: FlespiToken <token>`.

Both return a `RestResponse` or raise `RestError` with a short code; callers never see
transport exceptions, and no error message contains the token.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from bridge.exceptions import RestError, UpstreamError
from bridge.flespi.topics import rest_topic
from bridge.flespi.upstream import UpstreamPublisher

if TYPE_CHECKING:
    import httpx

MAX_RESPONSE = 4 * 1024 * 1024  # bytes; a command answer is a few hundred


MAX_REASONS = 5  # error entries quoted in a message
MAX_REASON = 200  # characters of each


def _reason(entry: Any) -> str:
    """One error entry as short text, whatever its JSON shape (and however deep)."""
    if isinstance(entry, dict):
        entry = entry.get("reason", entry)
    if isinstance(entry, str):
        text = entry
    elif entry is None or isinstance(entry, bool | int | float):
        text = str(entry)
    else:
        try:
            text = orjson.dumps(entry).decode()
        except TypeError:  # nested too deep to encode
            text = f"<{type(entry).__name__}>"
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


def _reasons(body: Any) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors is None or errors == [] or errors == "":
        return "no reason given"
    entries = errors if isinstance(errors, list) else [errors]
    text = "; ".join(_reason(e) for e in entries[:MAX_REASONS])
    if len(entries) > MAX_REASONS:
        text += f"; and {len(entries) - MAX_REASONS} more"
    return text


@dataclass(frozen=True, slots=True)
class RestResponse:
    http_code: int
    body: Any

    def result(self) -> Any:
        """The `result` of a successful answer; RestError otherwise (never another error).

        A 2xx answer must be a JSON object carrying `result` and no `errors`: anything
        else is `bad_response` (or `flespi_error` when it names errors). Non-2xx answers
        are `flespi_error` (`rate_limited` for 429), with the reasons flespi gave.
        """
        body, code = self.body, self.http_code
        ok = isinstance(code, int) and not isinstance(code, bool) and 200 <= code < 300
        errors = body.get("errors") if isinstance(body, dict) else None
        if ok and not errors:
            if isinstance(body, dict) and "result" in body:
                return body["result"]
            shape = "no body" if body is None else (
                "an object without result" if isinstance(body, dict)
                else f"a JSON {type(body).__name__}, not an object")
            raise RestError("bad_response", f"flespi answered {code} with {shape}", code, body)
        error = "rate_limited" if code == 429 else "flespi_error"
        raise RestError(error, f"flespi answered {code}: {_reasons(body)}", code, body)


class Rest(Protocol):
    async def call(self, method: str, uri: str, body: Any, timeout: float) -> RestResponse: ...


def _parse_body(data: bytes, http_code: int) -> Any:
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # also: nested deeper than orjson reads
        raise RestError("bad_response", f"flespi answered {http_code} with a body that is "
                        "not JSON", http_code) from None


def _http_code(value: str) -> int:
    """The `http_code` user property; ValueError unless it is a plain status code."""
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) == 3 and 100 <= int(text) <= 599):
        raise ValueError(value)
    return int(text)


@dataclass
class _Pending:
    future: asyncio.Future[RestResponse]
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class MqttRest:
    """REST over MQTT. `on_reply` must see every message under `reply_prefix`."""

    def __init__(self, upstream: Callable[[], UpstreamPublisher | None], reply_prefix: str) -> None:
        self._upstream = upstream
        self._prefix = reply_prefix + "rest/"
        self._pending: dict[str, _Pending] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def call(self, method: str, uri: str, body: Any, timeout: float) -> RestResponse:
        up = self._upstream()
        if up is None or not up.connected:
            raise RestError("upstream_disconnected", "not connected to flespi; not sent",
                            sent=False)
        request_id = uuid.uuid4().hex
        future: asyncio.Future[RestResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future)
        try:
            try:
                up.publish(
                    rest_topic(method, uri),
                    b"" if body is None else orjson.dumps(body),
                    qos=0,  # never replayed by the session (module docstring)
                    response_topic=self._prefix + request_id,
                    correlation_data=request_id.encode(),
                    user_properties=[("response_chunked", "true")],
                )
            except UpstreamError as exc:
                raise RestError("upstream_disconnected", f"{exc}; not sent", sent=False) from None
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                raise RestError("timeout", f"flespi did not answer within {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)

    def on_reply(self, topic: str, payload: bytes, user_properties: Sequence[tuple[str, str]]
                 ) -> bool:
        """Feed a message from the reply prefix; True if it belonged to a request."""
        if not topic.startswith(self._prefix):
            return False
        pending = self._pending.get(topic[len(self._prefix):])
        if pending is None or pending.future.done():
            return True  # an answer that arrived after its timeout, or a stale one
        pending.size += len(payload)
        if pending.size > MAX_RESPONSE:
            pending.chunks.clear()
            pending.future.set_exception(RestError(
                "bad_response", f"flespi answer larger than {MAX_RESPONSE} bytes"))
            return True
        pending.chunks.append(payload)
        http_code = next((v for k, v in user_properties if k == "http_code"), None)
        if http_code is None:
            return True  # a chunk; the last one carries http_code
        try:
            code = _http_code(http_code)
            pending.future.set_result(RestResponse(code, _parse_body(b"".join(pending.chunks),
                                                                     code)))
        except ValueError:
            pending.future.set_exception(RestError(
                "bad_response", f"flespi answered with a bad http_code {http_code[:20]!r}"))
        except RestError as exc:
            pending.future.set_exception(exc)
        return True

    def connection_lost(self) -> None:
        """Requests in flight can no longer be answered on this connection."""
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(RestError(
                    "upstream_disconnected",
                    "connection to flespi lost before the answer; the command may or may not "
                    "have been executed",
                ))


class HttpRest:
    def __init__(self, base_url: str, token: str, *, verify: bool | str = True) -> None:
        import httpx  # here: only this transport needs it, and it costs every start 0.15 s

        self._client: httpx.AsyncClient = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"FlespiToken {token}"},
            verify=verify,
        )

    async def call(self, method: str, uri: str, body: Any, timeout: float) -> RestResponse:
        import httpx  # imported by __init__ already

        try:
            response = await self._client.request(
                method.upper(), "/" + uri.lstrip("/"),
                content=None if body is None else orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=timeout,
            )
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RestError("timeout", f"cannot reach flespi REST within {timeout:g}s "
                            f"({type(exc).__name__}); not sent", sent=False) from None
        except httpx.TimeoutException:
            raise RestError("timeout", f"flespi did not answer within {timeout:g}s") from None
        except httpx.ConnectError as exc:
            raise RestError("upstream_disconnected",
                            f"cannot reach flespi REST: {type(exc).__name__}; not sent",
                            sent=False) from None
        except httpx.HTTPError as exc:
            # httpx messages name the URL, never the headers: the token stays out.
            raise RestError("upstream_disconnected",
                            f"connection to flespi REST failed ({type(exc).__name__}); the "
                            "command may or may not have been executed") from None
        code = response.status_code
        if len(response.content) > MAX_RESPONSE:
            raise RestError("bad_response", f"flespi answer larger than {MAX_RESPONSE} bytes",
                            code)
        return RestResponse(code, _parse_body(response.content, code))

    async def start(self) -> None:
        """Nothing to prepare: connections are opened by the first calls."""

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()
