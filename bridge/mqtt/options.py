"""How the local client connects (`Options`, `Will`), and the errors that tell a refusal
from a loss."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from bridge.exceptions import BridgeError, LocalUnavailableError


class ProtocolRefusedError(LocalUnavailableError):
    """The broker refused MQTT 5 (CONNACK "unsupported protocol version"), or closed the
    connection or stayed silent after an MQTT 5 CONNECT, as some MQTT 3.1.1 brokers do:
    worth trying again at once with `Options(protocol=4)`."""


class SessionTakenOverError(LocalUnavailableError):
    """The broker closed the connection because another client connected with the same
    client id (MQTT 5 DISCONNECT 0x8E)."""


class PublishRefusedError(BridgeError):
    """The broker refused one publication (MQTT 5 reason `code`, or larger than its Maximum
    Packet Size: 0x95); the connection is fine."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Options:
    """How to connect, besides where to and as whom: credentials, the will, keepalive (s),
    TLS, and how long to wait for CONNACK and SUBACK (s)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    will: Will | None = None
    keepalive: int = 60
    tls: ssl.SSLContext | None = None
    timeout: float = 10.0
    protocol: int = 5  # 5: MQTT 5; 4: MQTT 3.1.1


DEFAULT_OPTIONS = Options()
