"""The MQTT wire format, the one place the project encodes and decodes MQTT packets: pure
functions and a stream splitter, no I/O.

Its users: the local client (`bridge/mqtt/client.py`, MQTT 5 or 3.1.1), the upstream PUBLISH
parser (`parse_publish`, MQTT 5, used by `bridge/flespi/upstream.py`), and the benchmark's
load generator and checkers (`bench/`), which encode MQTT 5 PUBLISH packets ahead of the
clock and read the broker's answers with `PacketReader`.

Written for speed: these functions run once per publication on the bridge's hot path, hence
plain indexing and `bytes` concatenation rather than `struct` or packet objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
PUBREC, PUBREL, PUBCOMP = 0x50, 0x60, 0x70
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x80, 0x90, 0xC0, 0xD0, 0xE0
# CONNACK return codes of MQTT 3.1.1
REFUSED = {1: "unacceptable protocol version", 2: "identifier rejected",
           3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
# MQTT 5 PUBLISH properties `parse_publish` skips: id -> fixed size, or -1 for a two-byte
# length-prefixed string or binary, -2 for a variable byte integer. A topic alias (0x23) is
# not among them: its state lives in gmqtt's parser.
_SKIPPED_PROPERTIES = {0x01: 1, 0x02: 4, 0x03: -1, 0x08: -1, 0x09: -1, 0x0B: -2}
USER_PROPERTY = 0x26
RECEIVE_MAXIMUM = 0x21
# The packets without a variable part.
PINGREQ_PACKET = bytes((PINGREQ, 0))
PINGRESP_PACKET = bytes((PINGRESP, 0))
DISCONNECT_PACKET = bytes((DISCONNECT, 0))
# The largest remaining length MQTT can express (four bytes of seven bits).
MAX_REMAINING_LENGTH = 268_435_455


class MalformedPacketError(ValueError):
    """The byte stream is not MQTT (a remaining length over four bytes): the connection
    cannot be read any further."""


# -- primitives ------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """`n` as an MQTT variable byte integer (remaining length, property lengths)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it); IndexError when `data` ends inside it,
    MalformedPacketError (a ValueError) when it is longer than MQTT's four bytes."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacketError("variable byte integer too long")


def fixed_header(first: int, length: int) -> bytes:
    """A packet's first byte and remaining length (the common short cases without a loop)."""
    if length < 128:
        return bytes((first, length))
    if length < 16384:
        return bytes((first, length & 0x7F | 0x80, length >> 7))
    return bytes((first,)) + varint(length)


