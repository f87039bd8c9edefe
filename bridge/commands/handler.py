"""Local command topics: `<base>/<id>/set` and `<base>/<id>/<entity>/set` in, one result per
request out on `<base>/<id>/result`, and the latest (without flespi's `response`) retained on
`<base>/<id>/last_command` for Home Assistant's "Last command" sensor. A lock command going
to flespi is recorded on the device (`Device.pending`) and the device marked for a state
render, so the lock shows `LOCKING`/`UNLOCKING` until flespi's answer is in.

What may run is decided here before the gateway sees a request: a command that arrives with
the retain flag never runs (the broker replays retained messages on every subscription, so
a retained unlock would unlock again after every restart of either side), and a stopping
bridge takes no new commands. Both are answered with an error result like any other refusal.

What a local client can start here is bounded: a device id spelled any other way than the
canonical one (`05537057`, `+5537057`: a broker ACL carving device 5537057 out would not stop
it) is refused `bad_device_id` on the alias's own result topic, never taken for the device;
at most `commands.max_in_flight` requests run at once (past it: `busy`); a refusal made here
costs no task (its result is handed to the broker at once); a payload over
`commands.max_payload` is never parsed. The retained `last_command` is kept only for devices
the bridge follows, so a request naming any other id leaves nothing retained behind: one
result, on `result`.

With a split fleet every replica receives every command; only the device's owner executes
and answers it, and shard 0 alone answers one for an id no shard has (`LocalLink.answers`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from bridge.commands.gateway import INVALID_INPUT, CommandGateway, Request, peek_transaction, result
from bridge.config.settings import Settings
from bridge.core.outbox import Outlet
from bridge.core.stats import Stats
from bridge.core.store import STATE, Device, Store, iso
from bridge.core.topics import LocalTopics, canonical_id
from bridge.core.transport import LocalLink, Publication, publication_kind
from bridge.exceptions import CommandError, LocalUnavailableError
from bridge.flespi.rest import Rest
from bridge.logs import RateLimitedLog

log = logging.getLogger(__name__)
# Seconds the results of the commands cancelled at a stop may take to reach the broker.
RESULT_TIMEOUT = 5.0
CONFIRM_POLL = 0.1  # seconds between looks at the telemetry a command awaits


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
                                      watch=self)
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
        split = self.topics.split_device(topic)
        if split is None:
            return
        level, rest = split
        if rest != "set" and not rest.endswith("/set"):
            return
        entity = None if rest == "set" else rest.removesuffix("/set")
        device_id = canonical_id(level)
        if not self.transport.answers(device_id):
            return  # another replica's device (a split fleet): it answers
        refusal = None
        if device_id is None:
            refusal = CommandError("bad_device_id", f"{level[:40]!r} is not a device id: "
                                   "write it in ASCII digits without a leading zero or a "
                                   "sign (flespi's id); not sent")
        elif retain:
            refusal = CommandError("retained", "a retained command is never executed (it "
                                   "would run again on every reconnect); clear it with "
                                   f"mosquitto_pub -r -n -t '{topic}'")
        elif self.stopping:
            refusal = CommandError("shutting_down", "the bridge is shutting down; not sent")
        elif len(self.tasks) >= self.settings.commands.max_in_flight:
            refusal = CommandError("busy", f"{len(self.tasks)} commands are in flight "
                                   "(commands.max_in_flight); not sent, try again shortly")
        if refusal is None:
            assert device_id is not None
            self._spawn(self.gateway.handle(device_id, entity, payload))
            return
        self._bad.warning(f"command:{refusal.code}", "command on %.200r refused: %s",
                          topic, refusal.message)
        small = len(payload) <= self.settings.commands.max_payload  # never parse a huge one
        tx = peek_transaction(payload) if entity is None and small else None
        self.count(refusal.code)
        self._answer(level, result(tx, entity, error=refusal),
                     last=device_id is not None and self._commandable(device_id) is not None)

    def _answer(self, level: str, outcome: dict[str, Any], *, last: bool) -> None:
        """A refusal's result, handed to the broker at once (no task: a flood of refusals
        holds nothing but the broker's acknowledgements)."""
        pubs = self._results(level, outcome, last=last)
        try:
            acked = self.transport.publish_nowait(pubs)
        except LocalUnavailableError:
            for pub in pubs:
                self.outbox.add_result(pub)  # published once the local broker is back
            return
        acked.add_done_callback(lambda done: self._answered(pubs, done))

    def _answered(self, pubs: list[Publication], done: asyncio.Future[None]) -> None:
        if done.cancelled():
            return
        if done.exception() is not None:  # the connection was lost before the broker's ack
            for pub in pubs:
                self.outbox.add_result(pub)
            return
        for pub in pubs:
            self.stats.publications[publication_kind(pub.topic)] += 1

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

    def in_flight(self, device_id: int, request: Request, begun: bool) -> None:
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

    async def confirmed(self, device_id: int, request: Request) -> bool:
        """Whether the device's telemetry shows the command's value (`state_attribute`)
        within `commands.confirm_timeout`; False at once when the bridge stops. Polled: the
        store has no per-value notification, and a few checks a second per command awaiting
        confirmation cost nothing next to the seconds a device takes."""
        attribute = request.spec.state_attribute
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.commands.confirm_timeout
        while not self.stopping:
            dev = self.store.devices.get(device_id)
            if dev is None:
                return False
            if attribute in dev.values and dev.values[attribute] == request.value:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(CONFIRM_POLL)
        return False

    def count(self, outcome: str) -> None:
        self.stats.commands[outcome] += 1
        if outcome in INVALID_INPUT:
            self.stats.invalid["command", outcome] += 1

    def _results(self, level: str, outcome: dict[str, Any], *, last: bool
                 ) -> list[Publication]:
        """`<base>/<level>/result`, and the retained `last_command` (without `response`)
        when `last`: only for a device the bridge follows."""
        pubs = [Publication(self.topics.device_level(level, "result"), orjson.dumps(outcome),
                            False)]
        if last:
            # the time tells two identical results apart ("Last command" in Home Assistant)
            latest = {k: v for k, v in outcome.items() if k != "response"}
            latest["time"] = iso(time.time())
            pubs.append(Publication(self.topics.device_level(level, "last_command"),
                                    orjson.dumps(latest), True))
        return pubs

    async def publish_result(self, device_id: int, outcome: dict[str, Any]) -> None:
        last = self._commandable(device_id) is not None
        for pub in self._results(str(device_id), outcome, last=last):
            try:
                await self.transport.publish(pub.topic, pub.payload, retain=pub.retain)
                self.stats.publications[publication_kind(pub.topic)] += 1
            except LocalUnavailableError:
                self.outbox.add_result(pub)  # published once the local broker is back

    async def drain(self, timeout: float) -> None:
        """Stop taking commands; wait for those in flight, `timeout` seconds at most; then
        cancel those still waiting for flespi, each answered `interrupted` while the local
        broker is still connected (the gateway publishes it; `RESULT_TIMEOUT` bounds that)."""
        self.stopping = True
        if not self.tasks:
            return
        log.info("waiting for %d command(s) in flight", len(self.tasks))
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        if pending:
            log.warning("%d command(s) still waiting for flespi at the end of the grace "
                        "period: answered as interrupted", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=RESULT_TIMEOUT)
