"""flespi device messages (flat JSON, dotted keys) -> state attributes, by the catalogue.

One mapping for both ways messages arrive: `flespi/message/gw/devices/{id}` on MQTT
(`flespi.messages`) and batches of flespi's HTTP stream. A message carries what telemetry
carries, flattened: `battery.level`, `lock.status`, and the fields of object parameters as
`position.latitude`, `position.satellites`, ... Every key is looked up in the parameter
table (catalogue, overrides, and with `flespi.parameters = "all"` the rules), so a message
sets exactly the attributes the same values would set as telemetry.

Hot path (a stream batch is a thousand messages): what a key is, is decided once per key
(the table keeps its rows), and the messages of one device type all look alike, so a
message *shape* (its keys and the types of their values) gets a plan once: which values
to take, under which attribute names, within which bounds. A message whose values all fit
the plan is mapped with a few C-level calls (`itemgetter`, `zip`); any other one (a value
out of range, of the wrong type, a float for an integer) takes the general path, which is
the definition (`map_general`) and says what was left out and why.

No I/O: the table may learn a rule-made row, as with telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter, le
from typing import Any

from bridge.normalize import catalog
from bridge.normalize.parameters import Parameters

# Keys that say which device a message is from.
DEVICE_ID = "device.id"
IDENT = "ident"
TIMESTAMP = "timestamp"
DEVICE_NAME = "device.name"
# Device ids are positive integers; anything longer is not an id flespi would issue.
MAX_ID_DIGITS = 15
MAX_DEVICE_ID = 10**MAX_ID_DIGITS - 1
WHO = (DEVICE_ID, TIMESTAMP, IDENT, DEVICE_NAME)
# Shapes with a plan at most: hostile input with ever new keys only makes them start over.
MAX_SHAPES = 256

# What a flat key is: a whole parameter, one field of an object parameter, or nothing.
Step = catalog.Parameter | tuple[catalog.Parameter, str] | None
Getter = Callable[[Mapping[str, Any]], tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to map every message of one shape whose values are all within bounds."""

    names: tuple[str, ...]  # attribute names, in the order the general path sets them
    values: Getter  # message -> the values for `names`
    numbers: Getter  # message -> the numeric values among them
    low: tuple[float, ...]
    high: tuple[float, ...]
    # message -> (device.id, timestamp, ident, device.name) when the shape has all four
    # with the usual types (int, float, str, str), else None: `_identity` reads them
    who: Getter | None


# Value types the fast path takes as they are, per attribute type (anything else, e.g. a
# float for an integer attribute or 1 for a boolean, is converted by the general path).
_AS_IS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (float, int), "bool": (bool,),
                                       "str": (str,)}
_NUMERIC = frozenset({"int", "float"})


def _bounds(attr: catalog.Attribute) -> tuple[float, float]:
    """What `catalog.normalize` accepts of a number: finite, within MAX_ABS_NUMBER and the
    attribute's own limits (NaN fails every comparison, so it never passes)."""
    low, high = -catalog.MAX_ABS_NUMBER, catalog.MAX_ABS_NUMBER
    if attr.minimum is not None:
        low = max(low, attr.minimum)
    if attr.maximum is not None:
        high = min(high, attr.maximum)
    return low, high


def _getter(keys: Sequence[str]) -> Getter:
    """The values of `keys` as a tuple, in C (an itemgetter of one key returns no tuple)."""
    if len(keys) > 1:
        return itemgetter(*keys)
    if keys:
        key = keys[0]
        return lambda message: (message[key],)
    return lambda _: ()


