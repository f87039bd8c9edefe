"""Every error the bridge raises on purpose; third-party errors are converted at the boundary."""


class BridgeError(Exception):
    """Base class of the bridge's own errors."""


class ConfigError(BridgeError):
    """The configuration cannot be loaded; `problems` lists (key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))


class BrokerUnavailableError(BridgeError):
    """No Mosquitto broker could be started (neither the binary nor Docker is available)."""


class LocalUnavailableError(BridgeError):
    """The local broker is not connected (or the connection dropped mid-publish)."""
