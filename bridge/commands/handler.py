"""Local command topics: `<base>/<id>/set` and `<base>/<id>/<entity>/set` in, one result per
request out on `<base>/<id>/result`, and the latest (without flespi's `response`) retained on
`<base>/<id>/last_command` for Home Assistant's "Last command" sensor. A lock command going
to flespi is recorded on the device (`Device.pending`) and the device marked for a state
render, so the lock shows `LOCKING`/`UNLOCKING` until flespi's answer is in.

What may run is decided here before the gateway sees a request: a command that arrives with
the retain flag never runs (the broker replays retained messages on every subscription, so
a retained unlock would unlock again after every restart of either side), and a stopping
bridge takes no new commands. Both are answered with an error result like any other refusal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from bridge.commands.gateway import INVALID_INPUT, CommandGateway, Request, peek_transaction, result
from bridge.config.settings import Settings
from bridge.core.outbox import Outlet
from bridge.core.stats import Stats
from bridge.core.store import STATE, Device, Store
from bridge.core.topics import LocalTopics
from bridge.core.transport import LocalLink, Publication, publication_kind
from bridge.exceptions import CommandError, LocalUnavailableError
from bridge.flespi.rest import Rest
from bridge.logs import RateLimitedLog

log = logging.getLogger(__name__)


class CommandHandler:
    def __init__(self, settings: Settings, rest: Rest, store: Store, stats: Stats,
                 local: LocalLink, publisher: Outlet) -> None:
        """`local` delivers the command topics and takes results; `publisher` holds results
        while the local broker is away, and renders a lock's state shown while its command
        is in flight."""
        self.settings = settings
        self.store = store
        self.stats = stats
        self.transport = local
        self.outbox = publisher.outbox
        self.wake = publisher.wake
        self.topics = LocalTopics(settings.local.base_topic)
        self.gateway = CommandGateway(settings.commands, rest, device=self._commandable,
                                      publish_result=self.publish_result, count=self.count,
                                      in_flight=self._in_flight)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self._bad = RateLimitedLog(log)

    @property
    def subscriptions(self) -> list[str]:
        return [self.topics.device_filter("set"), self.topics.device_filter("+/set")]

    async def start(self) -> None:
        for topic_filter in self.subscriptions:
            self.transport.route(topic_filter, self.handle)

    async def stop(self) -> None:
        """Take no new command; wait for those in flight, `shutdown.grace` seconds at most
        (those still running are cancelled with the bridge's tasks)."""
        await self.drain(self.settings.shutdown.grace)

    def handle(self, topic: str, payload: bytes, retain: bool) -> None:
        """Take a local message on the command subscriptions."""
        parsed = self.topics.parse_device(topic)
        if parsed is None:
            return
        device_id, rest = parsed
        if rest != "set" and not rest.endswith("/set"):
            return
        entity = None if rest == "set" else rest.removesuffix("/set")
        refusal = None
        if retain:
            refusal = CommandError("retained", "a retained command is never executed (it "
                                   "would run again on every reconnect); clear it with "
                                   f"mosquitto_pub -r -n -t '{topic}'")
        elif self.stopping:
            refusal = CommandError("shutting_down", "the bridge is shutting down; not sent")
        if refusal is not None:
            self._bad.warning(f"command:{refusal.code}", "command on %.200r refused: %s",
                              topic, refusal.message)
            tx = peek_transaction(payload) if entity is None else None
            self.count(refusal.code)
            self._spawn(self.publish_result(device_id, result(tx, entity, error=refusal)))
        else:
            self._spawn(self.gateway.handle(device_id, entity, payload))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("command task failed", exc_info=task.exception())

    def _commandable(self, device_id: int) -> Device | None:
        """Commands go only to selected devices the bridge has heard of from flespi."""
        devices = self.settings.flespi.devices
        if devices != "all" and device_id not in devices:
            return None
        return self.store.devices.get(device_id)

    def _in_flight(self, device_id: int, request: Request, begun: bool) -> None:
        """A lock command went to flespi (or its answer is in): the lock's state shows it."""
        dev = self.store.devices.get(device_id)
        if dev is None or request.spec.component != "lock":
            return
        targets = dev.pending.setdefault(request.entity, [])
        if begun:
            targets.append(bool(request.value))
        elif bool(request.value) in targets:
            targets.remove(bool(request.value))
        if not targets:
            del dev.pending[request.entity]
        self.store.mark(dev, STATE)
        self.wake()

    def count(self, outcome: str) -> None:
        self.stats.commands[outcome] += 1
        if outcome in INVALID_INPUT:
            self.stats.invalid["command", outcome] += 1

    async def publish_result(self, device_id: int, outcome: dict[str, Any]) -> None:
        last = {k: v for k, v in outcome.items() if k != "response"}
        for pub in (Publication(self.topics.device(device_id, "result"),
                                orjson.dumps(outcome), False),
                    Publication(self.topics.device(device_id, "last_command"),
                                orjson.dumps(last), True)):
            try:
                await self.transport.publish(pub.topic, pub.payload, retain=pub.retain)
                self.stats.publications[publication_kind(pub.topic)] += 1
            except LocalUnavailableError:
                self.outbox.add_result(pub)  # published once the local broker is back

    async def drain(self, timeout: float) -> None:
        """Stop taking commands; wait for those in flight."""
        self.stopping = True
        if self.tasks:
            log.info("waiting for %d command(s) in flight", len(self.tasks))
            await asyncio.wait(set(self.tasks), timeout=timeout)