def utf8(text: str | bytes) -> bytes:
    """A two-byte length-prefixed string or binary."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def packet(first: int, body: bytes) -> bytes:
    return fixed_header(first, len(body)) + body


# -- what a client sends -----------------------------------------------------------------


def _connect_payload(client_id: str, will: tuple[str, bytes, int, bool] | None,
                     username: str | None, password: str | None, v5: bool
                     ) -> tuple[int, bytes]:
    """A CONNECT's flags (clean session/start) and payload; MQTT 5 puts an (empty) property
    block before the will."""
    flags = 0x02
    payload = utf8(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += (b"\x00" if v5 else b"") + utf8(topic) + utf8(message)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
        if password is not None:
            flags |= 0x40
            payload += utf8(password)
    return flags, payload


def connect311(client_id: str, *, keepalive: int, username: str | None = None,
               password: str | None = None,
               will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session; `will` is (topic, payload, qos, retain)."""
    flags, payload = _connect_payload(client_id, will, username, password, False)
    return packet(CONNECT, utf8(b"MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
                  + payload)


def connect5(client_id: str, *, keepalive: int = 60, username: str | None = None,
             password: str | None = None, will: tuple[str, bytes, int, bool] | None = None,
             receive_maximum: int | None = None) -> bytes:
    """An MQTT 5 CONNECT with a clean start (the session ends with the connection);
    `receive_maximum`, when given, is how many QoS 1 messages the broker may send before
    waiting for their PUBACKs. Without options: the benchmark's load generator's."""
    flags, payload = _connect_payload(client_id, will, username, password, True)
    props = b"" if receive_maximum is None else \
        bytes((RECEIVE_MAXIMUM,)) + receive_maximum.to_bytes(2, "big")
    return packet(CONNECT, utf8(b"MQTT") + bytes((5, flags)) + keepalive.to_bytes(2, "big")
                  + varint(len(props)) + props + payload)


def publish311_many(publications: Sequence[tuple[str, bytes, bool]], qos: int,
                   mids: Sequence[int], v5: bool = False) -> bytes:
    """MQTT 3.1.1 PUBLISH packets back to back, one per (topic, payload, retain), all at
    `qos`; at QoS 1 the n-th has packet id `mids[n]` (at QoS 0 `mids` is not read).

    The local client's hot path, run for every publication: one join for the whole batch,
    one loop per QoS (timed no slower than the encoding inlined in the client's loop).
    `v5`: MQTT 5 PUBLISH packets instead, each with an empty property block (one byte)."""
    parts: list[bytes] = []
    add = parts.extend
    first = PUBLISH | qos << 1
    extra = 1 if v5 else 0
    props = b"\x00" if v5 else b""
    if qos:
        for (topic, payload, retain), mid in zip(publications, mids, strict=True):
            encoded = topic.encode()
            size = len(encoded)
            add((fixed_header(first | retain, 4 + extra + size + len(payload)),
                 size.to_bytes(2, "big"), encoded, mid.to_bytes(2, "big") + props, payload))
    else:
        for topic, payload, retain in publications:
            encoded = topic.encode()
            size = len(encoded)
            add((fixed_header(first | retain, 2 + extra + size + len(payload)),
                 size.to_bytes(2, "big"), encoded + props, payload))
    return b"".join(parts)


def publish311(topic: str, payload: bytes, mid: int = 0, qos: int = 0,
               retain: bool = False) -> bytes:
    """One MQTT 3.1.1 PUBLISH; `mid` is its packet id at QoS 1. The same bytes as
    `publish311_many` (the tests hold them equal), without a batch's setup."""
    encoded = topic.encode()
    size = len(encoded)
    first = PUBLISH | qos << 1 | retain
    if qos:
        return b"".join((fixed_header(first, 4 + size + len(payload)),
                         size.to_bytes(2, "big"), encoded, mid.to_bytes(2, "big"), payload))
    return b"".join((fixed_header(first, 2 + size + len(payload)), size.to_bytes(2, "big"),
                     encoded, payload))


def publish5(topic: str, payload: bytes, *, mid: int = 0, qos: int = 1,
             retain: bool = True, properties: bytes = b"") -> bytes:
    """An MQTT 5 PUBLISH; `properties` is the encoded property block (no length)."""
    first = PUBLISH | (qos << 1) | (1 if retain else 0)
    vh = utf8(topic)
    if qos:
        vh += mid.to_bytes(2, "big")
    vh += varint(len(properties)) + properties
    return packet(first, vh + payload)


def user_properties(pairs: Sequence[tuple[str, str]]) -> bytes:
    """MQTT 5 user properties, for `publish5`'s `properties`."""
    return b"".join(bytes((USER_PROPERTY,)) + utf8(k) + utf8(v) for k, v in pairs)


def subscribe311(mid: int, filters: Sequence[str], qos: int = 1) -> bytes:
    """An MQTT 3.1.1 SUBSCRIBE of `filters`, all at `qos`."""
    # SUBSCRIBE's fixed header flags are 0b0010 (MQTT 3.1.1, 3.8.1)
    body = mid.to_bytes(2, "big") + b"".join(utf8(f) + bytes((qos,)) for f in filters)
    return packet(SUBSCRIBE | 0x02, body)


def subscribe5(mid: int, filters: Sequence[str], qos: int = 1) -> bytes:
    """An MQTT 5 SUBSCRIBE of `filters`, all at maximum `qos`, without properties."""
    body = mid.to_bytes(2, "big") + b"\x00" + b"".join(utf8(f) + bytes((qos,))
                                                       for f in filters)
    return packet(SUBSCRIBE | 0x02, body)


def puback(mid: int) -> bytes:
    """A PUBACK without a reason code (MQTT 3.1.1; success in MQTT 5)."""
    return bytes((PUBACK, 2)) + mid.to_bytes(2, "big")


def ack(kind: int, mid: int) -> bytes:
    """A PUBREC, PUBREL or PUBCOMP (success) of `mid`; PUBREL's flags are 0b0010."""
    return bytes((kind | (0x02 if kind == PUBREL else 0), 2)) + mid.to_bytes(2, "big")


def disconnect5(reason: int = 0) -> bytes:
    """An MQTT 5 DISCONNECT with a reason code."""
    return bytes((DISCONNECT, 1, reason))


# -- what a client reads ------------------------------------------------------------------


def packet_id(body: bytes) -> int:
    """The packet id that begins a PUBACK's or a SUBACK's body (0 if the body is short)."""
    return int.from_bytes(body[:2], "big")


def connack_code(body: bytes) -> int:
    """A CONNACK's return code (MQTT 3.1.1) or reason code (MQTT 5); 0xFF when the body is
    too short to hold one."""
    return body[1] if len(body) >= 2 else 0xFF


def publish_fields(first: int, body: bytes) -> tuple[str, int, bytes]:
    """(topic, packet id or 0, payload) of an MQTT 3.1.1 PUBLISH body; a topic that is not
    UTF-8 is decoded with replacement characters rather than refused. Runs once per message
    the benchmark's checkers receive: plain indexing."""
    try:
        start = 2 + (body[0] << 8 | body[1])
        topic = body[2:start].decode("utf-8", "replace")
        if first & 0x06:
            return topic, body[start] << 8 | body[start + 1], body[start + 2:]
        return topic, 0, body[start:]
    except IndexError:  # a body too short for its header: read what there is
        start = 2 + int.from_bytes(body[:2], "big")
        topic = body[2:start].decode("utf-8", "replace")
        if not first & 0x06:
            return topic, 0, body[start:]
        return topic, int.from_bytes(body[start:start + 2], "big"), body[start + 2:]


def parse_publish(raw: bytes, qos: int
                  ) -> tuple[str, int | None, list[tuple[str, str]], bytes] | None:
    """An MQTT 5 PUBLISH packet's variable header and payload: (topic, packet id, user
    properties, payload); None for anything a full parser must handle (a topic alias,
    QoS 2, an unknown or malformed property). Runs once per upstream message: plain
    indexing, no `struct`."""
    try:
        n = raw[0] << 8 | raw[1]
        pos = 2 + n
        if not n or qos > 1 or pos > len(raw):
            return None
        topic = raw[2:pos].decode()
        mid = None
        if qos:
            mid = raw[pos] << 8 | raw[pos + 1]
            pos += 2
        length = raw[pos]
        if length < 0x80:
            pos += 1
        else:
            length, pos = read_varint(raw, pos)
        end = pos + length
        if end > len(raw):
            return None
        users: list[tuple[str, str]] = []
        while pos < end:
            prop = raw[pos]
            if prop == USER_PROPERTY:
                start = pos + 3
                pos = start + (raw[pos + 1] << 8 | raw[pos + 2])
                key = raw[start:pos].decode()
                start = pos + 2
                pos = start + (raw[pos] << 8 | raw[pos + 1])
                users.append((key, raw[start:pos].decode()))
                continue
            size = _SKIPPED_PROPERTIES.get(prop)
            if size is None:
                return None
            pos += 1
            if size == -1:
                size = 2 + (raw[pos] << 8 | raw[pos + 1])
            elif size == -2:
                size = read_varint(raw, pos)[1] - pos
            pos += size
        if pos != end:
            return None
        return topic, mid, users, raw[end:]
    except (IndexError, ValueError):  # UnicodeDecodeError included
        return None


# -- the byte stream ----------------------------------------------------------------------


class Frames(NamedTuple):
    """What one read of the stream held: `acks`, the packet ids of the PUBACKs that say
    success (MQTT 3.1.1's, and MQTT 5's with a reason code under 0x80 and no properties),
    decoded here because a publisher receives one per message; `packets`,
    every other packet as (first byte, body), in order; `malformed`, whether the stream
    stopped making sense (a remaining length over four bytes) after those."""

    acks: list[int]
    packets: list[tuple[int, bytes]]
    malformed: bool


class PacketReader:
    """Splits a byte stream into packets, however the stream was cut into reads: `split`
    each read; a packet cut short waits, unparsed, until the reads that complete it.

    The client's hot path (a PUBACK per publication) runs here: plain indexing on `bytes`,
    no object per PUBACK but its id, and a large packet arriving in many reads is copied
    once, when complete, not once per read."""

    __slots__ = ("_buffer", "_needed")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the start of a packet not yet complete
        self._needed = 0  # how long the buffer must be before it is worth framing again

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a whole packet."""
        return len(self._buffer)

    def split(self, data: bytes) -> Frames:
        acks: list[int] = []
        packets: list[tuple[int, bytes]] = []
        rest = self._buffer
        if rest:
            rest += data
            if len(rest) < self._needed:
                return Frames(acks, packets, False)
            data = bytes(rest)
            rest.clear()
        pos, end, malformed, needed = 0, len(data), False, 0
        while end - pos >= 2:
            first = data[pos]
            length = data[pos + 1]
            if first == PUBACK and length == 2:
                if end - pos < 4:
                    break
                acks.append(data[pos + 2] << 8 | data[pos + 3])
                pos += 4
                continue
            if first == PUBACK and length == 3 and end - pos >= 5 and data[pos + 4] < 0x80:
                # MQTT 5: success with a reason (Mosquitto's 0x10, no matching subscribers)
                acks.append(data[pos + 2] << 8 | data[pos + 3])
                pos += 5
                continue
            if length < 0x80:  # the common one-byte remaining length, inline
                start = pos + 2
            else:
                try:
                    length, start = read_varint(data, pos + 1)
                except IndexError:
                    break  # the remaining length itself is still on its way
                except MalformedPacketError:
                    malformed = True
                    break
            stop = start + length
            if stop > end:
                needed = stop - pos
                break  # the rest of the packet is still on its way
            packets.append((first, data[start:stop]))
            pos = stop
        self._needed = needed
        if pos < end:
            rest += memoryview(data)[pos:]
        return Frames(acks, packets, malformed)
