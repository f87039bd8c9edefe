"""The ack ledger and the publisher pipeline against an in-memory broker: an upstream message
is acknowledged only after every local publication covering it was acknowledged by the
broker, never twice, and nothing is lost — whatever the interleaving of upstream messages,
local acknowledgements, local disconnects, upstream reconnects and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support.memory_transport import MemoryTransport

from bridge.core.ledger import Ack, AckLedger
from bridge.core.stats import Stats
from bridge.core.store import STATE, Device, Store
from bridge.core.transport import Publication
from bridge.exceptions import LocalUnavailableError
from bridge.publish.publisher import Publisher, Tuning

DEVICES = [1, 2, 3, 4]


def render(dev: Device, flags: int) -> list[Publication]:
    if flags & STATE and dev.values:
        return [Publication(f"s/{dev.id}", str(dev.values["n"]).encode())]
    return []


@dataclass
class Sent:
    """One upstream message: device `device` reached version `n`; with a full message."""

    device: int
    n: int
    message: bytes | None


# -- the ledger alone -------------------------------------------------------------------------

class Upstream:
    def __init__(self) -> None:
        self.acked: list[Ack] = []

    def ack(self, tokens: Iterable[Ack]) -> None:
        self.acked.extend(tokens)


def test_claims_release_in_order_whatever_order_they_settle_in() -> None:
    ledger, up = AckLedger(), Upstream()
    ledger.attach(up.ack)
    for mid in (1, 2, 3):
        ledger.received((1, mid))
    first = ledger.claim(ledger.watermark())
    ledger.received((1, 4))
    second = ledger.claim(ledger.watermark())
    ledger.settle(second, True)
    assert up.acked == []  # the first batch is not acknowledged by the broker yet
    ledger.settle(first, True)
    assert up.acked == [(1, 1), (1, 2), (1, 3), (1, 4)]
    ledger.settle(first, True)  # settling twice releases nothing twice
    assert up.acked == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert ledger.pending == 0


def test_a_failed_claim_voids_the_claims_made_before_it() -> None:
    """A batch that was in flight when an earlier one failed may not release the earlier
    one's messages: their publications were lost and must be covered by a later claim."""
    ledger, up = AckLedger(), Upstream()
    ledger.attach(up.ack)
    ledger.received((1, 1))
    first = ledger.claim(ledger.watermark())
    ledger.received((1, 2))
    second = ledger.claim(ledger.watermark())
    ledger.settle(first, False)
    ledger.settle(second, True)
    assert up.acked == []
    third = ledger.claim(ledger.watermark())  # made after the failure: covers everything
    ledger.settle(third, True)
    assert up.acked == [(1, 1), (1, 2)]


def test_claims_of_a_lost_upstream_connection_release_nothing() -> None:
    ledger, up = AckLedger(), Upstream()
    ledger.attach(up.ack)
    ledger.received((1, 1))
    claim = ledger.claim(ledger.watermark())
    ledger.void()  # flespi will redeliver (1, 1) as a new message
    ledger.attach(up.ack)
    ledger.received((2, 1))
    ledger.settle(claim, True)
    assert up.acked == []
    assert ledger.pending == 1


def test_acks_released_with_no_connection_to_tell_are_kept() -> None:
    """Released before the connection is attached: not dropped, sent by a later claim."""
    ledger, up = AckLedger(), Upstream()
    ledger.received((1, 1))
    ledger.settle(ledger.claim(ledger.watermark()), True)
    assert ledger.pending == 1
    ledger.attach(up.ack)
    ledger.settle(ledger.claim(ledger.watermark()), True)
    assert up.acked == [(1, 1)]


def test_claims_without_the_watermark_release_nothing() -> None:
    ledger, up = AckLedger(), Upstream()
    ledger.attach(up.ack)
    ledger.received((1, 1))
    ledger.settle(ledger.claim(0), True)
    assert up.acked == []


# -- the pipeline bound -----------------------------------------------------------------------

async def test_the_pipeline_bound_holds_from_the_first_batch() -> None:
    """A huge outbox (a stale cleanup of 30,000 topics) goes out in bounded batches and never
    more than the bound plus one batch awaits the broker: paho's message ids stay far below
    65,535 outstanding."""
    store, ledger, transport = Store(), AckLedger(), MemoryTransport()
    transport.connect()
    publisher = Publisher(store, ledger, transport, render, Stats(),
                          Tuning(coalesce_window=0, max_batch=1000, pipeline=5000))
    publisher.outbox.add(Publication(f"old/{i}", b"") for i in range(30_000))
    task = asyncio.create_task(publisher.run())
    try:
        for _ in range(10_000):
            await asyncio.sleep(0)
            if not transport.ack_one() and publisher.idle():
                break
        assert publisher.idle()
    finally:
        task.cancel()
    assert sum(transport.batch_sizes) == 30_000
    assert max(transport.batch_sizes) <= 1000
    assert transport.peak_unacked <= 5000 + 1000
    assert [p.topic for p in transport.delivered] == [f"old/{i}" for i in range(30_000)]


