"""The MQTT wire format (`bridge.mqtt.codec`), without a broker: remaining lengths at their
boundaries, framing however the stream is cut, each packet kind written then read back, and
what the codec writes read by an independent implementation (paho-mqtt, over loopback)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mqtt import codec, v5
from bridge.mqtt.codec import MalformedPacketError, PacketReader, parse_publish, utf8, varint

TOPIC = "homeassistant/sensor/flespi_5537057/battery_voltage/state"


def frames(stream: bytes) -> tuple[list[int], list[tuple[int, bytes]]]:
    reader = PacketReader()
    acks, packets, malformed = reader.split(stream)
    assert not malformed
    assert reader.pending == 0, "bytes left over after whole packets"
    return acks, packets


# -- remaining length ----------------------------------------------------------------------


@pytest.mark.parametrize(("length", "size"), [
    (0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3), (2097151, 3), (2097152, 4),
    (codec.MAX_REMAINING_LENGTH, 4),
])
def test_remaining_length_takes_one_to_four_bytes_at_the_spec_boundaries(
        length: int, size: int) -> None:
    encoded = codec.varint(length)
    assert len(encoded) == size
    assert codec.read_varint(encoded + b"tail", 0) == (length, size)
    assert codec.fixed_header(0x30, length) == b"\x30" + encoded


@pytest.mark.parametrize("length", [127, 128, 16383, 16384, 2097151, 2097152])
def test_a_packet_of_each_boundary_length_is_framed_whole(length: int) -> None:
    body = bytes(range(256)) * (length // 256) + bytes(length % 256)
    _, packets = frames(codec.packet(0x31, body) + codec.PINGRESP_PACKET)
    assert packets == [(0x31, body), (codec.PINGRESP, b"")]


def test_a_remaining_length_of_five_bytes_is_refused() -> None:
    with pytest.raises(MalformedPacketError):
        codec.read_varint(b"\xff\xff\xff\xff\x01", 0)
    reader = PacketReader()
    # what came before the bad length is still delivered
    result = reader.split(codec.puback(9) + codec.PINGRESP_PACKET + b"\x30\xff\xff\xff\xff\x01")
    assert (result.acks, result.packets, result.malformed) == (
        [9], [(codec.PINGRESP, b"")], True)
    assert reader.split(b"more").malformed  # and the stream stays unreadable


def test_a_remaining_length_cut_short_waits_for_its_last_byte() -> None:
    reader = PacketReader()
    body = b"x" * 300
    whole = codec.packet(0x30, body)
    assert reader.split(whole[:2]) == ([], [], False)  # 0x30 0xAC: one more length byte due
    assert reader.split(whole[2:]).packets == [(0x30, body)]


# -- framing however the stream is cut -------------------------------------------------------

PACKETS = st.one_of(
    st.integers(1, 65535).map(codec.puback),
    st.sampled_from([codec.PINGREQ_PACKET, codec.PINGRESP_PACKET, codec.DISCONNECT_PACKET]),
    st.builds(lambda mid, reason: codec.packet(codec.PUBACK, mid.to_bytes(2, "big")
                                               + bytes((reason,))),
              st.integers(1, 65535), st.integers(0, 255)),  # an MQTT 5 PUBACK with a reason
    st.builds(codec.publish311, st.text(min_size=1, max_size=40),
              st.binary(max_size=300), st.integers(1, 65535), st.integers(0, 1), st.booleans()),
    st.builds(lambda topic, payload, pairs: codec.publish5(
        topic, payload, mid=7, properties=codec.user_properties(pairs)),
        st.text(min_size=1, max_size=20), st.binary(max_size=20_000),
        st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(PACKETS, max_size=30), st.data())
def test_framing_yields_the_same_packets_however_the_stream_is_cut(
        packets: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(packets)
    whole = frames(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = PacketReader()
    acks: list[int] = []
    parts: list[tuple[int, bytes]] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        result = reader.split(stream[start:stop])
        assert not result.malformed
        acks += result.acks
        parts += result.packets
    assert (acks, parts) == whole
    assert reader.pending == 0
    assert len(acks) + len(parts) == len(packets)


def test_a_large_packet_arriving_in_many_reads_waits_without_being_framed_each_time() -> None:
    body = b"p" * 1_000_000
    stream = codec.packet(0x30, body)
    reader = PacketReader()
    got = []
    for i in range(0, len(stream), 4096):
        got += reader.split(stream[i:i + 4096]).packets
    assert got == [(0x30, body)]


# -- each packet kind, written and read back ---------------------------------------------------


def test_connect311_carries_clean_session_keepalive_will_and_credentials() -> None:
    raw = codec.connect311("bridge-1", keepalive=30, username="u", password="p",
                           will=("bridge/status", b"offline", 1, True))
    _, [(first, body)] = frames(raw)
    assert first == codec.CONNECT
    assert body[:6] == codec.utf8("MQTT")
    assert body[6] == 4
    flags = body[7]
    assert flags == 0x02 | 0x04 | 1 << 3 | 0x20 | 0x80 | 0x40  # clean, will qos 1 retained
    assert body[8:10] == (30).to_bytes(2, "big")
    assert body[10:] == b"".join(map(codec.utf8, ["bridge-1", "bridge/status", "offline",
                                                   "u", "p"]))
    assert frames(codec.connect311("x", keepalive=5))[1] == [
        (codec.CONNECT, codec.utf8("MQTT") + b"\x04\x02\x00\x05" + codec.utf8("x"))]


def test_connect5_has_an_empty_property_block() -> None:
    _, [(first, body)] = frames(codec.connect5("load", keepalive=60))
    assert (first, body) == (codec.CONNECT, codec.utf8("MQTT") + b"\x05\x02\x00\x3c\x00"
                             + codec.utf8("load"))


@pytest.mark.parametrize(("qos", "retain"), [(0, False), (0, True), (1, False), (1, True)])
def test_publish311_round_trip(qos: int, retain: bool) -> None:
    payload = b'{"value": 12.73}' * 20  # over 127 bytes: a two-byte remaining length
    _, [(first, body)] = frames(codec.publish311(TOPIC, payload, 513, qos, retain))
    assert first == codec.PUBLISH | qos << 1 | retain
    assert codec.publish_fields(first, body) == (TOPIC, 513 if qos else 0, payload)


def test_a_batch_is_the_single_packets_back_to_back() -> None:
    batch = [(f"{TOPIC}/{i}", b"v" * i * 50, i % 2 == 0) for i in range(6)]
    mids = [65535, 1, 2, 3, 4, 5]
    assert codec.publish311_many(batch, 1, mids) == b"".join(
        codec.publish311(t, p, mid, 1, r) for (t, p, r), mid in zip(batch, mids, strict=True))
    assert codec.publish311_many(batch, 0, []) == b"".join(
        codec.publish311(t, p, 0, 0, r) for t, p, r in batch)


def test_publish_fields_replaces_a_topic_that_is_not_utf8() -> None:
    body = codec.utf8(b"bad\xff") + b"payload"
    assert codec.publish_fields(codec.PUBLISH, body) == ("bad\ufffd", 0, b"payload")


def test_publish5_round_trip_with_user_properties() -> None:
    props = codec.user_properties([("timestamp", "1706905170.5"), ("ключ", "✓")])
    _, [(first, body)] = frames(codec.publish5(TOPIC, b"{}", mid=77, properties=props))
    assert first == codec.PUBLISH | 0x02 | 0x01
    assert codec.parse_publish(body, 1) == (
        TOPIC, 77, [("timestamp", "1706905170.5"), ("ключ", "✓")], b"{}")


def test_subscribe311_puback_and_the_bare_packets() -> None:
    acks, packets = frames(codec.subscribe311(12, ["a/#", "b/+"], 1) + codec.puback(65535)
                           + codec.PINGREQ_PACKET + codec.DISCONNECT_PACKET)
    assert acks == [65535]
    assert packets == [
        (codec.SUBSCRIBE | 0x02, b"\x00\x0c" + codec.utf8("a/#") + b"\x01"
         + codec.utf8("b/+") + b"\x01"),
        (codec.PINGREQ, b""), (codec.DISCONNECT, b"")]
    assert codec.packet_id(packets[0][1]) == 12


def test_connack_codes_and_receive_maximum() -> None:
    assert codec.connack_code(b"\x00\x00") == 0
    assert codec.connack_code(b"\x00\x05") == 5
    assert codec.REFUSED[5] == "not authorized"
    assert codec.connack_code(b"\x00") == 0xFF  # too short to say: not accepted
    props = b"\x24\x01" + b"\x21\x00\x14" + b"\x12" + codec.utf8("id")
    assert v5.connack_receive_maximum(b"\x00\x00" + codec.varint(len(props)) + props) == 20
    assert v5.connack_receive_maximum(b"\x00\x00\x00") is None  # not sent: 65535


# -- an independent decoder: paho-mqtt (installed with aiomqtt) --------------------------------
# paho has no public packet parser; its client decodes what a broker sends. So the test plays
# the broker on a loopback socket: paho reads the codec's PUBLISH packets and answers with its
# own PUBACK, SUBSCRIBE, PINGREQ and DISCONNECT, which the codec reads.

mqtt_client = pytest.importorskip("paho.mqtt.client")


class ScriptedBroker:
    """One accepted connection, read with `PacketReader`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.reader = PacketReader()
        self.acks: list[int] = []
        self.packets: list[tuple[int, bytes]] = []

    def accept(self) -> None:
        self.listener.settimeout(10)
        self.conn, _ = self.listener.accept()
        self.conn.setblocking(False)

    def pump(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(65536)
        except BlockingIOError:
            return
        result = self.reader.split(data)
        assert not result.malformed
        self.acks += result.acks
        self.packets += result.packets

    def close(self) -> None:
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()


def run_until(paho: Any, broker: ScriptedBroker, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "paho and the scripted broker got stuck"
        paho.loop(timeout=0.01)
        broker.pump()


@pytest.fixture(params=[4, 5], ids=["mqtt311", "mqtt5"])
def paho(request: pytest.FixtureRequest) -> Iterator[tuple[Any, ScriptedBroker, list[Any]]]:
    version = request.param
    protocol = mqtt_client.MQTTv311 if version == 4 else mqtt_client.MQTTv5
    client = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2, client_id="paho",
                                protocol=protocol)
    received: list[Any] = []
    client.on_message = lambda _c, _u, message: received.append(message)
    broker = ScriptedBroker()
    client.connect("127.0.0.1", broker.port, keepalive=60)
    broker.accept()
    run_until(client, broker, lambda: bool(broker.packets))
    assert broker.packets[0][0] == codec.CONNECT
    assert broker.packets[0][1][6] == version
    assert broker.conn is not None
    broker.conn.sendall(b"\x20\x02\x00\x00" if version == 4 else b"\x20\x03\x00\x00\x00")
    run_until(client, broker, client.is_connected)
    yield client, broker, received
    client.disconnect()
    broker.close()


def test_paho_reads_the_codecs_publish_packets(
        paho: tuple[Any, ScriptedBroker, list[Any]]) -> None:
    client, broker, received = paho
    v5 = client.protocol == mqtt_client.MQTTv5
    big = bytes(range(256)) * 80  # a three-byte remaining length
    sent = [("a/b", b"x", 0, False, 0), (TOPIC, big, 1, True, 300), ("é/✓", b"", 1, False, 301)]
    assert broker.conn is not None
    for topic, payload, qos, retain, mid in sent:
        if v5:
            props = codec.user_properties([("timestamp", "1706905170.5")])
            broker.conn.sendall(codec.publish5(topic, payload, mid=mid, qos=qos,
                                               retain=retain, properties=props))
        else:
            broker.conn.sendall(codec.publish311(topic, payload, mid, qos, retain))
    run_until(client, broker, lambda: len(received) == 3 and len(broker.acks) == 2)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in received] == [
        (t, p, q, r) for t, p, q, r, _ in sent]
    if v5:
        assert all(m.properties.UserProperty == [("timestamp", "1706905170.5")]
                   for m in received)
    assert broker.acks == [300, 301]  # paho's PUBACKs, read by the codec