class FlatKeys:
    """The parameter table seen from flat message keys: a key is a whole parameter
    (`battery.level`, looked up like telemetry, rules included) or one field of an object
    parameter (`position.latitude` -> `position`, `latitude`). Decisions and plans are
    kept: the table never takes a row back."""

    def __init__(self, params: Parameters,
                 fields: Mapping[str, tuple[catalog.Parameter, str]]) -> None:
        self.params = params
        self.fields = fields
        self._steps: dict[str, Step] = {}
        # shape -> its plan, or False when its messages always take the general path
        self._plans: dict[tuple[tuple[str, ...], tuple[type, ...]], _Plan | bool] = {}

    def step(self, key: str, value: Any) -> Step:
        """What `key` is, decided on its first value and kept (unless the value could not
        tell: a rule-made row waits for a value that is not null)."""
        if key in self._steps:
            return self._steps[key]
        step: Step = self.fields.get(key)
        if step is None:
            resolved = self.params.resolve(key, value)
            if isinstance(resolved, catalog.Parameter):
                step = resolved
            elif resolved is None and self.params.wants(key):
                return None  # a null says nothing yet: decided on a later value
        self._steps[key] = step
        return step

    def plan(self, message: Mapping[str, Any]) -> _Plan | None:
        """The plan of this message's shape; None when its shape takes the general path (a
        whole object value, an untyped attribute, a value to convert, an undecided key)."""
        shape = (tuple(message), tuple(map(type, message.values())))
        plan = self._plans.get(shape)
        if plan is None:
            decided, made = self._make_plan(message)
            if not decided:
                return None
            if len(self._plans) >= MAX_SHAPES:
                self._plans.clear()
            plan = self._plans[shape] = made or False
        return plan if isinstance(plan, _Plan) else None

    def _make_plan(self, message: Mapping[str, Any]) -> tuple[bool, _Plan | None]:
        """(False, None) while a key of the message is undecided, else (True, its plan or
        None when none is possible)."""
        plain: list[tuple[str, catalog.Attribute]] = []
        objects: dict[str, tuple[catalog.Parameter, dict[str, str]]] = {}
        for key, value in message.items():
            step = self.step(key, value)
            if step is None:
                if key not in self._steps:
                    return False, None
            elif isinstance(step, tuple):
                param, sub = step
                objects.setdefault(param.flespi, (param, {}))[1][sub] = key
            elif step.attribute is None:
                return True, None  # a whole object value: the general path
            else:
                plain.append((key, step.attribute))
        for param, present in objects.values():  # in catalogue field order, as normalize
            plain.extend((present[sub], attr) for sub, attr in param.fields.items()
                         if sub in present)
        numbers: list[str] = []
        low: list[float] = []
        high: list[float] = []
        for key, attr in plain:
            if type(message[key]) not in _AS_IS.get(attr.type, ()):
                return True, None
            if attr.type in _NUMERIC:
                lo, hi = _bounds(attr)
                numbers.append(key)
                low.append(lo)
                high.append(hi)
        usual = (int, float, str, str)
        who = _getter(WHO) if all(type(message.get(k)) is t for k, t in zip(WHO, usual,
                                                                             strict=True)) \
            else None
        return True, _Plan(tuple(attr.name for _, attr in plain), _getter([k for k, _ in plain]),
                           _getter(numbers), tuple(low), tuple(high), who)


def flat_keys(params: Parameters) -> FlatKeys:
    fields: dict[str, tuple[catalog.Parameter, str]] = {}
    for param in params.table.values():
        for key in param.fields:
            flat = f"{param.flespi}.{key}"
            if flat not in params.table:  # a parameter of its own (position.speed) reads itself
                fields[flat] = (param, key)
    return FlatKeys(params, fields)


@dataclass(slots=True)
class Mapped:
    """What one message says: whose it is, when, and the attributes it sets."""

    device_id: int | None
    ident: str | None
    timestamp: float | None
    name: str | None
    values: dict[str, Any]
    problems: Sequence[str] = ()  # values left out, and why


def _device_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_DEVICE_ID:
        return value
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and value > 0:
        return float(value)
    return None


def _identity(message: Mapping[str, Any], problems: list[str]) -> Mapped:
    get = message.get
    device_id, ts = get(DEVICE_ID), get(TIMESTAMP)
    ident, name = get(IDENT), get(DEVICE_NAME)
    # the usual types checked inline, the helpers decide the rest
    if not (type(device_id) is int and 0 < device_id <= MAX_DEVICE_ID):
        device_id = _device_id(device_id)
    if not (type(ts) is float and 0.0 < ts < math.inf):
        ts = _timestamp(ts)
        if ts is None and TIMESTAMP in message:
            problems.append(f"timestamp: {message[TIMESTAMP]!r:.40} is not a time")
    return Mapped(device_id, ident if isinstance(ident, str) else None,
                  ts, name if isinstance(name, str) else None, {}, problems)


def map_message(keys: FlatKeys, message: Mapping[str, Any]) -> Mapped:
    """The attributes a message sets. Values that do not fit their attribute are left out
    and described in `problems`; the rest is kept (as with telemetry). The same result as
    `map_general`, faster for messages whose shape has a plan."""
    plan = keys.plan(message)
    if plan is not None:
        numbers = plan.numbers(message)
        if all(map(le, plan.low, numbers)) and all(map(le, numbers, plan.high)):
            values = dict(zip(plan.names, plan.values(message), strict=True))
            if plan.who is not None:
                device_id, ts, ident, name = plan.who(message)
                if 0 < device_id <= MAX_DEVICE_ID and 0.0 < ts < math.inf:
                    return Mapped(device_id, ident, ts, name, values)
            problems: list[str] = []
            out = _identity(message, problems)
            out.values = values
            if not problems:
                out.problems = ()
            return out
    return map_general(keys, message)


def map_general(keys: FlatKeys, message: Mapping[str, Any]) -> Mapped:
    """`map_message` key by key, through `catalog.normalize`: the definition."""
    problems: list[str] = []
    out = _identity(message, problems)
    objects: dict[str, tuple[catalog.Parameter, dict[str, Any]]] = {}
    for key, value in message.items():
        step = keys.step(key, value)
        if step is None:
            continue
        if isinstance(step, tuple):
            param, sub = step
            objects.setdefault(param.flespi, (param, {}))[1][sub] = value
        else:
            _normalize(step, value, out.values, problems)
    for param, value in objects.values():
        _normalize(param, value, out.values, problems)
    if not problems:
        out.problems = ()
    return out


def _normalize(param: catalog.Parameter, value: Any, values: dict[str, Any],
               problems: list[str]) -> None:
    try:
        values.update(catalog.normalize(param, value, problems))
    except catalog.ValueRejected as exc:
        problems.append(str(exc))
