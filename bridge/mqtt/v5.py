"""MQTT 5's reason codes and properties, as the local client reads them from CONNACK,
PUBACK, SUBACK and DISCONNECT (`codec.py` encodes MQTT 5 packets and splits the stream).
Pure functions, no I/O; off the hot path (a successful PUBACK never comes here)."""

from __future__ import annotations

from bridge.mqtt.codec import RECEIVE_MAXIMUM, read_varint

MAXIMUM_PACKET_SIZE = 0x27
REASON_STRING = 0x1F
# MQTT 5 reason codes the local client acts on, and the names it logs
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK (MQTT 3.1.1's return code 1 says the same)
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT from the broker
REASONS = {0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
           0x83: "implementation specific error", 0x84: "unsupported protocol version",
           0x85: "client identifier not valid", 0x86: "bad user name or password",
           0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy",
           0x8A: "banned", 0x8B: "server shutting down", 0x8C: "bad authentication method",
           0x8D: "keep alive timeout", 0x8E: "session taken over",
           0x90: "topic name invalid", 0x93: "receive maximum exceeded",
           0x94: "topic alias invalid", 0x95: "packet too large", 0x97: "quota exceeded",
           0x99: "payload format invalid", 0x9A: "retain not supported",
           0x9B: "QoS not supported", 0x9C: "use another server", 0x9D: "server moved",
           0x9F: "connection rate exceeded"}
# The size of each MQTT 5 property a CONNACK or DISCONNECT may carry: id -> fixed size, or
# -1 for a length-prefixed string or binary, -3 for a user property (two strings).
_PROPERTY_SIZES = {0x11: 4, 0x12: -1, 0x13: 2, 0x15: -1, 0x16: -1, 0x17: 1, 0x19: 1,
                   0x1A: -1, 0x1C: -1, 0x1F: -1, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1,
                   0x26: -3, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}

def properties(body: bytes | bytearray, pos: int) -> dict[int, int | bytes]:
    """The MQTT 5 properties whose length is at `pos` (CONNACK, DISCONNECT): id -> integer
    value, or the bytes of a string (user properties are skipped). Stops at an unknown
    property, keeping what came before it; an empty dict when there are none."""
    found: dict[int, int | bytes] = {}
    try:
        plen, pos = read_varint(body, pos)
        end = min(pos + plen, len(body))
        while pos < end:
            prop = body[pos]
            pos += 1
            size = _PROPERTY_SIZES.get(prop)
            if size is None:
                break
            if size > 0:
                found[prop] = int.from_bytes(body[pos:pos + size], "big")
                pos += size
                continue
            for _ in range(2 if size == -3 else 1):
                n = int.from_bytes(body[pos:pos + 2], "big")
                if size == -1:
                    found[prop] = bytes(body[pos + 2:pos + 2 + n])
                pos += 2 + n
    except (IndexError, ValueError):
        pass
    return found


def connack_properties(body: bytes) -> dict[int, int | bytes]:
    """An MQTT 5 CONNACK body's properties (see `properties`)."""
    return properties(body, 2) if len(body) > 2 else {}


def connack_receive_maximum(body: bytes) -> int | None:
    """The Receive Maximum of an MQTT 5 CONNACK body (None: not sent, i.e. 65535)."""
    value = connack_properties(body).get(RECEIVE_MAXIMUM)
    return value if isinstance(value, int) else None


def reason_code(body: bytes, at: int) -> int:
    """The reason code at `at` of an MQTT 5 acknowledgement or DISCONNECT body; 0 (success)
    when the body ends before it, as MQTT 5 allows."""
    return body[at] if len(body) > at else 0


def reason(code: int) -> str:
    """A reason code as words, for the log."""
    return REASONS.get(code, f"reason code 0x{code:02X}")


def suback_codes(body: bytes, v5: bool) -> bytes:
    """The granted QoS or reason codes of a SUBACK body (after an MQTT 5 property block)."""
    if not v5 or len(body) < 3:
        return body[2:]
    try:
        plen, pos = read_varint(body, 2)
    except (IndexError, ValueError):
        return b"\x80"
    return body[pos + plen:]


def disconnect_reason(body: bytes) -> tuple[int, str]:
    """A DISCONNECT body's reason code, and in words with its reason string if any."""
    code = reason_code(body, 0)
    said = properties(body, 1).get(REASON_STRING) if len(body) > 1 else None
    return code, reason(code) + (f" ({said.decode(errors='replace')})"
                                 if isinstance(said, bytes) else "")