def test_the_codec_reads_paho_s_packets(paho: tuple[Any, ScriptedBroker, list[Any]]) -> None:
    client, broker, _ = paho
    v5 = client.protocol == mqtt_client.MQTTv5
    client.subscribe("fleet/#", qos=1)
    info = client.publish("fleet/1/state", b"on" * 100, qos=1, retain=True)
    run_until(client, broker, lambda: len(broker.packets) >= 3)
    _, subscribe, publish = broker.packets[:3]
    assert subscribe[0] == codec.SUBSCRIBE | 0x02
    assert publish[0] == codec.PUBLISH | 0x02 | 0x01
    if v5:
        assert codec.parse_publish(publish[1], 1) == ("fleet/1/state", info.mid, [], b"on" * 100)
    else:
        assert codec.publish_fields(publish[0], publish[1]) == (
            "fleet/1/state", info.mid, b"on" * 100)
    client.disconnect()
    run_until(client, broker, lambda: broker.packets[-1][0] == codec.DISCONNECT)


@pytest.mark.parametrize(("first", "body", "fields"), [
    (0x30, b"", ("", 0, b"")),
    (0x30, b"\x00", ("", 0, b"")),
    (0x32, b"\x00\x01t", ("t", 0, b"")),
    (0x32, b"\x00\x01t\x07", ("t", 7, b"")),
])
def test_publish_fields_reads_a_truncated_body_as_far_as_it_goes(
        first: int, body: bytes, fields: tuple[str, int, bytes]) -> None:
    assert codec.publish_fields(first, body) == fields


