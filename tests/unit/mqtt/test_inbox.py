"""What the local broker sends the client (`bridge.mqtt.inbox.Inbox`), without a broker:
acknowledged when taken, never dropped, reading paused and resumed, QoS 2 delivered once."""

from __future__ import annotations

from bridge.mqtt import codec
from bridge.mqtt.inbox import Inbox


class Link:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused: list[bool] = []


def inbox(limit: int = 4) -> tuple[Inbox, Link]:
    link = Link()
    return Inbox(link.written.append, link.paused.append, limit), link


def receive(box: Inbox, topic: str, mid: int, qos: int, v5: bool = False) -> None:
    raw = codec.publish5(topic, b"p", mid=mid, qos=qos, retain=False) if v5 \
        else codec.publish311(topic, b"p", mid, qos)
    [(first, body)] = codec.PacketReader().split(raw).packets
    if qos == 2:  # publish311/publish5 know QoS 0 and 1: set QoS 2's bits
        first = first & ~0x06 | 0x04
    box.received(first, body, v5)


def test_nothing_is_acknowledged_before_it_is_taken() -> None:
    box, link = inbox()
    receive(box, "a", 1, 1)
    receive(box, "b", 0, 0)
    assert link.written == []
    assert box.take() == ("a", b"p", False)
    assert link.written == [codec.puback(1)]
    assert box.take() == ("b", b"p", False)  # QoS 0: nothing owed
    assert link.written == [codec.puback(1)]
    assert box.take() is None


def test_past_the_limit_reading_pauses_and_resumes_at_half_without_dropping() -> None:
    box, link = inbox(limit=4)
    for mid in range(1, 7):  # the broker may still send a few before the pause bites
        receive(box, f"t/{mid}", mid, 1)
    assert link.paused == [True]
    taken = [box.take() for _ in range(4)]
    assert link.paused == [True, False]  # two left: at half of four
    taken += [box.take() for _ in range(2)]
    assert [t[0] for t in taken if t] == [f"t/{mid}" for mid in range(1, 7)]
    assert link.written == [codec.puback(mid) for mid in range(1, 7)]


def test_qos2_is_answered_pubrec_then_pubcomp_and_delivered_once() -> None:
    box, link = inbox()
    receive(box, "q", 5, 2)
    receive(box, "q", 5, 2)  # sent again before our PUBREC: the same message
    assert box.take() == ("q", b"p", False)
    assert box.take() is None
    assert link.written == [codec.ack(codec.PUBREC, 5)]
    box.released(5)
    assert link.written[-1] == codec.ack(codec.PUBCOMP, 5)
    receive(box, "q", 5, 2)  # the id reused for a new message after PUBCOMP: delivered
    assert box.take() == ("q", b"p", False)


def test_an_mqtt5_payload_comes_without_its_properties() -> None:
    box, _ = inbox()
    raw = codec.publish5("cmd/1/set", b'{"command":"lock"}', mid=3, qos=1, retain=False,
                         properties=codec.user_properties([("k", "v")]))
    [(first, body)] = codec.PacketReader().split(raw).packets
    box.received(first, body, True)
    assert box.take() == ("cmd/1/set", b'{"command":"lock"}', False)
