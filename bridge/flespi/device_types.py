"""flespi's names for device types and protocols, for the device info Home Assistant shows
(manufacturer and model instead of "flespi device type 1272").

Each device type and protocol is looked up once over REST, through the REST client the
commands use (`GET gw/channel-protocols/all/device-types/{id}`, `GET gw/channel-protocols/{id}`),
and kept in memory for as long as the bridge runs: a fleet of 40,000 devices of three types
costs a handful of requests. A look-up never blocks discovery: until it answers, the device
shows the generic model; when it answers, `NamesLearned` on the event hub has the devices of
that type announced again. A failed look-up is counted (`Stats.lookup_failures`), logged
(rate-limited) and retried later with a growing delay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge.core.backoff import Backoff
from bridge.core.events import EventHub, NamesLearned
from bridge.core.stats import Stats
from bridge.core.store import Names
from bridge.exceptions import RestError
from bridge.flespi.rest import Rest
from bridge.logs import RateLimitedLog

log = logging.getLogger(__name__)

TIMEOUT = 15.0  # seconds for one look-up
RETRY_MIN, RETRY_MAX = 30.0, 600.0  # seconds before a failed look-up is tried again
URIS = {"device_type": "gw/channel-protocols/all/device-types/{id}",
        "protocol": "gw/channel-protocols/{id}"}
Key = tuple[str, int]  # (what: device_type | protocol, id)


def _text(obj: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


def names(device_type: dict[str, Any] | None, protocol: dict[str, Any] | None) -> Names:
    """The names of flespi's device type and protocol objects (pure)."""
    dtype, proto = device_type or {}, protocol or {}
    return Names(model=_text(dtype, "title", "name"), model_id=_text(dtype, "name"),
                 manufacturer=_text(proto, "title", "name") or _text(dtype, "protocol_name"))


class DeviceTypes:
    def __init__(self, rest: Rest, stats: Stats, events: EventHub, *,
                 retry: tuple[float, float] = (RETRY_MIN, RETRY_MAX)) -> None:
        self.rest = rest
        self.retry = retry
        self.stats = stats
        self.events = events
        self.known: dict[Key, dict[str, Any]] = {}
        self._busy: set[Key] = set()  # being fetched, or waiting to be retried
        self._backoff: dict[Key, Backoff] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._bad = RateLimitedLog(log)
        self._stopped = False

    def names(self, device_type_id: int | None, protocol_id: int | None) -> Names:
        """The names known now; what is not known is looked up (in the background)."""
        dtype = self._get("device_type", device_type_id)
        proto = self._get("protocol", protocol_id)
        if protocol_id is None and dtype is not None:
            found = dtype.get("protocol_id")
            if isinstance(found, int) and not isinstance(found, bool):
                proto = self._get("protocol", found)
        return names(dtype, proto)

    def _get(self, what: str, id_: int | None) -> dict[str, Any] | None:
        if id_ is None:
            return None
        key = (what, id_)
        found = self.known.get(key)
        if found is None and key not in self._busy and not self._stopped:
            self._fetch_later(key, 0.0)
        return found

    def _fetch_later(self, key: Key, delay: float) -> None:
        self._busy.add(key)
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self._start(key)
        else:
            self._timers[key] = loop.call_later(delay, self._start, key)

    def _start(self, key: Key) -> None:
        self._timers.pop(key, None)
        if self._stopped:
            return
        task = asyncio.get_running_loop().create_task(self._fetch(key), name=f"lookup {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, key: Key) -> None:
        what, id_ = key
        try:
            answer = await self.rest.call("get", URIS[what].format(id=id_), None, TIMEOUT)
            result = answer.result()
            found = result[0] if isinstance(result, list) and result else None
            if not isinstance(found, dict):
                raise RestError("bad_response", f"no {what} {id_} in flespi's answer")
        except RestError as exc:
            self._failed(key, exc.message)
            return
        except Exception as exc:  # a bug must not stop discovery either
            log.exception("looking up flespi %s %s failed", what, id_)
            self._failed(key, type(exc).__name__)
            return
        self.known[key] = found
        self._busy.discard(key)
        self._backoff.pop(key, None)
        log.info("flespi %s %s: %s", what.replace("_", " "), id_,
                 _text(found, "title", "name") or "(no name)")
        self.events.emit(NamesLearned(what, id_))

    def _failed(self, key: Key, reason: str) -> None:
        what, id_ = key
        self.stats.lookup_failures[what] += 1
        backoff = self._backoff.setdefault(key, Backoff(*self.retry))
        delay = backoff.next()
        self._bad.warning(f"lookup:{what}", "cannot look up flespi %s %s (%s); the generic "
                          "model stays until a retry in %.0fs works", what.replace("_", " "),
                          id_, reason, delay)
        self._fetch_later(key, delay)

    async def start(self) -> None:
        """Nothing to prepare: look-ups start when a name is first asked for."""

    async def stop(self) -> None:
        """No look-up from now on (stopped before the session: they would fail and retry)."""
        self._stopped = True
        for handle in self._timers.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
