"""Local command topics -> flespi device commands -> one result per request.

Inputs: `<base>/<id>/set` with a JSON object (`{"lock": true}`, `{"command": "restart"}`,
`{"upload_interval": 10}`, optional `"transaction"`), and Home Assistant's per-entity
`<base>/<id>/<entity>/set` (`LOCK`/`UNLOCK`, `PRESS`, a number). Only commands listed in the
device type's profile, for devices the bridge follows, are ever sent; everything else is
answered with an error result and nothing reaches flespi.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from bridge.commands.limits import Limits
from bridge.config.profiles import CommandSettings, CommandSpec
from bridge.core.store import Device
from bridge.exceptions import CommandError, RestError
from bridge.flespi.rest import Rest
from bridge.logs import RateLimitedLog

log = logging.getLogger(__name__)
MAX_TRANSACTION = 128
STEP_TOLERANCE = 1e-6  # of a step: 0.3 is 0 + 3 * 0.1 although 0.3 / 0.1 is 2.9999999999999996
# Result codes that mean the request itself was malformed (also counted as invalid input).
INVALID_INPUT = frozenset({"invalid_json", "invalid_payload", "unknown_command",
                           "invalid_value", "payload_too_large", "retained", "bad_device_id"})
# Every result code (`code` of a result; null when `status` is ok). The handler adds
# "bad_device_id", "retained", "shutting_down" and "busy" before a request reaches here.
RESULT_CODES = INVALID_INPUT | {
    "read_only", "device_not_allowed", "duplicate", "rate_limited", "upstream_disconnected",
    "timeout", "flespi_error", "bad_response", "internal_error", "shutting_down", "busy",
    "interrupted", "unconfirmed"}
# The error of a request still waiting for flespi when the bridge stops (its task cancelled
# at the end of `shutdown.grace`): it may have reached flespi, and the device.
INTERRUPTED = CommandError("interrupted", "the bridge stopped before flespi answered; the "
                           "command may or may not have been executed")


@dataclass(frozen=True, slots=True)
class Request:
    entity: str
    spec: CommandSpec
    value: Any


def result(transaction: Any, command: str | None, *, error: CommandError | None = None,
           response: Any = None) -> dict[str, Any]:
    return {
        "transaction": transaction,
        "command": command,
        "status": "error" if error else "ok",
        "error": error.message if error else None,
        "code": error.code if error else None,
        "response": response,
    }


# -- parsing (pure) ----------------------------------------------------------------------

def peek_transaction(payload: bytes) -> Any:
    """The request's transaction id if one can be read, for results of refused requests."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        tx = obj.get("transaction")
        if _valid_transaction(tx):
            return tx
    return None


def _valid_transaction(tx: Any) -> bool:
    if isinstance(tx, bool):
        return False
    if isinstance(tx, int):
        return abs(tx) < 2**63
    return isinstance(tx, str) and 0 < len(tx) <= MAX_TRANSACTION


