"""Hostile input from flespi (issue 7, point 5): whatever arrives upstream, the bridge never
crashes, counts and logs (rate-limited) every rejected input, keeps its state typed as the
catalogue says, and never lets a device name change a topic."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from typing import Any

import aiomqtt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families
from support.helpers import (
    TOKEN,
    BridgeFactory,
    Recorder,
    expected_state,
    make_settings,
    wait_until,
)

from bridge import logs as bridge_logs
from bridge.app.bridge import Bridge
from bridge.config import settings as config
from bridge.core.store import ALL
from bridge.flespi.ingest import MAX_UPSTREAM_PAYLOAD
from bridge.flespi.topics import MESSAGE_PREFIX, STATE_PREFIX
from bridge.normalize import catalog
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"
PREFIX = "homeassistant"
EXTRA_NUMBER = "custom.fuel.tank"
EXTRA_OBJECT = "custom.blob"
SETTINGS = config.load(overrides={
    "flespi": {"token": TOKEN, "host": "127.0.0.1", "tls": False,
               "extra_parameters": [EXTRA_NUMBER, EXTRA_OBJECT], "messages": True},
    "metrics": {"enabled": False,
                "fleet_parameters": ["voltage", "signal", "speed", "charging",
                                     "custom_fuel_tank", "custom_blob"]},
})
CATALOG = catalog.build(SETTINGS.flespi.extra_parameters)
ATTRIBUTES = catalog.attributes(CATALOG)
IDS = [1, 42, 5537057, 10**15 - 1]


def upstream_invalid(bridge: Bridge) -> int:
    return sum(n for (source, _), n in bridge.stats.invalid.items() if source == "upstream")


# -- what the bridge must make of a topic (a reference independent of the parser) ------------

STATE_TOPIC = re.compile(
    r"flespi/state/gw/devices/(?P<id>[0-9]{1,15})"
    r"(?:/(?P<prop>connected|name)|/telemetry/(?P<param>[^/]+))?")
MESSAGE_TOPIC = re.compile(r"flespi/message/gw/devices/(?P<id>[0-9]{1,15})")


def classify(topic: str) -> tuple[str, str]:
    """(kind, name): kind is `ignored` (not a flespi device topic), `bad_topic` (a flespi
    device topic with a bad id or level), `unknown` (a parameter outside the catalogue),
    `telemetry`, `device`, `connected`, `name` or `message`."""
    m = STATE_TOPIC.fullmatch(topic)
    if m and int(m["id"]) > 0:
        if m["param"]:
            return ("telemetry", m["param"]) if m["param"] in CATALOG else ("unknown", "")
        return (m["prop"], "") if m["prop"] else ("device", "")
    m = MESSAGE_TOPIC.fullmatch(topic)
    if m and int(m["id"]) > 0:
        return ("message", "")
    if topic.startswith((STATE_PREFIX, MESSAGE_PREFIX)):
        return ("bad_topic", "")
    return ("ignored", "")


# -- strategies -------------------------------------------------------------------------------

def not_a_device_id(text: str) -> bool:
    return not (re.fullmatch(r"[0-9]{1,15}", text) and int(text) > 0)


garbage_ids = st.one_of(
    st.sampled_from(["0", "000", "-1", "1.5", "1e3", "0x1f", " 42", "42 ",
                     "\uff11\uff12\uff13", "\u0664\u0662", "9" * 16, "+", "#", "", "abc",
                     "42abc", "NaN", "∞", "\x00", "\ufffd", "42/43", "null"]),
    st.text(max_size=20).filter(not_a_device_id),
)
parameter_names = st.one_of(
    st.sampled_from(sorted(CATALOG)),
    st.sampled_from(sorted(CATALOG)),
    st.sampled_from(["position", EXTRA_NUMBER, EXTRA_OBJECT]),
    st.sampled_from(["", "battery", "battery.level.x", "BATTERY.LEVEL", "battery.level ",
                     "position/x", "din.1", "+", "#", "\x00", "telemetry"]),
    st.text(max_size=20),
)
valid_ids = st.sampled_from(IDS).map(str)
ids = st.one_of(valid_ids, valid_ids, garbage_ids)
telemetry_topics = st.builds(lambda i, p: f"{STATE_PREFIX}{i}/telemetry/{p}", ids,
                             parameter_names)
flespi_topics = st.one_of(
    telemetry_topics, telemetry_topics, telemetry_topics,
    st.builds(lambda i: f"{STATE_PREFIX}{i}", ids),
    st.builds(lambda i, p: f"{STATE_PREFIX}{i}/{p}", ids,
              st.sampled_from(["connected", "name", "telemetry", "other", ""]) | st.text()),
    st.builds(lambda i: f"{MESSAGE_PREFIX}{i}", ids),
)
# Undecodable topics reach the bridge decoded with "replace" (see GmqttUpstream._dispatch).
mangled_topics = st.builds(lambda prefix, raw: prefix + raw.decode("utf-8", "replace"),
                           st.sampled_from([STATE_PREFIX, MESSAGE_PREFIX, "flespi/", ""]),
                           st.binary(max_size=40))
topics = st.one_of(flespi_topics, flespi_topics, flespi_topics, mangled_topics,
                   st.text(max_size=60))


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # Python's json writes NaN / Infinity literals


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


OVERSIZED = [
    b'"' + b"a" * (MAX_UPSTREAM_PAYLOAD + 10) + b'"',
    b"[" + b"1," * (MAX_UPSTREAM_PAYLOAD // 2) + b"1]",
    b'{"latitude": 1, "longitude": 2, "pad": "' + b"x" * MAX_UPSTREAM_PAYLOAD + b'"}',
]
# Bad for every kind of topic the bridge consumes: not JSON, or too large.
always_bad = st.one_of(
    st.sampled_from([
        b"{", b"[1,]", b"NaN", b"Infinity", b"-Infinity", b'{"latitude": NaN}', b"[NaN]",
        b"1e400", b"-1e400", b'{"a": 1e999}', b"tru", b"nul", b"'single'", b"0x10", b"01",
        b"+1", b".5", b"1.", b'"unterminated', b'"\\ud800"', b'{"a":1}{"b":2}', b"\x00",
        b"\xed\xa0\x80", b'"\xc3\x28"', b"\xff\xfe{\x00}", b"\xef\xbb\xbf1",
        nested(5000), nested(1025), b'{"a":' * 3000 + b"1" + b"}" * 3000,
    ]),
    st.sampled_from(OVERSIZED),
    st.binary(min_size=1, max_size=64).filter(not_utf8),
)
JSON_KEYS = st.sampled_from(["latitude", "longitude", "altitude", "satellites", "speed",
                             "valid", "name", "x"]) | st.text(max_size=8)
json_values = st.recursive(  # anything json.dumps writes, NaN and Infinity literals included
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(JSON_KEYS, children, max_size=5),
    max_leaves=12,
)
finite_json = st.recursive(  # strict JSON values
    st.none() | st.booleans() | st.integers(-(2**200), 2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(JSON_KEYS, children, max_size=5),
    max_leaves=12,
)
huge_numbers = st.one_of(
    st.sampled_from([10**16, -(10**16), 2**63, 2**64, 10**30, -(10**30), 1e16, 1e300,
                     -1e300]),
    st.integers(min_value=10**15 + 1),
    st.floats(min_value=1e15 + 1, allow_infinity=False),
)
non_numbers = st.one_of(st.none(), st.booleans(), st.text(max_size=10),
                        st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
                        st.sampled_from(["70", "NaN", "Infinity", ""]))


def attr_values(attr: catalog.Attribute, good: bool) -> st.SearchStrategy[Any]:
    """Values the catalogue must accept (good) or reject for an attribute."""
    lo = attr.minimum if attr.minimum is not None else -1e15
    hi = attr.maximum if attr.maximum is not None else 1e15
    if attr.type == "bool":
        if good:
            return st.booleans() | st.sampled_from([0, 1])
        return st.one_of(st.none(), st.text(max_size=5), st.floats(allow_nan=False),
                         st.integers().filter(lambda n: n not in (0, 1)),
                         st.lists(st.booleans(), max_size=2))
    if attr.type == "int":
        if good:
            return st.integers(min_value=int(lo), max_value=int(hi))
    elif attr.type == "float":
        if good:
            return st.floats(min_value=lo, max_value=hi, allow_nan=False) | st.integers(
                min_value=math.ceil(lo), max_value=math.floor(hi))
    elif attr.type == "object":
        return finite_json if good else st.nothing()
    else:
        return st.nothing()
    out_of_range = []
    if attr.minimum is not None:
        out_of_range.append(st.floats(max_value=attr.minimum - 0.5, min_value=-1e15,
                                      allow_nan=False))
    if attr.maximum is not None:
        out_of_range.append(st.floats(min_value=attr.maximum + 0.5, max_value=1e15,
                                      allow_nan=False))
    return st.one_of(non_numbers, huge_numbers, *out_of_range)


def position_values(good: bool) -> st.SearchStrategy[Any]:
    fields = CATALOG["position"].fields
    if good:
        return st.fixed_dictionaries(
            {"latitude": attr_values(fields["latitude"], True),
             "longitude": attr_values(fields["longitude"], True)},
            optional={key: attr_values(attr, True) for key, attr in fields.items()
                      if key not in ("latitude", "longitude")})
    # nothing usable: not an object, no known field, or every known field wrong
    return st.one_of(
        non_numbers.filter(lambda v: not isinstance(v, dict)),
        st.dictionaries(st.sampled_from(["lat", "lon", "x", ""]), json_values, max_size=3),
        st.fixed_dictionaries(
            {"latitude": attr_values(fields["latitude"], False)},
            optional={key: attr_values(attr, False) for key, attr in fields.items()
                      if key != "latitude"}),
    )


def payloads_for(kind: str, name: str) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """(payload, expectation) for a topic: "bad" must be rejected and counted, "good" must be
    accepted, None may go either way (only the invariants are checked)."""
    bad: list[st.SearchStrategy[Any]] = []
    good: list[st.SearchStrategy[Any]] = []
    if kind == "telemetry":
        param = CATALOG[name]
        if param.attribute is None:
            good.append(position_values(True))
            bad.append(position_values(False))
        else:
            good.append(attr_values(param.attribute, True))
            bad.append(attr_values(param.attribute, False))
    elif kind == "device":
        good.append(st.fixed_dictionaries(
            {"id": st.integers(), "name": st.text()},
            optional={"device_type_id": finite_json, "protocol_id": finite_json,
                      "configuration": finite_json}))
        bad.append(json_values.filter(lambda v: not isinstance(v, dict)))
    elif kind == "connected":
        good.append(st.booleans())
        bad.append(json_values.filter(lambda v: not isinstance(v, bool)))
    elif kind == "name":
        good.append(st.text())
        bad.append(json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "message":
        good.append(st.dictionaries(st.text(max_size=10), finite_json, max_size=5))
        bad.append(json_values.filter(lambda v: not isinstance(v, dict)))
    tagged = [always_bad.map(lambda p: (p, "bad")),
              json_values.map(lambda v: (dumps(v), None)),
              st.just((b"", None))]
    tagged += [s.map(lambda v: (dumps(v), "bad")) for s in bad]
    tagged += [s.map(lambda v: (dumps(v), "good")) for s in good]
    if kind == "telemetry" and (attribute := CATALOG[name].attribute) is not None and \
            attribute.type == "object":
        # nested deeper than the bridge can publish again: rejected and counted
        tagged.append(st.integers(min_value=100, max_value=1023).map(
            lambda n: (nested(n), "bad")))
    return st.one_of(*tagged)


timestamps = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "1e11", "1e308", "abc",
                     "", "١٢٣", "1_000", " 17e8 ", "0x10", "\x00", "99999999999", "1e10",
                     "1706905170.17258"]),
    st.floats().map(repr),
    st.integers().map(str),
    st.text(max_size=12),
)
user_properties = st.lists(
    st.tuples(st.sampled_from(["timestamp", "timestamp", "x", ""]) | st.text(max_size=8),
              timestamps),
    max_size=3)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, str]], str | None]:
    topic = draw(topics)
    kind, name = classify(topic)
    payload, expect = draw(payloads_for(kind, name))
    return topic, payload, draw(user_properties), expect


# -- the state must stay as the catalogue types it --------------------------------------------

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def check_typed(name: str, value: Any) -> None:
    if name == "last_seen":
        assert isinstance(value, str), value
        assert ISO.fullmatch(value), value
        return
    attr = ATTRIBUTES[name]  # an attribute the catalogue does not know is a bug
    if attr.type == "bool":
        assert type(value) is bool, (name, value)
    elif attr.type in ("int", "float"):
        if attr.type == "int":
            assert type(value) is int, (name, value)
        else:
            assert type(value) in (int, float), (name, value)
        assert math.isfinite(value), (name, value)
        assert abs(value) <= catalog.MAX_ABS_NUMBER, (name, value)
        assert attr.minimum is None or value >= attr.minimum, (name, value)
        assert attr.maximum is None or value <= attr.maximum, (name, value)
    elif attr.type == "str":
        assert isinstance(value, str), (name, value)


def check_bridge(bridge: Bridge) -> None:
    """Everything downstream of the state works on what the hostile input left behind."""
    for dev in bridge.store.devices.values():
        state = dev.state()
        for name, value in state.items():
            check_typed(name, value)
        encoded = orjson.dumps(state)
        assert json.loads(encoded) == state  # strict JSON, and nothing lost on the way
        json.dumps(state, allow_nan=False)
        info = dev.info.as_dict(dev.id)
        assert json.loads(orjson.dumps(info)) == info
        for pub in bridge.renderer.render(dev, ALL):
            assert pub.topic.startswith((f"{BASE}/{dev.id}/", f"{PREFIX}/")), pub.topic
            if pub.payload and not pub.topic.endswith("/availability"):
                orjson.loads(pub.payload)
    outbox = bridge.publisher.outbox
    work, results = outbox.take(len(outbox))
    assert not results
    for pub in work:
        assert isinstance(orjson.loads(pub.payload), dict)
    body, _ = bridge.metrics.render()
    list(text_string_to_metric_families(body.decode()))
    assert all(n >= 0 for n in bridge.stats.invalid.values())


# -- properties over the upstream path (no brokers) -------------------------------------------

@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(batch=st.lists(messages(), min_size=1, max_size=12))
def test_hostile_upstream_messages(batch: list[tuple[str, bytes, Any, str | None]]) -> None:
    bridge = Bridge(SETTINGS)
    for topic, payload, props, expect in batch:
        kind, _ = classify(topic)
        before = upstream_invalid(bridge)
        bridge.ingest.handle(topic, payload, props)  # never raises
        counted = upstream_invalid(bridge) - before
        if kind == "bad_topic":
            expected: int | None = 1
        elif kind in ("ignored", "unknown") or not payload:
            expected = 0
        elif len(payload) > MAX_UPSTREAM_PAYLOAD or expect == "bad":
            expected = 1
        elif expect == "good":
            expected = 0
        else:
            expected = None
        assert counted in (0, 1)
        if expected is not None:
            assert counted == expected, (topic[:80], payload[:80], kind, expect)
    check_bridge(bridge)
    assert {source for source, _ in bridge.stats.invalid} <= {"upstream"}


@settings(max_examples=200, deadline=None)
@given(value=attr_values(ATTRIBUTES["battery"], True), props=user_properties)
def test_valid_values_are_taken_whatever_the_timestamp(value: int, props: Any) -> None:
    """A good value is taken whatever garbage sits in the `timestamp` property."""
    bridge = Bridge(SETTINGS)
    bridge.ingest.handle(f"{STATE_PREFIX}7/telemetry/battery.level", dumps(value), props)
    assert bridge.store.devices[7].values == {"battery": value}
    assert upstream_invalid(bridge) == 0
    check_bridge(bridge)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(st.integers(min_value=1, max_value=1100).map(nested),
                         finite_json.map(dumps)),
       name=st.sampled_from([EXTRA_NUMBER, EXTRA_OBJECT]))
def test_untyped_extra_parameters_stay_publishable(payload: bytes, name: str) -> None:
    """Extra parameters are taken as they come, but never so deep that the state could not
    be encoded again (orjson writes 254 levels at most, reads 1024)."""
    bridge = Bridge(SETTINGS)
    bridge.ingest.handle(f"{STATE_PREFIX}7/telemetry/{name}", payload, [])
    assert upstream_invalid(bridge) == (0 if 7 in bridge.store.devices else 1)
    check_bridge(bridge)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suffix=st.sampled_from(["sync", "rest/", "rest/0", "rest/../x"]) | st.text(max_size=40),
       payload=always_bad | json_values.map(dumps),
       props=st.lists(st.tuples(st.sampled_from(["http_code", "x"]),
                                st.sampled_from(["200", "-1", "9" * 5000, "NaN"])
                                | st.text(max_size=8)), max_size=3))
def test_hostile_replies_on_the_bridge_topics(suffix: str, payload: bytes, props: Any) -> None:
    """Anything on the bridge's own reply topics (REST answers nobody asked for, garbage
    `http_code`) is dropped without harm."""
    bridge = Bridge(SETTINGS)
    bridge.session.on_message(bridge.session.reply_prefix + suffix, payload, props, None)
    assert bridge.store.devices == {}
    check_bridge(bridge)


def test_a_garbage_future_timestamp_does_not_freeze_a_value() -> None:
    """A value stamped centuries ahead (a device clock gone wrong) must not block every later
    value as "older"."""
    bridge = Bridge(SETTINGS)
    topic = f"{STATE_PREFIX}7/telemetry/battery.level"
    bridge.ingest.handle(topic, b"50", [("timestamp", "99999999999")])
    # values really older than the first one's arrival still lose
    bridge.ingest.handle(topic, b"49", [("timestamp", repr(time.time() - 3600))])
    assert bridge.store.devices[7].values["battery"] == 50
    bridge.ingest.handle(topic, b"48", [("timestamp", repr(time.time() + 1))])
    assert bridge.store.devices[7].values["battery"] == 48
    check_bridge(bridge)


def test_flespi_topics_with_bad_ids_are_counted() -> None:
    bridge = Bridge(SETTINGS)
    for topic in [f"{STATE_PREFIX}abc/telemetry/battery.level", f"{STATE_PREFIX}-5",
                  f"{STATE_PREFIX}0/connected", f"{STATE_PREFIX}{'9' * 16}/name",
                  f"{MESSAGE_PREFIX}x1", f"{STATE_PREFIX}5/telemetry/"]:
        bridge.ingest.handle(topic, b"1", [])
    assert bridge.stats.invalid["upstream", "bad_topic"] == 6
    assert bridge.store.devices == {}
    # topics outside flespi's device trees are not flespi's to get wrong: ignored, not invalid
    bridge.ingest.handle("some/other/topic", b"1", [])
    assert bridge.stats.invalid["upstream", "bad_topic"] == 6
    assert bridge.stats.upstream_messages["ignored"] == 7


def test_partly_bad_position_is_counted_and_the_rest_kept() -> None:
    bridge = Bridge(SETTINGS)
    bridge.ingest.handle(f"{STATE_PREFIX}7/telemetry/position",
                        b'{"latitude": 12.5, "longitude": 700, "satellites": "many"}', [])
    assert bridge.store.devices[7].values == {"latitude": 12.5}
    assert bridge.stats.invalid["upstream", "bad_value"] == 1
    check_bridge(bridge)


# -- rate-limited logging ---------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_flood_of_bad_messages_logs_a_handful(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(bridge_logs, "time", clock)
    caplog.set_level(logging.DEBUG)
    bridge = Bridge(SETTINGS)
    for i in range(1000):
        bridge.ingest.handle(f"{STATE_PREFIX}{1 + i % 50}/telemetry/battery.level",
                            b"{not json\n" + str(i).encode(), [])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert bridge.stats.invalid["upstream", "bad_json"] == 1000
    assert 1 <= len(warnings) <= 5
    assert all("bad_json" in r.getMessage() for r in warnings)
    # another reason has a budget of its own, and still no flood
    for i in range(1000):
        bridge.ingest.handle(f"{STATE_PREFIX}{1 + i % 50}/telemetry/battery.level", b"140", [])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert bridge.stats.invalid["upstream", "bad_value"] == 1000
    assert 2 <= len(warnings) <= 10
    # a minute later the suppressed ones are summed up in one line
    clock.now += 61
    caplog.clear()
    bridge.ingest.handle(f"{STATE_PREFIX}1/telemetry/battery.level", b"{", [])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2
    assert "995 more 'upstream:bad_json' warnings suppressed" in lines[0]
    assert bridge.stats.invalid["upstream", "bad_json"] == 1001


def test_log_lines_cannot_be_forged(caplog: pytest.LogCaptureFixture) -> None:
    """Control characters in topics and values stay escaped: one record, one line."""
    caplog.set_level(logging.WARNING)
    bridge = Bridge(SETTINGS)
    bridge.ingest.handle(f"{STATE_PREFIX}1\n2024 CRITICAL fake/telemetry/x", b"1", [])
    bridge.ingest.handle(f"{STATE_PREFIX}1/telemetry/lock.status",
                        b'"yes\\nCRITICAL forged line"', [])
    bridge.ingest.handle(f"{STATE_PREFIX}1/telemetry/gsm.signal.level",
                        b'{"a\\r\\nb": 1}', [])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert not any("\n" in line or "\r" in line for line in lines), lines


# -- on real brokers --------------------------------------------------------------------------

async def test_hostile_messages_on_the_broker(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                              sim: Simulator,
                                              bridge_factory: BridgeFactory) -> None:
    device_id = next(iter(sim.devices))
    tele = f"{STATE_PREFIX}{device_id}/telemetry/"
    hostile: list[tuple[str, bytes, str]] = [
        (tele + "battery.level", b"\xff\xfe\xfd", "bad_json"),          # invalid UTF-8
        (tele + "battery.level", b"NaN", "bad_json"),
        (tele + "battery.voltage", b"Infinity", "bad_json"),
        (tele + "position", nested(5000), "bad_json"),                    # deep nesting
        (tele + "position", b'{"latitude": NaN, "longitude": 1}', "bad_json"),
        (tele + "battery.level", OVERSIZED[0], "oversized"),
        (tele + "position", OVERSIZED[2], "oversized"),
        (tele + "battery.level", b'"full"', "bad_value"),                # wrong types
        (tele + "battery.level", b"140", "bad_value"),
        (tele + "battery.voltage", b"1e300", "bad_value"),
        (tele + "lock.status", b'"yes"', "bad_value"),
        (tele + "position", b"[1, 2]", "bad_value"),
        (f"{STATE_PREFIX}{device_id}", b"[1, 2]", "bad_value"),
        (f"{STATE_PREFIX}{device_id}/connected", b'"maybe"', "bad_value"),
        (f"{STATE_PREFIX}{device_id}/name", b"42", "bad_value"),
        (f"{STATE_PREFIX}abc/telemetry/battery.level", b"50", "bad_topic"),  # non-numeric ids
        (f"{STATE_PREFIX}-{device_id}", b"{}", "bad_topic"),
        (f"{STATE_PREFIX}{'9' * 20}/connected", b"true", "bad_topic"),
        (f"{STATE_PREFIX}0x1f/name", b'"x"', "bad_topic"),
    ]
    expected = Counter(reason for _, _, reason in hostile)
    async with Recorder(local, [f"{BASE}/+/state", f"{BASE}/+/info"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local))
        for d in sim.devices:
            def initial(d: int = d) -> bool:
                return rec.state(BASE, d) == expected_state(sim, d)
            await rec.wait_for(initial, what=f"initial state of {d}")
        before = Counter({reason: bridge.stats.invalid["upstream", reason]
                          for reason in expected})
        async with aiomqtt.Client(upstream.host, upstream.port,
                                  protocol=aiomqtt.ProtocolVersion.V5) as raw:
            for topic, payload, _ in hostile:
                await raw.publish(topic, payload, qos=1)

        def counted() -> Counter[str]:
            return Counter({reason: bridge.stats.invalid["upstream", reason] - before[reason]
                            for reason in expected})

        await wait_until(lambda: counted() == expected, timeout=30,
                         what=f"invalid counters {dict(expected)}")
        assert bridge.ready()
        assert bridge.stats.up == {"upstream": True, "local": True}
        # nothing hostile reached the state, and a valid update still flows
        assert rec.state(BASE, device_id) == expected_state(sim, device_id)
        assert rec.latest[f"{BASE}/{device_id}/info"].json()["name"] == \
            sim.devices[device_id].name
        await sim.step(sim.devices[device_id])
        await sim.set_values(device_id, {"battery.level": 33})
        await sim.flush()
        await rec.wait_for(
            lambda: rec.state(BASE, device_id) == expected_state(sim, device_id),
            timeout=20, what="a valid update after the hostile ones")
        assert rec.seen_state(BASE, device_id)["battery"] == 33
        assert counted() == expected
        assert set(rec.latest) == {f"{BASE}/bridge/state"} | {
            f"{BASE}/{d}/{leaf}" for d in sim.devices for leaf in ("state", "info")}


async def test_future_timestamp_on_the_broker(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                              sim: Simulator,
                                              bridge_factory: BridgeFactory) -> None:
    """A value stamped in the year 5138 is taken, but the next real value still wins."""
    device_id = next(iter(sim.devices))
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        await bridge_factory(make_settings(upstream, local))
        await rec.wait_for(lambda: rec.state(BASE, device_id), what="initial state")
        async with aiomqtt.Client(upstream.host, upstream.port,
                                  protocol=aiomqtt.ProtocolVersion.V5) as raw:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: unannotated
            props.UserProperty = [("timestamp", "99999999999")]
            await raw.publish(f"{STATE_PREFIX}{device_id}/telemetry/battery.level", b"11",
                              qos=1, properties=props)
        await rec.wait_for(lambda: rec.seen_state(BASE, device_id)["battery"] == 11,
                           what="the future-stamped value")
        await sim.set_values(device_id, {"battery.level": 64})
        await sim.flush()
        await rec.wait_for(lambda: rec.seen_state(BASE, device_id)["battery"] == 64,
                           what="the next real value")


INVENTORY = re.compile(rf"{BASE}/bridge/state/inventory-[0-9a-f]+")
HOSTILE_NAMES = [
    "scooter/with/slashes",
    "plus+and#hash",
    "+",
    "#",
    "../../etc/passwd",
    'quotes "double" and \'single\' and `back`',
    "back\\slash \\u0000 \\n",
    "ctl \x00\x01\x07\x1b[31mred\x1b[0m\x7f end",
    "line\nbreak\r\ntab\there",
    "</script><script>alert(1)</script> {{ 7*7 }} ${x}",
    "ünïcødé 🛴 \u202eevil\u200b",
    " ",
]


async def test_hostile_device_names(upstream: mosquitto.Broker, local: mosquitto.Broker,
                                    sim: Simulator, bridge_factory: BridgeFactory) -> None:
    device_id, other = list(sim.devices)[:2]
    async with Recorder(local, [f"{BASE}/#", f"{PREFIX}/#"]) as rec:
        bridge = await bridge_factory(make_settings(upstream, local))

        def configs(d: int) -> dict[str, dict[str, Any]]:
            out = {}
            for topic, item in rec.latest.items():
                if topic.startswith(f"{PREFIX}/") and item.payload:
                    cfg = item.json()
                    if cfg["dev"]["identifiers"] == [f"flespi_{d}"]:
                        out[topic] = {**cfg, "device": cfg["dev"]}
            return out

        await rec.wait_for(
            lambda: all(len(next(iter(configs(d).values()), {}).get("cmps", {})) > 5
                        and rec.latest.get(f"{BASE}/{d}/info")
                        and rec.state(BASE, d) for d in sim.devices), what="discovery")
        topics_before = set(rec.latest)
        config_topics = set(configs(device_id))
        start = len(rec.messages)
        for name in HOSTILE_NAMES:
            await sim.rename(device_id, name)
            await sim.flush()

            def renamed(name: str = name) -> bool:
                info = rec.latest[f"{BASE}/{device_id}/info"].json()
                cfgs = configs(device_id)
                return info["name"] == name and set(cfgs) == config_topics and all(
                    c["device"]["name"] == name for c in cfgs.values())

            await rec.wait_for(renamed, what=f"name {name!r} in info and discovery")
            info_raw = rec.latest[f"{BASE}/{device_id}/info"].payload
            assert not any(byte < 0x20 for byte in info_raw), info_raw  # escaped, not raw
            assert orjson.loads(info_raw) == {
                "id": device_id, "name": name, "ident": sim.devices[device_id].ident,
                "device_type_id": 1272, "protocol_id": 200}
            # the metrics carry the name as a label value, escaped too
            body, _ = bridge.metrics.render()
            labels = [s.labels for f in text_string_to_metric_families(body.decode())
                      if f.name == "flespi_bridge_device_battery_percent" for s in f.samples]
            assert {"device_id": str(device_id), "device_name": name} in labels
        # no topic changed: what the renames published went to topics that existed before
        new_topics = {m.topic for m in rec.messages[start:]
                      if not INVENTORY.fullmatch(m.topic)}  # the bridge's start-up marker
        assert new_topics <= topics_before, new_topics - topics_before
        assert set(configs(device_id)) == config_topics
        device_topic = re.compile(rf"{BASE}/([0-9]+/[a-z_]+|bridge/state)")
        config_topic = re.compile(
            rf"{PREFIX}/device/{BASE}/flespi_(bridge_{BASE}|[0-9]+)/config")
        for m in rec.messages:
            assert (device_topic.fullmatch(m.topic) or config_topic.fullmatch(m.topic)
                    or INVENTORY.fullmatch(m.topic)), m.topic
        assert all(c["device"]["name"] == sim.devices[other].name
                   for c in configs(other).values())
        assert rec.state(BASE, device_id) == expected_state(sim, device_id)