# parse_publish: the flespi side's PUBLISH parser (under gmqtt, bridge/flespi/upstream.py)
FLESPI_TOPIC = "flespi/state/gw/devices/5537057/telemetry/battery.level"


def publish_body(topic: bytes, payload: bytes, props: bytes, mid: int | None = 7) -> bytes:
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
    assert parse_publish(publish_body(FLESPI_TOPIC.encode(), payload, props), 1) == (
        FLESPI_TOPIC, 7, [("timestamp", "1706905170.17258"), ("ключ", "значение ✓")], payload)
    assert parse_publish(publish_body(FLESPI_TOPIC.encode(), b"", props, mid=None), 0) == (
        FLESPI_TOPIC, None, [("timestamp", "1706905170.17258"), ("ключ", "значение ✓")], b"")


@pytest.mark.parametrize(("raw", "qos"), [
    # a topic alias: gmqtt keeps those
    (publish_body(FLESPI_TOPIC.encode(), b"1", b"\x23\x00\x01"), 1),
    (publish_body(b"", b"1", b"\x23\x00\x01"), 1),  # an empty topic (alias only)
    (publish_body(FLESPI_TOPIC.encode(), b"1", b""), 2),  # QoS 2
    (publish_body(FLESPI_TOPIC.encode(), b"1", b"\x7f\x00"), 1),  # no such property
    (publish_body(b"\xff\xfe", b"1", b""), 1),  # a topic that is not UTF-8
    (publish_body(FLESPI_TOPIC.encode(), b"1", user("a", "b"))[:-4], 1),  # truncated property block
    (publish_body(FLESPI_TOPIC.encode(), b"", b"\x26\x00\x05ab"), 1),  # property overruns its block
    (b"\x00\x40" + FLESPI_TOPIC.encode()[:10], 1),  # truncated topic
    (b"", 0),
])
def test_leaves_anything_unusual_to_gmqtt(raw: bytes, qos: int) -> None:
    assert parse_publish(raw, qos) is None


