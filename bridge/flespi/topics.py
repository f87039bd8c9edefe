"""flespi topic grammar: parsing what arrives, building what to subscribe to.

Pure functions only. Parsing is `str.split`-based (no regular expressions) because it runs
once per upstream message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Literal, NamedTuple

from bridge.normalize.messages import MAX_ID_DIGITS

STATE_PREFIX = "flespi/state/gw/devices/"
MESSAGE_PREFIX = "flespi/message/gw/devices/"
# Device object properties the bridge follows (besides the device object itself).
PROPERTIES = ("connected", "name")


class Kind(Enum):
    TELEMETRY = "telemetry"
    DEVICE = "device"
    PROPERTY = "property"
    MESSAGE = "message"
    CONNECTION = "connection"  # flespi/state/gw/devices/{id}/connections/{conn_id}
    SETTING = "setting"  # flespi/state/gw/devices/{id}/settings/{name}


class Topic(NamedTuple):
    kind: Kind
    device_id: int
    name: str  # parameter, property, connection id or setting name; "" for the device
    # object and messages


def _topic(fields: tuple[Kind, int, str]) -> Topic:
    """`Topic(*fields)` without the generated `__new__`'s extra call (once per message)."""
    return tuple.__new__(Topic, fields)


def parse_id(text: str) -> int | None:
    """A device id level (`123`) as an int; None if it is not one."""
    if 0 < len(text) <= MAX_ID_DIGITS and text.isascii() and text.isdigit():
        value = int(text)
        return value or None
    return None


def parse(topic: str) -> Topic | None:
    """Classify an upstream topic; None for anything the bridge does not consume."""
    if topic.startswith(STATE_PREFIX):
        parts = topic[len(STATE_PREFIX):].split("/")
        device_id = parse_id(parts[0])
        if device_id is None:
            return None
        n = len(parts)
        if n == 3 and parts[1] == "telemetry" and parts[2]:  # the common case first
            return _topic((Kind.TELEMETRY, device_id, parts[2]))
        if n == 1:
            return Topic(Kind.DEVICE, device_id, "")
        if n == 3 and parts[1] == "connections" and parts[2]:
            return Topic(Kind.CONNECTION, device_id, parts[2])
        if n == 3 and parts[1] == "settings" and parts[2]:
            return Topic(Kind.SETTING, device_id, parts[2])
        if n == 2 and parts[1] in PROPERTIES:
            return Topic(Kind.PROPERTY, device_id, parts[1])
        return None
    if topic.startswith(MESSAGE_PREFIX):
        rest = topic[len(MESSAGE_PREFIX):]
        device_id = parse_id(rest)
        return None if device_id is None else Topic(Kind.MESSAGE, device_id, "")
    return None


def _levels(items: Sequence[str], comma_lists: bool) -> list[str]:
    return [",".join(items)] if comma_lists else list(items)


def subscriptions(
    devices: Literal["all"] | Sequence[int],
    parameters: Iterable[str] | None,
    *,
    comma_lists: bool,
    messages: bool = False,
    settings: Sequence[str] = (),
    telemetry: bool = True,
) -> list[str]:
    """Topic filters for the selection.

    `parameters` None subscribes to every telemetry parameter (`+`). With `comma_lists`
    (flespi only) a list of ids or parameters is one topic level `1,2,3`; a standard broker
    gets one filter per item instead. `settings` are the device settings to follow (only
    those a command profile shows: a device has dozens, most of no use here). `telemetry`
    False leaves telemetry out (the state then comes from `messages`).
    """
    ids = ["+"] if devices == "all" else _levels([str(d) for d in devices], comma_lists)
    around = device_filters(parameters, comma_lists=comma_lists, messages=messages,
                            settings=settings, telemetry=telemetry)
    filters: list[str] = []
    for dev in ids:
        filters.append(f"{STATE_PREFIX}{dev}")
        filters.extend(f"{before}{dev}{after}" for before, after in around)
    return filters


def device_filters(
    parameters: Iterable[str] | None,
    *,
    comma_lists: bool,
    messages: bool = False,
    settings: Sequence[str] = (),
    telemetry: bool = True,
) -> list[tuple[str, str]]:
    """A device's filters besides its device object, each as the text before and after
    the device id level (`subscriptions` explains the arguments): a filter is `before +
    level + after`, the level one id or, on flespi, a comma list of them."""
    params = ["+"] if parameters is None else _levels(sorted(set(parameters)), comma_lists)
    names = _levels(sorted(set(settings)), comma_lists) if settings else []
    around = [(STATE_PREFIX, f"/{prop}") for prop in PROPERTIES]
    if telemetry:
        around.extend((STATE_PREFIX, f"/telemetry/{p}") for p in params)
    around.append((STATE_PREFIX, "/connections/+"))
    around.extend((STATE_PREFIX, f"/settings/{name}") for name in names)
    if messages:
        around.append((MESSAGE_PREFIX, ""))
    return around


def rest_topic(method: str, uri: str) -> str:
    """`flespi/rest/<method>/<uri>`, the only topics the bridge ever publishes upstream."""
    return f"flespi/rest/{method.lower()}/{uri.lstrip('/')}"
