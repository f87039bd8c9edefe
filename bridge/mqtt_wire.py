"""MQTT's variable byte integer, the one piece of the wire format that the bridge's own
local client, its upstream PUBLISH parser and the benchmark's load generator all need."""

from __future__ import annotations


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
