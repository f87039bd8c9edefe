"""Times on the command line: ISO 8601, Unix seconds, or relative forms. Pure functions."""

from __future__ import annotations

import datetime as dt

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _midnight(now: float, days_back: int) -> float:
    day = dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=days_back)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def parse_time(text: str, now: float) -> float:
    """Unix seconds for `text`, relative to `now` where it is relative.

    Accepted: `now`, `today`, `yesterday` (UTC midnight), `-24h` / `-30m` / `-7d` / `-2w` /
    `-90s` (ago), a plain number (Unix seconds), or ISO 8601 (`2024-02-02`,
    `2024-02-02T20:19:30Z`, `2024-02-02T20:19:30+02:00`; no zone means UTC).
    Raises ValueError with a short reason otherwise.
    """
    value = text.strip()
    low = value.lower()
    if low == "now":
        return now
    if low == "today":
        return _midnight(now, 0)
    if low == "yesterday":
        return _midnight(now, 1)
    if len(low) >= 3 and low[0] == "-" and low[-1] in UNITS:
        amount = low[1:-1]
        try:
            number = float(amount)
        except ValueError:
            raise ValueError(f"bad relative time {text!r} (e.g. -24h, -30m, -7d)") from None
        if number < 0 or number != number:
            raise ValueError(f"bad relative time {text!r}")
        return now - number * UNITS[low[-1]]
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"bad time {text!r}")
        return number
    try:
        parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: use ISO 8601 (2024-02-02T20:19:30Z), "
                         "Unix seconds, now, today, yesterday or -24h/-30m/-7d") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def iso(ts: float) -> str:
    """`2024-02-02T20:19:30Z` (whole seconds, UTC)."""
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """`1:02:03` (hours may exceed 24)."""
    total = round(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"
