"""Every error the bridge raises on purpose; third-party errors are converted at the boundary."""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Base class of the bridge's own errors."""


class ConfigError(BridgeError):
    """The configuration cannot be loaded; `problems` lists (key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))


class BrokerUnavailableError(BridgeError):
    """No Mosquitto broker could be started (neither the binary nor Docker is available)."""


class ListenError(BridgeError):
    """An HTTP listener (metrics, the stream's endpoint) cannot bind its address."""


class LocalUnavailableError(BridgeError):
    """The local broker is not connected (or the connection dropped mid-publish)."""


class UpstreamError(BridgeError):
    """The upstream connection failed or was refused."""


class RestError(BridgeError):
    """A REST call failed; `code` is one of timeout, upstream_disconnected, flespi_error,
    rate_limited, bad_response.

    `sent` tells whether the request may have reached flespi: False only when it certainly
    did not (not connected, the publish or the TCP connection failed), so it may be retried
    under the same transaction id; True means it may or may not have been executed.
    """

    def __init__(self, code: str, message: str, http_code: int | None = None,
                 body: Any = None, *, sent: bool = True) -> None:
        self.code = code
        self.message = message
        self.http_code = http_code
        self.body = body
        self.sent = sent
        super().__init__(message)


class CommandError(BridgeError):
    """A command request is refused or failed; `code` is its result code
    (`docs/commands.md`)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
