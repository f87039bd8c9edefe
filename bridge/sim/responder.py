"""The simulator's REST side: answers `flespi/rest/...` requests over MQTT exactly as the
flespi reference describes, and the same API over HTTP for the httpx transport.

Over MQTT: the answer goes to the request's response topic (or the request topic when it
has none), echoes the correlation data, and carries the `http_code` user property; with
`response_chunked=true` it comes as several messages of which only the last has
`http_code`. Successful commands change the simulated device (locking sets `lock.status`; a
command that changes a setting of the device type, `fleet.SETTINGS`, publishes its new value).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.http.server import Response, WebServer, catch_all
from bridge.sim import rest_api
from bridge.sim.fleet import SETTINGS
from bridge.sim.simulator import Simulator

# flespi command name -> whether the device confirms it (executed false until it answers)
COMMANDS = {"setting.r0.set": False, "setting.s1.set": True, "setting.d1.set": True}
EXECUTED = "command sent and marked as executed without waiting for the answer"


@dataclass
class RestRequest:
    method: str
    uri: str
    body: Any
    properties: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RawBody:
    """An answer body sent as these exact bytes (tests of odd answers)."""

    data: bytes


def _encode(body: Any) -> bytes:
    return body.data if isinstance(body, RawBody) else orjson.dumps(body)


def _errors(reason: str, code: int = 0) -> dict[str, Any]:
    return {"errors": [{"code": code, "reason": reason}]}


class Responder:
    def __init__(self, sim: Simulator, *, chunk_size: int = 96, token: str | None = None):
        self.sim = sim
        self.chunk_size = chunk_size
        self.token = token
        self.requests: list[RestRequest] = []
        self.delay = 0.0  # seconds before answering (tests of timeouts)
        self.silent = False  # never answer
        # seconds until the device reports the lock state a command set (flespi has answered
        # `executed: false` long before); None: the device never does
        self.report_after: float | None = 0.0
        self.fail_next: tuple[int, str] | None = None  # (http_code, reason) for one request
        self.raw_next: tuple[int, bytes] | None = None  # (http_code, exact body) for one
        # (http_code, reason) for each of the next requests, in order (e.g. 429s, 503s)
        self.fail_queue: deque[tuple[int, str]] = deque()
        # history, telemetry, sessions and tokens (bridge/sim/rest_api.py)
        self.tools = rest_api.ToolsApi(sim.fleet)
        self._next_id = 1707247199664458
        self._http: WebServer | None = None
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def attach(self) -> None:
        """Answer REST over MQTT on the simulator's broker connection."""
        client = self.sim._client
        client.on_message = self._on_message
        client.subscribe("flespi/rest/#", qos=1)

    async def serve_http(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the REST API over HTTP too; returns the base URL."""
        self._http = WebServer(catch_all(self._on_http), host, port)
        await self._http.start()
        return self._http.url

    async def close(self) -> None:
        self._closed.set()
        if self._http is not None:
            await self._http.stop()
        for task in list(self._tasks):
            task.cancel()

    # -- transports ---------------------------------------------------------------------

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int,
                    properties: dict[str, Any]) -> int:
        if topic.startswith("flespi/rest/"):
            task = asyncio.ensure_future(self._answer_mqtt(topic, payload, properties))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return 0

    async def _answer_mqtt(self, topic: str, payload: bytes, properties: dict[str, Any]) -> None:
        method, _, uri = topic[len("flespi/rest/"):].partition("/")
        code, body = await self._dispatch(method, uri, payload, properties)
        if self.silent:
            return
        response_topic = (properties.get("response_topic") or [topic])[0]
        correlation = (properties.get("correlation_data") or [None])[0]
        user = dict(properties.get("user_property") or [])
        data = _encode(body)
        size = self.chunk_size if user.get("response_chunked") == "true" else len(data) or 1
        chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        extra = {"correlation_data": correlation} if correlation is not None else {}
        for i, chunk in enumerate(chunks):
            props = dict(extra)
            if i == len(chunks) - 1:
                props["user_property"] = [("http_code", str(code))]
            self.sim._client.publish(response_topic, chunk, qos=1, **props)

    async def _on_http(self, method: str, path: str, headers: dict[str, str],
                       body: bytes) -> Response:
        json = {"Content-Type": "application/json"}
        auth = headers.get("authorization", "")
        if self.token is not None and auth != f"FlespiToken {self.token}":
            return 401, json, orjson.dumps(_errors("invalid token", 401))
        path, _, query = path.partition("?")
        code, answer = await self._dispatch(method.lower(), path.lstrip("/"), body, {},
                                            dict(urllib.parse.parse_qsl(query)))
        if self.silent:
            await self._closed.wait()  # never answer: the client times out
        return code, json, _encode(answer)

    # -- the API ------------------------------------------------------------------------

    async def _dispatch(self, method: str, uri: str, payload: bytes,
                        properties: dict[str, Any], query: dict[str, str] | None = None
                        ) -> tuple[int, Any]:
        try:
            body = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            body = payload
        self.requests.append(RestRequest(method, uri, body, properties, dict(query or {})))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raw_next is not None:
            (code, data), self.raw_next = self.raw_next, None
            return code, RawBody(data)
        if self.fail_next is not None:
            (code, reason), self.fail_next = self.fail_next, None
            return code, _errors(reason, code)
        if self.fail_queue:
            code, reason = self.fail_queue.popleft()
            return code, _errors(reason, code)
        parts = uri.split("/")
        if len(parts) == 4 and parts[:2] == ["gw", "devices"] and parts[3] == "commands":
            if method != "post":
                return 405, _errors(f"method {method} not allowed")
            return await self._commands(parts[2], body)
        answer = rest_api.handle(self.tools, method, uri, query or {}, body)
        if answer is not None:
            return answer
        return 404, _errors(f"unknown API {uri}")

    async def _report(self, device_id: int, values: dict[str, Any]) -> None:
        """The device's telemetry after a command, `report_after` seconds later."""
        if self.report_after is None:
            return
        if not self.report_after:
            await self.sim.set_values(device_id, values)
            return

        async def later(delay: float) -> None:
            await asyncio.sleep(delay)
            await self.sim.set_values(device_id, values)
        task = asyncio.create_task(later(self.report_after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commands(self, selector: str, body: Any) -> tuple[int, Any]:
        if not selector.isdigit() or int(selector) not in self.sim.devices:
            return 404, _errors(f"device {selector} not found", 404)
        dev = self.sim.devices[int(selector)]
        if not isinstance(body, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str)
                and isinstance(c.get("properties", {}), dict) for c in body):
            return 400, _errors("invalid request: expected a list of commands", 400)
        if not dev.connected:
            return 400, _errors("device is not connected", 400)
        results: list[dict[str, Any]] = []
        for cmd in body:
            name, props = cmd["name"], cmd.get("properties", {})
            settings = {n: s for n, s in SETTINGS.get(dev.device_type_id, {}).items()
                        if s.command == name}
            if name not in COMMANDS and not settings:
                return 400, _errors(f"unknown command {name}", 400)
            if name == "setting.r0.set":
                if props.get("lock") not in (0, 1):
                    return 400, _errors("lock must be 0 or 1", 400)
                await self._report(dev.id, {"lock.status": props["lock"] == 1})
            for setting_name, setting in settings.items():
                value = props.get(setting.property)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return 400, _errors(f"{setting.property} must be a number", 400)
                await self.sim.set_setting(dev.id, setting_name, setting.value(value))
            self._next_id += 1
            results.append({
                "id": self._next_id, "name": name, "device_id": dev.id, "position": 1,
                "properties": props, "executed": COMMANDS.get(name, True),
                "response": EXECUTED if COMMANDS.get(name, True) else None,
                "timestamp": int(time.time()), "expires": 0,
            })
        return 200, {"result": results}
