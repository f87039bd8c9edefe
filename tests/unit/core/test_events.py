"""The event hub: typed cold-path events, handlers in subscription order, one handler's bug
never takes away the others' reactions."""

from __future__ import annotations

import logging

import pytest

from bridge.core.events import (
    EventHub,
    HomeAssistantOnline,
    LocalConnected,
    NamesLearned,
)


def test_handlers_get_their_type_only_in_subscription_order() -> None:
    hub, seen = EventHub(), []
    hub.subscribe(LocalConnected, lambda e: seen.append(("first", e.connects)))
    hub.subscribe(NamesLearned, lambda e: seen.append(("names", e.id)))
    hub.subscribe(LocalConnected, lambda e: seen.append(("second", e.connects)))
    hub.emit(LocalConnected(2))
    assert seen == [("first", 2), ("second", 2)]
    hub.emit(NamesLearned("protocol", 14))
    assert seen[-1] == ("names", 14)


def test_an_event_nobody_subscribed_to_is_dropped() -> None:
    EventHub().emit(HomeAssistantOnline())  # no handler, no error


def test_a_failing_handler_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    hub, seen = EventHub(), []

    def broken(_: LocalConnected) -> None:
        raise RuntimeError("a bug in one part")

    hub.subscribe(LocalConnected, broken)
    hub.subscribe(LocalConnected, lambda e: seen.append(e.connects))
    with caplog.at_level(logging.ERROR, logger="bridge.core.events"):
        hub.emit(LocalConnected(1))
    assert seen == [1]
    assert any("LocalConnected" in r.getMessage() and r.exc_info for r in caplog.records)


def test_events_are_values() -> None:
    assert LocalConnected(3) == LocalConnected(3)
    with pytest.raises(AttributeError):
        LocalConnected(3).connects = 4  # type: ignore[misc]
