"""Times on the command line: relative, named and ISO times, and their formatting."""

from __future__ import annotations

import pytest
from support.toolbox_helpers import NOW

from bridge.toolbox.timeparse import duration, iso, parse_time


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("-24h", NOW - 86400),
    ("-30m", NOW - 1800),
    ("-7d", NOW - 7 * 86400),
    ("-1.5h", NOW - 5400),
    ("today", 1706832000.0),
    ("yesterday", 1706745600.0),
    ("1706905170", NOW),
    ("2024-02-02T20:19:30Z", NOW),
    ("2024-02-02T22:19:30+02:00", NOW),
    ("2024-02-02T20:19:30", NOW),  # no zone: UTC
    ("2024-02-02", 1706832000.0),
])
def test_times(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "-h", "-xh", "last tuesday", "2024-13-01", "nan"])
def test_bad_times(text: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        parse_time(text, NOW)


def test_formatting() -> None:
    assert iso(NOW + 0.9) == "2024-02-02T20:19:30Z"
    assert duration(3723) == "1:02:03"