class LaggingTransport(MemoryTransport):
    """The real local side's lag: the connection is gone, so publishing fails, but
    `connected` is cleared only once the local side's own task gets a turn."""

    def __init__(self) -> None:
        super().__init__()
        self.gone = False
        self.attempts = 0

    def publish_nowait(self, publications: Sequence[Publication]) -> asyncio.Future[None]:
        if self.gone:
            self.attempts += 1
            if self.attempts >= 1000:  # a publisher that never yields: break the spin
                raise RuntimeError("retried 1000 times without yielding")
            raise LocalUnavailableError("connection lost")
        return super().publish_nowait(publications)


async def test_a_loss_not_yet_noticed_never_starves_the_loop() -> None:
    """A stream batch waits (no coalescing window) when the connection drops: the
    publisher must not retry in a loop that never yields, or the local side would never
    get to notice the loss, and nothing else (answers, metrics, timeouts) would run."""
    store, ledger, transport = Store(), AckLedger(), LaggingTransport()
    transport.connect()
    publisher = Publisher(store, ledger, transport, render, Stats(),
                          Tuning(coalesce_window=0.1, error_pause=5.0))
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.sleep(0)
        transport.gone = True
        store.apply_values(1, {"n": 1}, None)
        settled = ledger.waiter()  # a stream batch waits for its answer
        publisher.hurry()
        await asyncio.sleep(0)  # the publisher's turn: its batch is refused
        transport.disconnect()  # the local side's turn, as soon as it gets one
        assert transport.attempts < 10
        transport.gone = False
        transport.connect()
        publisher.wake()
        async with asyncio.timeout(5):  # then the state goes out: nothing was lost
            while not (transport.retained and publisher.idle()):
                transport.ack_one()
                await asyncio.sleep(0.001)
        assert transport.retained == {"s/1": b"1"}
        await asyncio.wait_for(settled, 5)  # and the batch can be answered 200
    finally:
        task.cancel()


# -- every interleaving -----------------------------------------------------------------------

