"""How the bridge speaks: logging set-up (text or JSON lines), secrets scrubbed from every
record whatever logged it, and rate-limited warnings for hostile input so that a flood of bad
messages cannot flood the log. A shared leaf: it imports nothing of the bridge."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

REDACTED = "***"


class RedactingFilter(logging.Filter):
    """Replaces every secret in the formatted message and arguments, whatever logged it
    (gmqtt, aiomqtt, httpx and the bridge alike)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg = self.scrub(message)
            record.args = None
            if record.exc_text:
                record.exc_text = self.scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)


def setup(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(
        JsonFormatter() if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The MQTT and HTTP libraries narrate every connection and subscription at INFO
    # ([CONNECTION MADE], SUBACK ...): at WARNING unless the level is DEBUG. The clients the
    # bridge names itself narrate every packet at DEBUG: even then, that stays off.
    debug = logging.getLevelName(level) <= logging.DEBUG
    for noisy in CHATTY:
        logging.getLogger(noisy).setLevel(logging.NOTSET if debug else logging.WARNING)
    for noisy in PACKET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.INFO if debug else logging.WARNING)


# Other libraries' loggers whose INFO is chatter, and the bridge's names for its MQTT clients.
CHATTY = ("gmqtt", "aiomqtt", "httpx", "httpcore")
PACKET_LOGGERS = ("bridge.flespi.gmqtt", "bridge.sim.gmqtt", "bridge.publish.local_broker.mqtt")


SUPPRESSED = "%d more %r warnings suppressed in the last %.0fs"


class RateLimitedLog:
    """At most `burst` warnings per key per `period` seconds; the rest are summarized."""

    def __init__(self, logger: logging.Logger, burst: int = 5, period: float = 60.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self._windows: dict[str, tuple[float, int]] = {}

    def admit(self, key: str) -> bool:
        """Whether one more line of `key` may be logged now (counted either way)."""
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.period:
            if count > self.burst:
                self.logger.warning(SUPPRESSED, count - self.burst, key, now - start)
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        return count <= self.burst

    def warning(self, key: str, msg: str, *args: object) -> None:
        if self.admit(key):
            self.logger.warning(msg, *args)


class RateLimitFilter(logging.Filter):
    """`RateLimitedLog`'s limit for a logger the bridge does not write itself (aiohttp's
    server errors): at most `burst` records of one message template per `period`, keyed on
    the template, not the arguments (a client address must not open a window of its own)."""

    def __init__(self, logger: logging.Logger, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self._limit = RateLimitedLog(logger, burst, period)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg is SUPPRESSED:  # the summary itself
            return True
        return self._limit.admit(str(record.msg))
