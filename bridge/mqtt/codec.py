"""The MQTT wire format the bridge writes and reads itself: pure functions, no I/O.

The local client (`bridge/mqtt_client.py`, MQTT 3.1.1), the upstream PUBLISH parser (MQTT 5,
used by `bridge/flespi/upstream.py`) and the benchmark's load generator share it.
"""

from __future__ import annotations

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x80, 0x90, 0xC0, 0xD0, 0xE0
# CONNACK return codes of MQTT 3.1.1
REFUSED = {1: "unacceptable protocol version", 2: "identifier rejected",
           3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
# MQTT 5 PUBLISH properties `parse_publish` skips: id -> fixed size, or -1 for a two-byte
# length-prefixed string or binary, -2 for a variable byte integer. A topic alias (0x23) is
# not among them: its state lives in gmqtt's parser.
_SKIPPED_PROPERTIES = {0x01: 1, 0x02: 4, 0x03: -1, 0x08: -1, 0x09: -1, 0x0B: -2}
USER_PROPERTY = 0x26


def varint(n: int) -> bytes:
    """`n` as an MQTT variable byte integer (remaining length, property lengths)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it); IndexError when `data` ends inside it, ValueError when
    it is longer than MQTT's four bytes."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ValueError("variable byte integer too long")


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


def connect311(client_id: str, *, keepalive: int, username: str | None = None,
               password: str | None = None,
               will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session; `will` is (topic, payload, qos, retain)."""
    flags = 0x02
    payload = utf8(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += utf8(topic) + utf8(message)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
        if password is not None:
            flags |= 0x40
            payload += utf8(password)
    return packet(CONNECT, utf8(b"MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big")
                  + payload)


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
