"""Who holds a listener's slots: the limits it holds its clients to, what counts as one
client (an IPv4 address, or an IPv6 /64), and which clients are trusted with the reserved
slots. Pure bookkeeping, no I/O: `bridge.http.guard` admits and releases connections here.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from dataclasses import dataclass

# How long an address that sent an authorized request may use the reserved slots, and how
# many such addresses are remembered (only a client with the secret can add one).
TRUST_SECONDS = 3600.0
TRUSTED_MAX = 1024


@dataclass(frozen=True)
class Limits:
    """Seconds and counts one listener holds its clients to (defaults: the metrics port's).
    `max_per_address` is at most `max_connections` (the smaller one rules)."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    max_connections: int = 64
    max_per_address: int = 64
    max_line_size: int = 8190  # aiohttp's: the request line and each header line, bytes
    reserved: int = 0  # of max_connections, the slots only trusted clients may take


def client_key(address: str) -> str:
    """The client a connection counts against: its IPv4 address, or its IPv6 /64 (one
    subscriber's network: an attacker has 2**64 addresses there, not one)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Seats:
    """The connections open (in total and per client) and the trusted clients: at most
    `max_connections` in all, the last `reserved` for trusted clients only, and at most
    `max_per_address` per client."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open = 0
        self._per_address: Counter[str] = Counter()
        self._trusted: dict[str, float] = {}  # client key -> until (monotonic), oldest first

    def admit(self, address: str) -> str | None:
        """None if a connection from `address` may open (counted), else the reason not."""
        key = client_key(address)
        cap = self.limits.max_connections
        if not self.trusted(key):
            cap -= self.limits.reserved
        if self.open >= cap:
            return "connections"
        if self._per_address[key] >= self.limits.max_per_address:
            return "per_address"
        self.open += 1
        self._per_address[key] += 1
        return None

    def release(self, address: str) -> None:
        key = client_key(address)
        self.open -= 1
        self._per_address[key] -= 1
        if not self._per_address[key]:
            del self._per_address[key]

    def trust(self, address: str) -> None:
        """`address` sent an authorized request: it may use the reserved slots for an hour."""
        key = client_key(address)
        self._trusted.pop(key, None)
        self._trusted[key] = time.monotonic() + TRUST_SECONDS
        if len(self._trusted) > TRUSTED_MAX:
            del self._trusted[next(iter(self._trusted))]

    def trusted(self, key: str) -> bool:
        until = self._trusted.get(key)
        return until is not None and until > time.monotonic()