def _lock_value(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    if isinstance(text, str) and text.upper() in ("LOCK", "UNLOCK"):
        return text.upper() == "LOCK"
    raise CommandError("invalid_value", "a lock takes true/false, LOCK or UNLOCK")


def _number_value(spec: CommandSpec, value: Any) -> int | float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise CommandError("invalid_value", f"{value[:40]!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandError("invalid_value", "a number is required")
    if not spec.min <= value <= spec.max:
        raise CommandError("invalid_value", f"{value:g} is outside {spec.min:g}..{spec.max:g}")
    whole = all(float(x).is_integer() for x in (spec.min, spec.step))
    if whole:
        if not float(value).is_integer():
            raise CommandError("invalid_value", f"{value:g} is not a whole number")
        if (int(value) - int(spec.min)) % int(spec.step) == 0:
            return int(value)
    else:
        steps = (value - spec.min) / spec.step
        if abs(steps - round(steps)) <= STEP_TOLERANCE:
            return value
    below = spec.min + math.floor((value - spec.min) / spec.step) * spec.step
    nearest = [f"{x:g}" for x in (below, below + spec.step) if spec.min <= x <= spec.max]
    raise CommandError("invalid_value", f"{value:g} is not a valid step: values go from "
                       f"{spec.min:g} in steps of {spec.step:g} (nearest: "
                       f"{' or '.join(nearest)})")


def _value(spec: CommandSpec, value: Any) -> Any:
    if spec.component == "lock":
        return _lock_value(value)
    if spec.component == "button":
        if value not in (None, True, "PRESS", ""):
            raise CommandError("invalid_value", "a button takes PRESS")
        return None
    return _number_value(spec, value)


def _lookup(profile: dict[str, CommandSpec], entity: Any) -> tuple[str, CommandSpec]:
    if not isinstance(entity, str) or entity not in profile:
        known = ", ".join(sorted(profile)) or "none for this device type"
        shown = entity[:40] if isinstance(entity, str) else type(entity).__name__
        raise CommandError("unknown_command", f"unknown command {shown!r} (known: {known})")
    return entity, profile[entity]


def _refuse_empty(payload: bytes) -> None:
    """An empty payload is what clearing a retained command delivers: never a command."""
    try:
        empty = not payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return
    if empty:
        raise CommandError("invalid_payload", "empty payload")


def parse_entity_command(profile: dict[str, CommandSpec], entity: str, payload: bytes
                         ) -> Request:
    """`<base>/<id>/<entity>/set`: a Home Assistant payload (a button takes `PRESS`)."""
    name, spec = _lookup(profile, entity)
    _refuse_empty(payload)
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("invalid_payload", "the payload is not UTF-8 text") from None
    return Request(name, spec, _value(spec, text))


def parse_set(profile: dict[str, CommandSpec], payload: bytes) -> Request:
    """`<base>/<id>/set`: a JSON object naming exactly one command."""
    _refuse_empty(payload)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CommandError("invalid_json", f"the payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError("invalid_json", "the payload must be a JSON object")
    if "transaction" in obj and not _valid_transaction(obj["transaction"]):
        raise CommandError("invalid_value", "transaction must be a string (at most "
                           f"{MAX_TRANSACTION} characters) or an integer")
    fields = {k: v for k, v in obj.items() if k != "transaction"}
    if "command" in fields:
        entity = fields.pop("command")
        value = fields.pop("value", None)
        if fields:
            raise CommandError("invalid_payload", "one command per request")
    elif len(fields) == 1:
        entity, value = next(iter(fields.items()))
    elif not fields:
        raise CommandError("invalid_payload", "no command in the request")
    else:
        raise CommandError("invalid_payload", "one command per request")
    name, spec = _lookup(profile, entity)
    return Request(name, spec, _value(spec, value))


def flespi_command(spec: CommandSpec, value: Any, timeout: float) -> list[dict[str, Any]]:
    """The body of `POST gw/devices/{id}/commands`."""
    properties: dict[str, Any] = dict(spec.properties)
    if spec.value_property:
        if spec.component == "lock":
            value = spec.payload_lock if value else spec.payload_unlock
        properties[spec.value_property] = value
    return [{"name": spec.command, "properties": properties, "timeout": math.ceil(timeout)}]


# -- the gateway (I/O through the callables it is given) ---------------------------------

class Watch(Protocol):
    """Who follows the requests sent to flespi (the handler: a lock shows its command in
    flight, and the device's telemetry confirms it)."""

    def in_flight(self, device_id: int, request: Request, begun: bool) -> None:
        """A request went to flespi (`begun`), or is done (answered, confirmed or not)."""

    async def confirmed(self, device_id: int, request: Request) -> bool:
        """Whether the device's telemetry came to show the request's value in time."""


class CommandGateway:
    def __init__(
        self,
        settings: CommandSettings,
        rest: Rest,
        *,
        device: Callable[[int], Device | None],
        publish_result: Callable[[int, dict[str, Any]], Awaitable[None]],
        count: Callable[[str], None],
        watch: Watch | None = None,
    ) -> None:
        self.settings = settings
        self.rest = rest
        self._device = device
        self._publish_result = publish_result
        self._count = count
        self._watch = watch
        self.limits = Limits(settings)
        self._bad = RateLimitedLog(log)

    async def handle(self, device_id: int, entity: str | None, payload: bytes) -> dict[str, Any]:
        """Run one request to its single result (published, and returned for tests).

        Whatever flespi answers and whatever fails in here, exactly one result is
        published: a bug becomes `internal_error`, an answer that cannot be encoded into
        the result `bad_response`, a cancellation while waiting for flespi (a stop past
        `shutdown.grace`) `interrupted`, published before the cancellation goes on.
        """
        transaction: Any = None
        command: str | None = entity
        try:
            small = len(payload) <= self.settings.max_payload  # a huge one is never parsed
            transaction = peek_transaction(payload) if entity is None and small else None
            request = self._check(device_id, entity, payload)
            command = request.entity
            response = await self._send(device_id, transaction, request)
            outcome = result(transaction, command, response=response)
            try:
                orjson.dumps(outcome)
            except TypeError:  # nested deeper than orjson writes, or not JSON at all
                raise CommandError("bad_response", "flespi's answer cannot be passed on "
                                   "as JSON (nested too deep); the command may have been "
                                   "executed") from None
            self._count("ok")
            log.info("command %s for device %s: ok", command, device_id)
        except CommandError as exc:
            outcome = result(transaction, command, error=exc)
            self._count(exc.code)
            self._bad.warning(f"command:{exc.code}", "%s for device %s refused: %s",
                              "request" if command is None else f"command {command!r:.64}",
                              device_id, exc.message)
        except Exception as exc:  # a bug: the requester still hears back
            log.exception("command %.64r for device %s failed", command, device_id)
            error = CommandError("internal_error", "the bridge failed to handle the "
                                 f"request ({type(exc).__name__}); the command may or may "
                                 "not have been executed")
            outcome = result(transaction, command, error=error)
            self._count("internal_error")
        except asyncio.CancelledError:
            outcome = result(transaction, command, error=INTERRUPTED)
            self._count(INTERRUPTED.code)
            log.warning("command %.64r for device %s interrupted by the stop: %s", command,
                        device_id, INTERRUPTED.message)
            await self._publish_result(device_id, outcome)
            raise
        await self._publish_result(device_id, outcome)
        return outcome

    async def _send(self, device_id: int, transaction: Any, request: Request) -> Any:
        limits = self.limits
        now = limits.clock()
        if limits.duplicate(device_id, transaction, now):
            raise CommandError("duplicate", f"transaction {transaction!r} was already "
                               "received; it is not executed twice")
        if not limits.allow(device_id, now):
            raise CommandError("rate_limited", "too many commands; try again shortly")
        body = flespi_command(request.spec, request.value, self.settings.timeout)
        # flespi waits up to `timeout` for the device; give its answer time to come
        timeout = self.settings.timeout
        sent = True  # unless the transport knows better: may have reached flespi
        limits.begin(device_id, transaction)
        if self._watch is not None:
            self._watch.in_flight(device_id, request, True)
        try:
            answer = await self.rest.call("post", f"gw/devices/{device_id}/commands", body,
                                          timeout + min(5.0, timeout))
            response = answer.result()
            await self._confirm(device_id, request)
            return response
        except RestError as exc:
            sent = exc.sent
            raise CommandError(exc.code, exc.message) from None
        finally:
            limits.end(device_id, transaction, sent=sent, now=limits.clock())
            if self._watch is not None:
                self._watch.in_flight(device_id, request, False)

    async def _confirm(self, device_id: int, request: Request) -> None:
        """A command whose effect telemetry shows (`state_attribute`) is done when the device
        reports it, not when flespi accepts it (flespi's `executed: false`: the device has
        not answered yet). Still in flight meanwhile (a lock shows `UNLOCKING`)."""
        attribute = request.spec.state_attribute
        wait = self.settings.confirm_timeout
        if attribute is None or not wait or self._watch is None:
            return
        if not await self._watch.confirmed(device_id, request):
            raise CommandError("unconfirmed", f"accepted by flespi, not confirmed by the "
                               f"device: its {attribute} did not become {request.value!r} "
                               f"within {wait:g} s")

    def _check(self, device_id: int, entity: str | None, payload: bytes) -> Request:
        if self.settings.read_only:
            raise CommandError("read_only", "the bridge is read-only: commands are disabled")
        if len(payload) > self.settings.max_payload:
            raise CommandError("payload_too_large",
                               f"{len(payload)} bytes; at most {self.settings.max_payload}")
        dev = self._device(device_id)
        if dev is None:
            raise CommandError("device_not_allowed",
                               f"device {device_id} is not bridged (not in the selection)")
        profile = self.settings.profile(dev.info.device_type_id)
        if entity is None:
            return parse_set(profile, payload)
        return parse_entity_command(profile, entity, payload)
