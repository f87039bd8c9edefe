"""flespi topic grammar."""

from __future__ import annotations

import pytest

from bridge.flespi.topics import Kind, Topic, parse, rest_topic, subscriptions


@pytest.mark.parametrize(("topic", "expected"), [
    ("flespi/state/gw/devices/5537057/telemetry/battery.level",
     Topic(Kind.TELEMETRY, 5537057, "battery.level")),
    ("flespi/state/gw/devices/5537057/telemetry/position",
     Topic(Kind.TELEMETRY, 5537057, "position")),
    ("flespi/state/gw/devices/5537057", Topic(Kind.DEVICE, 5537057, "")),
    ("flespi/state/gw/devices/5537057/connected", Topic(Kind.PROPERTY, 5537057, "connected")),
    ("flespi/state/gw/devices/5537057/name", Topic(Kind.PROPERTY, 5537057, "name")),
    ("flespi/message/gw/devices/42", Topic(Kind.MESSAGE, 42, "")),
    ("flespi/state/gw/devices/5537057/connections/3492206331502027",
     Topic(Kind.CONNECTION, 5537057, "3492206331502027")),
    ("flespi/state/gw/devices/42/settings/upload_interval",
     Topic(Kind.SETTING, 42, "upload_interval")),
])
def test_parse_known_topics(topic: str, expected: Topic) -> None:
    assert parse(topic) == expected


@pytest.mark.parametrize("topic", [
    "flespi/state/gw/devices/abc/telemetry/battery.level",  # id not a number
    "flespi/state/gw/devices/-1/telemetry/x",
    "flespi/state/gw/devices/0",  # 0 is no device
    "flespi/state/gw/devices/\uff11\uff12\uff13",  # non-ASCII (fullwidth) digits
    "flespi/state/gw/devices/1234567890123456",  # longer than any flespi id
    "flespi/state/gw/devices/1/telemetry/",  # empty parameter
    "flespi/state/gw/devices/1/telemetry/a/b",
    "flespi/state/gw/devices/1/settings/",  # empty setting name
    "flespi/state/gw/devices/1/settings/x/current",  # a setting's fields: not followed
    "flespi/state/gw/devices/1/connections/",  # no connection id
    "flespi/state/gw/devices/1/connections/a/b",
    "flespi/state/gw/devices/1/last_active",
    "flespi/state/gw/devices/",
    "flespi/message/gw/devices/1/extra",
    "flespi/log/gw/devices/1/connected",
    "something/else",
    "",
])
def test_parse_rejects_everything_else(topic: str) -> None:
    assert parse(topic) is None


def test_subscriptions_all_devices_every_parameter() -> None:
    assert subscriptions("all", None, comma_lists=False) == [
        "flespi/state/gw/devices/+",
        "flespi/state/gw/devices/+/connected",
        "flespi/state/gw/devices/+/name",
        "flespi/state/gw/devices/+/telemetry/+",
        "flespi/state/gw/devices/+/connections/+",
    ]


def test_subscriptions_use_flespi_comma_lists() -> None:
    filters = subscriptions([3, 1], ["position", "battery.level"], comma_lists=True,
                            messages=True)
    assert "flespi/state/gw/devices/3,1/telemetry/battery.level,position" in filters
    assert "flespi/message/gw/devices/3,1" in filters
    assert "flespi/state/gw/devices/3,1/connections/+" in filters
    assert len(filters) == 6


def test_subscriptions_standard_fallback_one_filter_per_item() -> None:
    filters = subscriptions([3, 1], ["position", "battery.level"], comma_lists=False)
    assert "flespi/state/gw/devices/1/telemetry/position" in filters
    assert "flespi/state/gw/devices/3/telemetry/battery.level" in filters
    assert not any("," in f for f in filters)
    assert len(filters) == 2 * (3 + 2 + 1)


def test_subscriptions_follow_only_the_settings_named() -> None:
    assert subscriptions("all", ["position"], comma_lists=True,
                         settings=["upload_interval", "apn"])[-1] == \
        "flespi/state/gw/devices/+/settings/apn,upload_interval"
    filters = subscriptions([1], ["position"], comma_lists=False, settings=["a", "b"])
    assert [f for f in filters if "/settings/" in f] == [
        "flespi/state/gw/devices/1/settings/a", "flespi/state/gw/devices/1/settings/b"]
    assert not any("/settings/" in f for f in subscriptions("all", None, comma_lists=False))


def test_rest_topic() -> None:
    assert rest_topic("POST", "/gw/devices/5/commands") == "flespi/rest/post/gw/devices/5/commands"
