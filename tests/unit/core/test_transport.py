"""Routing of local messages: MQTT filter matching, every matching route in order, the
filters to subscribe to."""

from __future__ import annotations

import pytest

from bridge.core.transport import Routes, matches


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("flespi/+/set", "flespi/7/set", True),
    ("flespi/+/set", "flespi/7/lock/set", False),
    ("flespi/+/+/set", "flespi/7/lock/set", True),
    ("homeassistant/status", "homeassistant/status", True),
    ("homeassistant/status", "homeassistant/status/x", False),
    ("flespi/#", "flespi", True),
    ("flespi/#", "flespi/7/state", True),
    ("#", "$SYS/broker", False),
    ("+/x", "$SYS/x", False),
    ("a/+", "a/", True),
])
def test_filters_match_as_mqtt_says(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


def test_a_message_goes_to_every_matching_route_in_order() -> None:
    routes, seen = Routes(), []
    routes.add("b/+/set", lambda t, p, r: seen.append(("set", t, p, r)))
    routes.add("ha/status", lambda t, p, r: seen.append(("status", t, p, r)))
    routes.add("b/#", lambda t, p, r: seen.append(("all", t, p, r)))
    routes.dispatch("b/1/set", b"x", False)
    routes.dispatch("ha/status", b"online", True)
    routes.dispatch("other", b"", False)  # nobody's: ignored
    assert seen == [("set", "b/1/set", b"x", False), ("all", "b/1/set", b"x", False),
                    ("status", "ha/status", b"online", True)]
    assert routes.filters == ["b/+/set", "ha/status", "b/#"]
