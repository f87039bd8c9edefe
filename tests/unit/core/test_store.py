"""The per-device state cache."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.store import ALL, AVAILABILITY, DISCOVERY, INFO, SETTINGS, STATE, Store, iso


def test_merge_and_last_seen() -> None:
    store = Store()
    assert store.apply_values(1, {"battery": 70}, 100.0)
    assert store.apply_values(1, {"locked": True}, 101.0)
    dev = store.devices[1]
    assert dev.state() == {"battery": 70, "locked": True, "last_seen": iso(101.0)}
    assert iso(1706905170.17258) == "2024-02-02T20:19:30Z"


def test_older_values_lose() -> None:
    store = Store()
    store.apply_values(1, {"battery": 60}, 200.0)
    store.take_dirty()
    assert not store.apply_values(1, {"battery": 70}, 150.0)  # replayed from earlier
    assert store.devices[1].values["battery"] == 60
    assert store.devices[1].last_seen == 200.0
    assert not store.has_dirty


def test_replayed_identical_value_changes_nothing() -> None:
    store = Store()
    store.apply_values(1, {"battery": 60}, 200.0)
    store.take_dirty()
    assert not store.apply_values(1, {"battery": 60}, 200.0)
    assert not store.has_dirty


def test_type_change_is_a_change() -> None:
    store = Store()
    store.apply_values(1, {"x": 1}, 1.0)
    assert store.apply_values(1, {"x": True}, 1.0)
    assert store.devices[1].values["x"] is True


def test_dirty_flags_coalesce_per_device() -> None:
    store = Store()
    store.apply_values(2, {"battery": 1}, 1.0)
    store.apply_values(1, {"battery": 1}, 1.0)
    store.apply_values(2, {"signal": 5}, 2.0)
    store.apply_connected(1, True)
    store.apply_object(1, {"name": "a", "configuration": {"ident": "x"}, "device_type_id": 7})
    devs = store.take_dirty()
    assert [d.id for d in devs] == [2, 1]
    # new attributes, a first availability and a new name change the entities too
    assert devs[0].dirty == STATE | DISCOVERY
    # (a device type: its command profile's settings too)
    assert devs[1].dirty == STATE | AVAILABILITY | INFO | DISCOVERY | SETTINGS
    for dev in devs:
        dev.dirty = 0
    store.apply_values(2, {"signal": 6}, 3.0)
    store.apply_connected(1, False)
    assert [d.dirty for d in store.take_dirty()] == [STATE, AVAILABILITY]
    assert store.take_dirty() == []


def test_device_object_and_name() -> None:
    store = Store()
    assert store.apply_object(5, {"id": 5, "name": "scooter", "device_type_id": 1272,
                                  "protocol_id": 200, "configuration": {"ident": "015"}})
    assert store.devices[5].info.as_dict(5) == {
        "id": 5, "name": "scooter", "ident": "015", "device_type_id": 1272, "protocol_id": 200}
    assert store.apply_name(5, "renamed")
    assert not store.apply_name(5, "renamed")
    # a device object without a name keeps the name already known
    store.apply_object(5, {"device_type_id": 1272, "protocol_id": 200,
                           "configuration": {"ident": "015"}})
    assert store.devices[5].name == "renamed"
    # wrong types are dropped, not stored
    store.apply_object(6, {"name": 7, "device_type_id": "x", "configuration": []})
    assert store.devices[6].info.as_dict(6)["name"] is None
    assert store.devices[6].name == "flespi 6"


def test_mark_all_after_reconnect() -> None:
    store = Store()
    store.apply_values(1, {"battery": 1}, 1.0)
    store.take_dirty()[0].dirty = 0
    store.mark_all()
    assert [d.dirty for d in store.take_dirty()] == [ALL]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.dictionaries(st.sampled_from(["battery", "locked", "firmware", "speed"]),
                    st.sampled_from([0, 1, True, False, 1.0, 60, "1.2", "1.3"]), max_size=3),
    st.sampled_from([100.0, 150.0, 150.0, 200.0, 250.0])), max_size=12))
def test_per_attribute_times_decide_whatever_the_order(
        updates: list[tuple[dict[str, Any], float]]) -> None:
    """Each attribute holds the value of its newest update (of equal times the later), and
    a device is marked for discovery exactly when an entity appears or its firmware
    changes; whatever order updates come in (the newest-message fast path included)."""
    store = Store()
    held: dict[str, tuple[float, Any]] = {}
    newest: float | None = None
    for values, ts in updates:
        store.take_dirty()
        dev = store.device(1)
        dev.dirty = 0
        before = dict(held)
        for name, value in values.items():
            if name not in held or held[name][0] <= ts:
                held[name] = (ts, value)
        moved = newest is None or ts > newest
        newest = ts if moved else newest
        changed = store.apply_values(1, values, ts)
        def shown(h: dict[str, tuple[float, Any]]) -> dict[str, tuple[type, Any]]:
            return {k: (type(v), v) for k, (_, v) in h.items()}
        assert changed == (moved or shown(before) != shown(held))
        assert dev.values == {k: v for k, (_, v) in held.items()}
        assert {k: type(v) for k, v in dev.values.items()} == \
            {k: type(v) for k, (_, v) in held.items()}
        assert dev.last_seen == newest
        firmware = before.get("firmware"), held.get("firmware")
        discovery = held.keys() != before.keys() or (
            firmware[0] is not None and firmware[1] is not None
            and (type(firmware[0][1]), firmware[0][1]) != (type(firmware[1][1]), firmware[1][1]))
        assert bool(dev.dirty & DISCOVERY) == discovery