def test_random_bytes_never_raise() -> None:
    rng = random.Random(12)
    valid = publish_body(FLESPI_TOPIC.encode(), b"55", user("timestamp", "1.5"))
    for _ in range(20_000):
        raw = bytearray(valid)  # a valid packet with a few bytes changed, then cut
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        if rng.random() < 0.3:
            raw = bytearray(rng.randrange(256) for _ in range(rng.randrange(40)))
        result = parse_publish(bytes(raw[:rng.randrange(len(raw) + 1)]), rng.randrange(3))
        assert result is None or isinstance(result[0], str)


# -- MQTT 5, against an independent codec: `mqtt5` (Rust, the codec under aiomqtt 3) ---------

mqtt5 = pytest.importorskip("mqtt5")


def test_mqtt5_reads_the_clients_connect_with_will_credentials_and_receive_maximum() -> None:
    raw = codec.connect5("bridge-1", keepalive=30, username="u", password="p",
                         will=("flespi/bridge/state", b"offline", 1, True),
                         receive_maximum=1000)
    packet, size = mqtt5.read(bytearray(raw))
    assert size == len(raw)
    assert (packet.client_id, packet.username, packet.password, packet.keep_alive,
            packet.clean_start, packet.receive_max) == ("bridge-1", "u", b"p", 30, True, 1000)
    will = packet.will
    assert (will.topic, will.payload, will.qos, will.retain) == (
        "flespi/bridge/state", b"offline", mqtt5.QoS.AT_LEAST_ONCE, True)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t),
                          st.binary(max_size=20_000), st.booleans()), min_size=1, max_size=5),
       st.integers(0, 1))
