"""The bridge's own PUBLISH parser: what it reads, and what it leaves to gmqtt."""

from __future__ import annotations

import random

import pytest

from bridge.mqtt.codec import parse_publish, utf8, varint

TOPIC = "flespi/state/gw/devices/5537057/telemetry/battery.level"


def packet(topic: bytes, payload: bytes, props: bytes, mid: int | None = 7) -> bytes:
    """A PUBLISH packet without its fixed header (what gmqtt hands its parser)."""
    return (utf8(topic) + (b"" if mid is None else mid.to_bytes(2, "big"))
            + varint(len(props)) + props + payload)


def user(key: str, value: str) -> bytes:
    return b"\x26" + utf8(key) + utf8(value)


@pytest.mark.parametrize("others", [
    b"",
    b"\x01\x01",  # payload format indicator
    b"\x02\x00\x00\x0e\x10",  # message expiry interval
    b"\x08" + utf8("flespi-bridge/x/rest/1") + b"\x09" + utf8(b"\x00\xffcorr"),
    b"\x03" + utf8("application/json") + b"\x0b\xe8\x07",  # content type, subscription id
])
def test_reads_topic_packet_id_user_properties_and_payload(others: bytes) -> None:
    props = user("timestamp", "1706905170.17258") + others + user("ключ", "значение ✓")
    payload = b'{"latitude": 1.5}' * 100
    assert parse_publish(packet(TOPIC.encode(), payload, props), 1) == (
        TOPIC, 7, [("timestamp", "1706905170.17258"), ("ключ", "значение ✓")], payload)
    assert parse_publish(packet(TOPIC.encode(), b"", props, mid=None), 0) == (
        TOPIC, None, [("timestamp", "1706905170.17258"), ("ключ", "значение ✓")], b"")


@pytest.mark.parametrize(("raw", "qos"), [
    (packet(TOPIC.encode(), b"1", b"\x23\x00\x01"), 1),  # a topic alias: gmqtt keeps those
    (packet(b"", b"1", b"\x23\x00\x01"), 1),  # an empty topic (alias only)
    (packet(TOPIC.encode(), b"1", b""), 2),  # QoS 2
    (packet(TOPIC.encode(), b"1", b"\x7f\x00"), 1),  # no such property
    (packet(b"\xff\xfe", b"1", b""), 1),  # a topic that is not UTF-8
    (packet(TOPIC.encode(), b"1", user("a", "b"))[:-4], 1),  # truncated property block
    (packet(TOPIC.encode(), b"", b"\x26\x00\x05ab"), 1),  # property overruns its block
    (b"\x00\x40" + TOPIC.encode()[:10], 1),  # truncated topic
    (b"", 0),
])
def test_leaves_anything_unusual_to_gmqtt(raw: bytes, qos: int) -> None:
    assert parse_publish(raw, qos) is None


def test_random_bytes_never_raise() -> None:
    rng = random.Random(12)
    valid = packet(TOPIC.encode(), b"55", user("timestamp", "1.5"))
    for _ in range(20_000):
        raw = bytearray(valid)  # a valid packet with a few bytes changed, then cut
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        if rng.random() < 0.3:
            raw = bytearray(rng.randrange(256) for _ in range(rng.randrange(40)))
        result = parse_publish(bytes(raw[:rng.randrange(len(raw) + 1)]), rng.randrange(3))
        assert result is None or isinstance(result[0], str)
