"""The ack ledger: the one place that decides when a flespi message is acknowledged.

The invariant it keeps: an upstream QoS 1 message is acknowledged only after every local
publication that covers it has been acknowledged by the local broker, and never twice.

- `received` records each message's ack token in receive order (a sequence number each).
- The publisher takes a `watermark` when it takes the dirty devices and the outbox: every
  message received up to it is covered by that flush. Each batch of the flush gets a
  `claim`; the flush's last batch carries the watermark, the others nothing.
- Claims settle in the order they were made, whatever order `settle` is called in. A
  settled claim releases the acks up to its watermark only if it succeeded, belongs to
  the current upstream connection (`epoch`), and no claim has failed since it was made
  (work of a failed batch is requeued and covered by a later claim, never by an older one).
- `void` forgets everything when the upstream connection is lost: flespi redelivers what
  was not acknowledged, and packet ids are reused on the new connection.
- `waiter` is the same guarantee for work that is not an MQTT message (a batch of flespi's
  HTTP stream): a future at the next sequence number, resolved by the claim that releases
  it. It belongs to no upstream connection, so neither `void` nor the epoch touch it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

# (connection generation, packet id): acks for an earlier connection are void, because the
# broker redelivers those messages and packet ids are reused on the new connection.
Ack = tuple[int, int]
Sender = Callable[[Iterable[Ack]], None]


class Claim:
    __slots__ = ("epoch", "failures", "outcome", "upto")

    def __init__(self, upto: int, epoch: int, failures: int) -> None:
        self.upto = upto
        self.epoch = epoch
        self.failures = failures
        self.outcome: bool | None = None  # None while the batch is in flight


class AckLedger:
    def __init__(self) -> None:
        self._acks: deque[tuple[int, Ack]] = deque()  # (sequence, token), receive order
        self._seq = 0
        self._epoch = 0
        self._failures = 0
        self._claims: deque[Claim] = deque()
        self._send: Sender | None = None
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def pending(self) -> int:
        """Messages received and not yet acknowledged."""
        return len(self._acks)

    def attach(self, send: Sender) -> None:
        """A new upstream connection: acks go to `send` from now on."""
        self._send = send

    def void(self) -> None:
        """The upstream connection is lost: nothing received on it can be acknowledged."""
        self._acks.clear()
        self._epoch += 1
        self._send = None

    def received(self, ack: Ack) -> None:
        self._seq += 1
        self._acks.append((self._seq, ack))

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved once every local publication made for what was applied to the
        store before this call has been acknowledged by the local broker. Cancel it to
        give up (it is then forgotten)."""
        while self._waiters and self._waiters[0][1].done():
            self._waiters.popleft()  # given up on
        self._seq += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._seq, future))
        return future

    @property
    def waiting(self) -> int:
        """Waiters not yet resolved (nor given up on)."""
        return sum(1 for _, future in self._waiters if not future.done())

    def watermark(self) -> int:
        return self._seq

    def claim(self, upto: int = 0) -> Claim:
        """A claim for one batch; `upto` the flush's watermark on its last batch, else 0."""
        claim = Claim(min(upto, self._seq), self._epoch, self._failures)
        self._claims.append(claim)
        return claim

    def settle(self, claim: Claim, ok: bool) -> None:
        if claim.outcome is not None:
            return  # settled already: never twice
        claim.outcome = ok
        if not ok:
            self._failures += 1
        claims = self._claims
        while claims and claims[0].outcome is not None:
            done = claims.popleft()
            if done.outcome and done.failures == self._failures:
                self._wake_waiters(done.upto)
                if done.epoch == self._epoch:
                    self._release(done.upto)

    def _wake_waiters(self, upto: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= upto:
            future = waiters.popleft()[1]
            if not future.done():
                future.set_result(None)

    def _release(self, upto: int) -> None:
        if self._send is None:
            return  # no connection to tell: a later claim releases them
        acks = self._acks
        tokens = []
        while acks and acks[0][0] <= upto:
            tokens.append(acks.popleft()[1])
        if tokens:
            self._send(tokens)
