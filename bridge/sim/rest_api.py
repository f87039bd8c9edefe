"""The simulator's REST API beyond commands: device history, telemetry, device type and
protocol names, MQTT sessions and tokens, answered from the simulated fleet. Handlers are
plain functions of (api, method, path, query, body) -> (http_code, body), free of any
server, so any HTTP framework (or REST over MQTT) can call them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.sim import fleet, history
from bridge.sim.fleet import Fleet

MAX_COUNT = 1000  # messages per answer at most (flespi pages large ranges too)
# the `data` properties of a messages request the simulator knows; like flespi, it refuses
# any other (flespi answers 400 naming the property)
MESSAGES_DATA = frozenset({"from", "to", "count", "fields"})

Answer = tuple[int, Any]


def errors(reason: str, code: int = 0) -> dict[str, Any]:
    return {"errors": [{"code": code, "reason": reason}]}


@dataclass
class ToolsApi:
    fleet: Fleet
    max_count: int = MAX_COUNT
    history_period: float = 10.0  # seconds between a device's messages
    sessions: list[dict[str, Any]] = field(default_factory=lambda: [
        {"id": "1000001-panel", "client_id": "panel-4.45.24-sim", "cid": 1000001,
         "connected": True, "clean": True, "expires": 0, "size": 0, "ip": "127.0.0.1"},
    ])
    tokens: list[dict[str, Any]] = field(default_factory=list)


def data_param(query: dict[str, str], body: Any) -> dict[str, Any] | str:
    """GET parameters: flespi's `data` query variable (JSON), or over MQTT the payload."""
    if "data" in query:
        try:
            body = orjson.loads(query["data"])
        except orjson.JSONDecodeError:
            return "data is not JSON"
    if body is None:
        return {}
    return body if isinstance(body, dict) else "data must be a JSON object"


def _device(api: ToolsApi, selector: str) -> Any:
    if selector.isdigit() and int(selector) in api.fleet.devices:
        return api.fleet.devices[int(selector)]
    return None


def messages(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    dev = _device(api, path[2])
    if dev is None:
        return 404, errors(f"device {path[2]} not found", 404)
    data = data_param(query, body)
    if isinstance(data, str):
        return 400, errors(data, 400)
    unknown = sorted(set(data) - MESSAGES_DATA)
    if unknown:
        return 400, errors(f"unknown property {unknown[0]!r} in data", 400)
    now = time.time()
    try:
        start = float(data.get("from", 0))
        end = min(float(data.get("to", now)), now)
        limit = min(int(data.get("count", api.max_count)), api.max_count)
    except (TypeError, ValueError):
        return 400, errors("from, to and count must be numbers", 400)
    if limit <= 0:
        return 400, errors("count must be positive", 400)
    wanted = data.get("fields")
    keys = [k.strip() for k in wanted.split(",")] if isinstance(wanted, str) else None
    result = []
    for message in history.messages(api.fleet, dev, start, end, api.history_period):
        result.append(message if keys is None else {k: message[k] for k in keys if k in message})
        if len(result) >= limit:
            break
    return 200, {"result": result}


def telemetry(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    ids = path[2].split(",")
    devices = [api.fleet.devices[int(i)] for i in ids
               if i.isdigit() and int(i) in api.fleet.devices] if path[2] != "all" \
        else list(api.fleet.devices.values())
    if not devices:
        return 404, errors(f"device {path[2]} not found", 404)
    wanted = None if len(path) < 5 or path[4] == "all" else path[4].split(",")
    return 200, {"result": [
        {"id": dev.id, "telemetry": {
            name: {"ts": ts, "value": value} for name, (value, ts) in dev.telemetry.items()
            if wanted is None or name in wanted}}
        for dev in devices]}


def devices(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    found = list(api.fleet.devices.values()) if path[2] == "all" else [
        api.fleet.devices[int(i)] for i in path[2].split(",")
        if i.isdigit() and int(i) in api.fleet.devices]
    data = data_param(query, body)
    wanted = data.get("fields") if isinstance(data, dict) else None
    keys = wanted.split(",") if isinstance(wanted, str) else None
    objects = [d.device_object() for d in found]
    return 200, {"result": [o if keys is None else {k: o[k] for k in keys if k in o}
                            for o in objects]}


def _selected(selector: str, table: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    if selector == "all":
        return list(table.values())
    return [table[int(i)] for i in selector.split(",") if i.isdigit() and int(i) in table]


def device_types(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    """`gw/channel-protocols/{protocols}/device-types/{types}`."""
    found = [t for t in _selected(path[4], fleet.DEVICE_TYPES)
             if path[2] == "all" or str(t["protocol_id"]) in path[2].split(",")]
    return 200, {"result": found}


def protocols(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    return 200, {"result": _selected(path[2], fleet.PROTOCOLS)}


def sessions(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    return 200, {"result": list(api.sessions)}


def create_tokens(api: ToolsApi, path: list[str], query: dict[str, str], body: Any) -> Answer:
    if not isinstance(body, list) or not body or not all(isinstance(t, dict) for t in body):
        return 400, errors("expected a list of tokens", 400)
    created = []
    for spec in body:
        ttl = spec.get("ttl", 0)
        access = spec.get("access", {"type": 0})
        if not isinstance(ttl, int) or ttl < 0 or not isinstance(access, dict) \
                or access.get("type") not in (0, 1, 2):
            return 400, errors("invalid token: ttl or access", 400)
        if access.get("type") == 2 and not isinstance(access.get("acl"), list):
            return 400, errors("an ACL token needs access.acl", 400)
        token = {"id": 10_000 + len(api.tokens), "key": secrets.token_hex(32),
                 "info": str(spec.get("info", "")), "ttl": ttl, "expire": 0,
                 "created": int(time.time()), "enabled": True, "cid": 1000001, "ips": "",
                 "access": access}
        api.tokens.append(token)
        created.append(token)
    return 200, {"result": created}


Handler = Callable[[ToolsApi, list[str], dict[str, str], Any], Answer]
# (method, matcher) -> handler; a matcher checks the split path
ROUTES: list[tuple[str, Callable[[list[str]], bool], Handler]] = [
    ("get", lambda p: len(p) == 4 and p[:2] == ["gw", "devices"] and p[3] == "messages",
     messages),
    ("get", lambda p: len(p) in (4, 5) and p[:2] == ["gw", "devices"] and p[3] == "telemetry",
     telemetry),
    ("get", lambda p: len(p) == 3 and p[:2] == ["gw", "devices"], devices),
    ("get", lambda p: p == ["mqtt", "sessions", "all"], sessions),
    ("get", lambda p: len(p) == 5 and p[:2] == ["gw", "channel-protocols"]
     and p[3] == "device-types", device_types),
    ("get", lambda p: len(p) == 3 and p[:2] == ["gw", "channel-protocols"], protocols),
    ("post", lambda p: p == ["platform", "tokens"], create_tokens),
]


def handle(api: ToolsApi, method: str, path: str, query: dict[str, str], body: Any
           ) -> Answer | None:
    """The answer, or None when no route of this API matches the path."""
    parts = path.strip("/").split("/")
    matched = [(m, h) for m, match, h in ROUTES if match(parts)]
    if not matched:
        return None
    for route_method, handler in matched:
        if route_method == method.lower():
            return handler(api, parts, query, body)
    return 405, errors(f"method {method} not allowed", 405)