class PipelineMachine(RuleBasedStateMachine):
    """The model: flespi sends numbered versions of each device's state (some with a full
    message); a device's version is published as its state. Releasing an ack for version n
    of device d requires the broker to have acknowledged a state of d at version >= n (and
    the full message, if there was one)."""

    @initialize()
    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = Store()
        self.ledger = AckLedger()
        self.transport = MemoryTransport()
        self.stats = Stats()
        self.publisher = Publisher(self.store, self.ledger, self.transport, render, self.stats,
                                   Tuning(coalesce_window=0, max_batch=3, pipeline=4,
                                          error_pause=0))
        self.generation = 1
        self.mid = 0
        self.version = dict.fromkeys(DEVICES, 0)
        self.sent: dict[Ack, Sent] = {}  # every message of the current connection
        self.acked: set[Ack] = set()
        self.ledger.attach(self.on_ack)
        self.transport.connect()
        self.task = self.loop.create_task(self.publisher.run())
        self.run()

    def teardown(self) -> None:
        if hasattr(self, "task"):
            self.task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def run(self, rounds: int = 8) -> None:
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def on_ack(self, tokens: Iterable[Ack]) -> None:
        """flespi receives acknowledgements: each must be deserved, and new."""
        for token in tokens:
            assert token not in self.acked, f"{token} acknowledged twice"
            assert token[0] == self.generation, "an ack on the wrong connection"
            sent = self.sent[token]
            published = self.transport.retained.get(f"s/{sent.device}")
            assert published is not None, f"{token} acknowledged before any state was published"
            assert int(published) >= sent.n, f"{token} acknowledged before its state was"
            if sent.message is not None:
                assert any(p.payload == sent.message for p in self.transport.delivered), (
                    f"{token} acknowledged before its message was published")
            self.acked.add(token)

    def deliver(self, device: int, message: bool) -> None:
        self.mid += 1
        token = (self.generation, self.mid)
        self.version[device] += 1
        n = self.version[device]
        body = f"m/{device}/{n}/{self.mid}".encode() if message else None
        self.sent[token] = Sent(device, n, body)
        self.ledger.received(token)
        self.store.apply_values(device, {"n": n}, None)
        if body is not None:
            self.publisher.outbox.add_one(Publication(f"msg/{device}", body, False))
        self.publisher.wake()

    @rule(device=st.sampled_from(DEVICES), message=st.booleans())
    def upstream_message(self, device: int, message: bool) -> None:
        self.deliver(device, message)
        self.run()

    @rule()
    def local_puback(self) -> None:
        self.transport.ack_one()
        self.run()

    @rule()
    def local_pubacks(self) -> None:
        while self.transport.ack_one():
            self.run(2)
        self.run()

    @precondition(lambda self: self.transport.connected.is_set())
    @rule()
    def local_disconnect(self) -> None:
        self.transport.disconnect()
        self.run()

    @precondition(lambda self: not self.transport.connected.is_set())
    @rule()
    def local_reconnect(self) -> None:
        self.transport.connect()
        self.store.mark_all()  # what the bridge does on every local connect
        self.publisher.wake()
        self.run()

    @rule()
    def upstream_reconnect(self) -> None:
        """The flespi connection drops: it redelivers every unacknowledged message on the
        new one (new packet ids)."""
        unacked = [s for t, s in self.sent.items() if t not in self.acked]
        self.ledger.void()
        self.generation += 1
        self.sent, self.acked = {}, set()
        self.ledger.attach(self.on_ack)
        for old in unacked:
            self.deliver(old.device, old.message is not None)
        self.run()

    @rule(error=st.sampled_from([RuntimeError("a bug"), OSError("socket")]))
    def transport_raises(self, error: BaseException) -> None:
        self.transport.fail_next = error
        self.publisher.wake()
        self.run()

    @invariant()
    def bounded(self) -> None:
        if hasattr(self, "transport"):
            assert self.transport.unacked <= 4 + 3 + 1  # pipeline + one batch (+ a device)

    def check_nothing_lost(self) -> None:
        self.transport.fail_next = None
        if not self.transport.connected.is_set():
            self.local_reconnect()
        for _ in range(200):
            self.run(4)
            if not self.transport.ack_one() and self.publisher.idle():
                break
        assert self.publisher.idle()
        assert set(self.sent) == self.acked, "messages never acknowledged"
        for device, n in self.version.items():
            if n:
                assert self.transport.retained[f"s/{device}"] == str(n).encode()


class NothingLostMachine(PipelineMachine):
    @rule()
    def everything_settles(self) -> None:
        self.check_nothing_lost()


PipelineMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                             deadline=None)
NothingLostMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                deadline=None)
test_acknowledgements_are_deserved = PipelineMachine.TestCase
test_nothing_is_lost = NothingLostMachine.TestCase


@pytest.mark.parametrize("seed", range(3))
def test_quiet_end_acknowledges_everything(seed: int) -> None:
    """A fixed scenario with every kind of step, ending quiet: everything is acknowledged."""
    machine = PipelineMachine()
    machine.start()
    try:
        for step in range(60):
            kind = (step * 7 + seed) % 6
            if kind < 3:
                machine.upstream_message(DEVICES[step % 4], step % 3 == 0)
            elif kind == 3:
                machine.local_puback()
            elif kind == 4 and machine.transport.connected.is_set():
                machine.local_disconnect()
            elif kind == 4:
                machine.local_reconnect()
            else:
                machine.upstream_reconnect()
        machine.check_nothing_lost()
    finally:
        machine.teardown()


# -- waiters: the same guarantee for HTTP stream batches ------------------------------------

async def test_a_waiter_resolves_only_once_a_later_claim_succeeds() -> None:
    """A stream batch's waiter: not by a claim made before it, not by a failed claim, not
    lost when the upstream connection is; resolved by the claim that covers it."""
    ledger = AckLedger()
    earlier = ledger.claim(ledger.watermark())
    waiter = ledger.waiter()
    ledger.settle(earlier, True)
    assert not waiter.done()  # that flush did not carry what the batch applied
    failed = ledger.claim(ledger.watermark())
    ledger.settle(failed, False)
    ledger.void()  # the MQTT side reconnects: nothing to do with the stream
    assert not waiter.done()
    covering = ledger.claim(ledger.watermark())
    assert ledger.waiting == 1
    ledger.settle(covering, True)
    assert waiter.done()
    assert ledger.waiting == 0


async def test_a_waiter_given_up_on_is_forgotten() -> None:
    ledger = AckLedger()
    gone = ledger.waiter()
    gone.cancel()
    kept = ledger.waiter()
    assert ledger.waiting == 1
    ledger.settle(ledger.claim(ledger.watermark()), True)  # never sets a cancelled future
    assert kept.done()
    assert gone.cancelled()
