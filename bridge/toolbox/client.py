"""The toolbox's flespi REST client (httpx, like `HttpRest`): `Authorization: FlespiToken`,
GET parameters in the `data` query variable, 429 and 5xx retried with exponential backoff
(honouring `Retry-After`), device messages paged by timestamp (flespi's `count` caps a
page; messages have no `limit`/`offset`). Errors are `RestError`s
whose messages never hold the token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from bridge.core.backoff import Backoff
from bridge.exceptions import RestError
from bridge.flespi.rest import RestResponse

PAGE = 5000  # messages per request
MAX_RESPONSE = 32 * 1024 * 1024
MAX_RETRY_AFTER = 60.0


def _retry_after(response: httpx.Response) -> float | None:
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)


class FlespiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30, retries: int = 5,
                 delays: tuple[float, float] = (0.5, 16.0), verify: bool = True) -> None:
        """`delays`: the first and the longest pause before a request is sent again."""
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, verify=verify,
            headers={"Authorization": f"FlespiToken {token}", "Accept": "application/json"})
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.min_delay, self.max_delay = delays
        self.retried = 0  # requests sent again after a 429 or 5xx

    async def __aenter__(self) -> FlespiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    async def _send(self, method: str, uri: str, params: dict[str, str] | None,
                    body: Any) -> RestResponse:
        backoff = Backoff(self.min_delay, self.max_delay)
        for attempt in range(self.retries + 1):
            try:
                code, delay, content = await self._exchange(method, uri, params, body)
            except httpx.TimeoutException:
                raise RestError("timeout", f"flespi REST at {self.base_url} did not answer "
                                "in time") from None
            except httpx.HTTPError as exc:  # messages name the URL, never the headers
                reason = str(exc) or type(exc).__name__
                raise RestError("upstream_disconnected", f"cannot reach flespi REST at "
                                f"{self.base_url}: {reason}") from None
            # 429: not executed, always safe to repeat; 5xx: repeat reads only
            retry = code == 429 or (code >= 500 and method == "GET")
            if retry and attempt < self.retries:
                self.retried += 1
                await asyncio.sleep(delay or backoff.next())
                continue
            if content is None:
                raise RestError("bad_response", "flespi answer too large", code)
            try:
                parsed = orjson.loads(content) if content else None
            except orjson.JSONDecodeError:
                raise RestError("bad_response", f"flespi answered {code} with a body that "
                                "is not JSON", code) from None
            return RestResponse(code, parsed)
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, uri: str, params: dict[str, str] | None,
                        body: Any) -> tuple[int, float | None, bytes | None]:
        """(status, Retry-After, body or None when too large). The body is read into a
        buffer of ours, not kept by httpx's response: a response sits in reference cycles
        until a full garbage collection, which a long export rarely triggers, so a page
        held there would stay in memory and a month's pages pile up."""
        async with self._client.stream(
                method, "/" + uri.lstrip("/"), params=params,
                content=None if body is None else orjson.dumps(body),
                headers=None if body is None else {"Content-Type": "application/json"},
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE:
                    return response.status_code, _retry_after(response), None
                chunks.append(chunk)
            return response.status_code, _retry_after(response), b"".join(chunks)

    async def get(self, uri: str, data: dict[str, Any] | None = None) -> Any:
        params = None if data is None else {"data": orjson.dumps(data).decode()}
        return (await self._send("GET", uri, params, None)).result()

    async def post(self, uri: str, body: Any) -> Any:
        return (await self._send("POST", uri, None, body)).result()

    async def messages(self, device_id: int, start: float, end: float, fields: str | None = None,
                       page: int = PAGE) -> AsyncIterator[dict[str, Any]]:
        """The device's messages with `start <= timestamp <= end`, oldest first, one page
        in memory at a time. Pages continue from the last timestamp seen, skipping the
        messages of that timestamp already yielded, until a page brings nothing new or
        reaches `end` (a server may cap a page below `page`)."""
        since, seen_at_since = start, 0
        while True:
            data: dict[str, Any] = {"from": since, "to": end, "count": page}
            if fields:
                data["fields"] = fields
            result = await self.get(f"gw/devices/{device_id}/messages", data)
            if not isinstance(result, list):
                raise RestError("bad_response", "flespi answered messages with no list")
            fresh = result[seen_at_since:] if result and _ts(result[0]) == since else result
            for message in fresh:
                yield message
            last = _ts(result[-1]) if fresh else None
            if not fresh or (last is not None and last >= end):
                return
            if last is None or last < since:  # no timestamp, or going back in time
                raise RestError("bad_response", "flespi messages without increasing timestamps")
            if last == since:  # a whole page at one instant: go on past it
                since, seen_at_since = since + 1e-6, 0
            else:
                since, seen_at_since = last, sum(1 for m in result if _ts(m) == last)


def _ts(message: Any) -> float | None:
    value = message.get("timestamp") if isinstance(message, dict) else None
    return float(value) if isinstance(value, int | float) else None
