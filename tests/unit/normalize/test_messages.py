"""Flat flespi messages -> state attributes: the planned fast path maps every message
exactly as the key-by-key definition does (values, their types and order, problems)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.normalize import messages
from bridge.normalize.parameters import Parameters

SCOOTER = {
    "battery.charging.status": False, "battery.level": 87, "battery.voltage": 4.08,
    "channel.id": 1190401, "device.id": 6000000, "device.name": "scooter-001",
    "gsm.signal.level": 65, "ident": "015136006000000", "position.altitude": 401.4,
    "position.direction": 0, "position.hdop": 1.21, "position.latitude": -17.738985,
    "position.longitude": -63.157611, "position.satellites": 12, "position.speed": 0.0,
    "position.valid": True, "timestamp": 1796172544.85,
}
KEYS = [*SCOOTER, "lock.status", "position", "vehicle.vin", "din", "can.fuel.level",
        "custom.thing", "ain.1", "engine.ignition.status"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**16, 10**16), st.sampled_from([0, 1, 100, 101]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([-0.5, 90.5, 359.9]),
    st.text(max_size=5),
    st.dictionaries(st.sampled_from(["latitude", "longitude", "valid", "x"]),
                    st.one_of(st.floats(-200, 200), st.booleans()), max_size=3))
MESSAGES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=12)


def as_seen(mapped: messages.Mapped) -> tuple[Any, ...]:
    """Everything a mapped message tells, types and attribute order included."""
    return (mapped.device_id, mapped.ident, mapped.timestamp, mapped.name,
            [(k, v, type(v)) for k, v in mapped.values.items()], "; ".join(mapped.problems))


def test_a_typical_message_maps_every_catalogue_value() -> None:
    keys = messages.flat_keys(Parameters())
    for _ in range(2):  # the second time through the shape's plan
        mapped = messages.map_message(keys, SCOOTER)
        assert mapped.device_id == 6000000
        assert mapped.ident == "015136006000000"
        assert mapped.values == {
            "charging": False, "battery": 87, "voltage": 4.08, "signal": 65, "altitude": 401.4,
            "direction": 0, "hdop": 1.21, "latitude": -17.738985, "longitude": -63.157611,
            "satellites": 12, "speed": 0.0, "position_valid": True}
        assert not mapped.problems


def test_values_out_of_bounds_are_left_out_with_a_reason_after_the_plan_is_known() -> None:
    keys = messages.flat_keys(Parameters())
    messages.map_message(keys, SCOOTER)
    bad = {**SCOOTER, "battery.level": 101, "position.latitude": 91.0}
    mapped = messages.map_message(keys, bad)
    assert "battery" not in mapped.values
    assert "latitude" not in mapped.values
    assert mapped.values["longitude"] == -63.157611
    text = "; ".join(mapped.problems)
    assert "battery: 101 outside [0, 100]" in text
    assert "latitude: 91.0" in text


@settings(max_examples=400, deadline=None)
@given(st.lists(MESSAGES, min_size=1, max_size=6), st.booleans())
def test_the_fast_path_maps_like_the_definition(batch: list[dict[str, Any]],
                                                 every: bool) -> None:
    planned = messages.flat_keys(Parameters(all_parameters=every))
    reference = messages.flat_keys(Parameters(all_parameters=every))
    for message in [*batch, *batch]:  # each shape again, with its plan
        for variant in (message, {**SCOOTER, **message}):
            assert as_seen(messages.map_message(planned, variant)) == \
                as_seen(messages.map_general(reference, variant))
