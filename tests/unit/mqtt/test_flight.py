"""The local client's outgoing publications (`bridge.mqtt.flight.InFlight`): packet ids that
wrap around past those in flight and always end, the broker's Receive Maximum, and its
Maximum Packet Size, without a broker (the client's tests run them against Mosquitto)."""

from __future__ import annotations

import pytest

from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.codec import PacketReader, publish_fields
from bridge.mqtt.flight import MAX_IN_FLIGHT, PACKET_TOO_LARGE, InFlight, Pub, packet_size


class Waiter:
    def __init__(self) -> None:
        self.acks = 0
        self.refusals: list[tuple[str, int]] = []

    def set(self) -> None:
        self.acks += 1

    def refused(self, publication: Pub, code: int) -> None:
        self.refusals.append((publication[0], code))


def written(data: bytes) -> list[tuple[str, int]]:
    """(topic, packet id) of each PUBLISH in `data`."""
    frames = PacketReader().split(data)
    return [publish_fields(first, body)[:2] for first, body in frames.packets]


def pubs(n: int, start: int = 0) -> list[Pub]:
    return [(f"t/{i}", b"x", True) for i in range(start, start + n)]


def test_ids_wrap_around_past_ids_in_flight() -> None:
    flight = InFlight()
    flight.mid = 65533
    data, expected = flight.take(pubs(2), 1, Waiter())  # 65534, 65535
    assert expected == 2
    assert [mid for _, mid in written(data)] == [65534, 65535]
    flight.take(pubs(2, 2), 1, Waiter())  # wraps: 1, 2 (0 is never an id)
    assert flight.acked(1) is not None  # 1 answered: free again; 2, 65534, 65535 in flight
    data, _ = flight.take(pubs(1, 4), 1, Waiter())
    assert [mid for _, mid in written(data)] == [3]
    flight.mid = 65533
    data, _ = flight.take(pubs(3, 5), 1, Waiter())  # skips 65534, 65535 and 2, in flight
    assert [mid for _, mid in written(data)] == [1, 4, 5]


def test_subscription_ids_are_never_those_of_publications_in_flight() -> None:
    flight = InFlight()
    flight.take(pubs(3), 1, Waiter())
    assert flight.next_mid() == 4


def test_with_every_id_in_flight_allocation_fails_instead_of_looping() -> None:
    flight = InFlight()
    flight.take(pubs(MAX_IN_FLIGHT), 1, Waiter())
    assert len(flight.acks) == MAX_IN_FLIGHT
    data, expected = flight.take(pubs(1000), 1, Waiter())
    assert (data, expected, flight.waiting) == (b"", 1000, 1000)  # held, not looping
    for _ in range(65535 - MAX_IN_FLIGHT):  # the ids left are for subscriptions
        flight.subacks[flight.next_mid()] = None  # type: ignore[assignment]
    with pytest.raises(LocalUnavailableError, match="every packet id is in flight"):
        flight.next_mid()


def test_the_receive_maximum_holds_publications_back_until_pubacks_return() -> None:
    flight = InFlight()
    flight.limits(v5=True, receive_maximum=3, max_packet=None)
    first, second = Waiter(), Waiter()
    data, expected = flight.take(pubs(4), 1, first)
    assert (len(written(data)), expected, flight.waiting) == (3, 4, 1)
    data, expected = flight.take(pubs(2, 4), 1, second)  # after what waits, in order
    assert (data, expected, flight.waiting) == (b"", 2, 3)
    assert flight.release() == b""  # nothing answered yet: nothing more goes out
    for mid in (1, 2):
        waiter = flight.acked(mid)
        assert waiter is first
        waiter.set()
    assert [topic for topic, _ in written(flight.release())] == ["t/3", "t/4"]
    assert flight.waiting == 1
    assert len(flight.acks) == 3


def test_a_publication_over_the_maximum_packet_size_is_refused_and_never_written() -> None:
    flight = InFlight()
    flight.limits(v5=True, receive_maximum=None, max_packet=1000)
    waiter = Waiter()
    payload = b"v" * (1000 - packet_size("fleet/2/state", b"", True) - 1)  # 2-byte length
    fits = ("fleet/2/state", payload, True)
    big = ("fleet/1/state", payload + b"v", True)  # one byte over
    assert (packet_size(*fits[:2], True), packet_size(*big[:2], True)) == (1000, 1001)
    data, expected = flight.take([pubs(1)[0], big, fits], 1, waiter)
    assert [topic for topic, _ in written(data)] == ["t/0", "fleet/2/state"]
    assert expected == 2  # the refused one expects no PUBACK
    assert waiter.refusals == [("fleet/1/state", PACKET_TOO_LARGE)]
    assert len(data) == packet_size("t/0", b"x", True) + 1000


def test_a_refused_puback_completes_its_publication_after_saying_so() -> None:
    flight = InFlight()
    waiter = Waiter()
    flight.take(pubs(2), 1, waiter)
    assert flight.refused(1, 0x87) is waiter
    assert waiter.refusals == [("t/0", 0x87)]
    assert flight.refused(1, 0x87) is None  # answered once
    assert flight.acked(2) is waiter


def test_ids_held_by_subscriptions_hold_publications_back_rather_than_loop() -> None:
    flight = InFlight()
    for _ in range(1000):  # more subscriptions in flight than the 535 ids kept for them
        flight.subacks[flight.next_mid()] = None  # type: ignore[assignment]
    data, expected = flight.take(pubs(MAX_IN_FLIGHT), 1, Waiter())
    assert expected == MAX_IN_FLIGHT
    assert len(flight.acks) == 65535 - 1000  # every id in use, the rest waiting
    assert flight.waiting == MAX_IN_FLIGHT - (65535 - 1000)
    assert len(written(data)) == 65535 - 1000