def test_mqtt5_reads_the_clients_publish_batch(
        batch: list[tuple[str, bytes, bool]], qos: int) -> None:
    mids = list(range(65534, 65534 + len(batch)))
    mids = [mid % 65535 + 1 for mid in mids]
    raw = bytearray(codec.publish311_many(batch, qos, mids, v5=True))
    got = []
    while raw:
        packet, size = mqtt5.read(raw)
        del raw[:size]
        got.append((packet.topic, packet.payload, packet.retain, int(packet.qos.value),
                    packet.packet_id, packet.user_properties))
    assert got == [(t, p, r, qos, mid if qos else None, [])
                   for (t, p, r), mid in zip(batch, mids, strict=True)]


def test_mqtt5_reads_the_clients_subscribe_acknowledgements_and_disconnect() -> None:
    sub, _ = mqtt5.read(bytearray(codec.subscribe5(9, ["flespi/+/set", "a/#"], 1)))
    assert sub.packet_id == 9
    assert [(f.pattern, f.max_qos) for f in sub.topic_filters] == [
        ("flespi/+/set", mqtt5.QoS.AT_LEAST_ONCE), ("a/#", mqtt5.QoS.AT_LEAST_ONCE)]
    for kind, cls in ((codec.PUBREC, mqtt5.PubRecPacket), (codec.PUBREL, mqtt5.PubRelPacket),
                      (codec.PUBCOMP, mqtt5.PubCompPacket)):
        packet, _ = mqtt5.read(bytearray(codec.ack(kind, 300)))
        assert isinstance(packet, cls)
        assert packet.packet_id == 300
    packet, _ = mqtt5.read(bytearray(codec.disconnect5()))
    assert packet.reason_code == mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION


def test_the_client_reads_mqtt5s_connack_properties() -> None:
    raw = mqtt5.ConnAckPacket(receive_max=20, max_packet_size=65536, topic_alias_max=10,
                              reason_str="hello", user_properties=[("k", "v")]).write()
    _, [(first, body)] = frames(raw)
    assert first == codec.CONNACK
    assert codec.connack_code(body) == 0
    props = v5.connack_properties(body)
    assert (props[codec.RECEIVE_MAXIMUM], props[v5.MAXIMUM_PACKET_SIZE]) == (20, 65536)
    assert props[v5.REASON_STRING] == b"hello"
    assert v5.connack_receive_maximum(mqtt5.ConnAckPacket().write()[2:]) is None


@pytest.mark.parametrize(("code", "refused"), [
    ("SUCCESS", False), ("NO_MATCHING_SUBSCRIBERS", False), ("NOT_AUTHORIZED", True),
    ("QUOTA_EXCEEDED", True), ("IMPLEMENTATION_SPECIFIC_ERROR", True),
])
def test_a_pubacks_reason_code_tells_success_from_refusal(code: str, refused: bool) -> None:
    reason_code = getattr(mqtt5.PubAckReasonCode, code)
    plain = mqtt5.PubAckPacket(7, reason_code=reason_code).write()
    with_reason_string = mqtt5.PubAckPacket(8, reason_code=reason_code, reason_str="why").write()
    acks, packets = frames(plain + with_reason_string)
    # a success without properties is read on the fast path, like MQTT 3.1.1's PUBACK
    assert acks == ([] if refused else [7])
    others = {codec.packet_id(body): v5.reason_code(body, 2) for _, body in packets}
    assert {mid: code >= 0x80 for mid, code in others.items()} == (
        {7: True, 8: True} if refused else {8: False})


def test_the_client_reads_mqtt5s_suback_and_disconnect_reasons() -> None:
    raw = mqtt5.SubAckPacket(3, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE,
                                 mqtt5.SubAckReasonCode.NOT_AUTHORIZED],
                             reason_str="partly").write()
    _, [(_, body)] = frames(raw)
    assert codec.packet_id(body) == 3
    assert v5.suback_codes(body, True) == bytes((1, 0x87))
    raw = mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER,
                                 reason_str="another client").write()
    _, [(first, body)] = frames(raw)
    assert first == codec.DISCONNECT
    assert v5.reason_code(body, 0) == v5.SESSION_TAKEN_OVER
    assert v5.properties(body, 1)[v5.REASON_STRING] == b"another client"
    assert v5.reason(v5.SESSION_TAKEN_OVER) == "session taken over"
