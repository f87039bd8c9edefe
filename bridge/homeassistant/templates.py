"""Discovery configs rendered once per device shape, then filled in per device.

The configs of two devices that have the same attributes, the same device type and the same
kind of info differ only in the device's id, name and ident. A shape's configs are rendered
once for a stand-in device whose id, name and ident are sentinels, serialized, and each
device's are that text with the sentinels replaced: a few microseconds instead of building
and serializing a dozen entity dictionaries (which made announcing 40,000 devices take
seconds). The dictionaries themselves stay the stand-in's: `Discovery` reads only their
components, which are the same for every device of the shape.

The shape is what `bridge.homeassistant.payloads.device_configs` reads of a device today (the
attribute names, the device type and protocol and flespi's names for them, the firmware and
hardware versions, whether name, ident, last seen and connection are known). So that a
future change there cannot go unnoticed, each new shape is checked against a full rendering
of its first two devices, and again every `CHECK_EVERY` uses; a mismatch turns the templates
off for that shape (and says so once in the log): slower, not wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from bridge.core.store import Device, Info
from bridge.homeassistant.discovery import Serialized, components_of
from bridge.normalize.catalog import DEVICE_INFO

log = logging.getLogger(__name__)

Configs = dict[str, dict[str, Any]]
# 15 digits (the longest id flespi issues), so it appears nowhere but where the id does
_ID = "987654321012345"
_NAME = "\x01name\x01"
_IDENT = "\x01ident\x01"
_ID_BYTES = _ID.encode()
_NAME_JSON = orjson.dumps(_NAME)[1:-1]  # as it appears inside a JSON string
_IDENT_JSON = orjson.dumps(_IDENT)[1:-1]
CHECK_EVERY = 1_000
Shape = tuple[Hashable, ...]


class _Template:
    """A shape's configs, each payload split at the stand-in's id (filled in with one
    `join`), with the pieces that hold the name or the ident noted."""

    __slots__ = ("components", "configs", "payloads", "uses")

    def __init__(self, configs: Configs) -> None:
        self.configs = configs
        self.components = components_of(configs)
        self.payloads: list[tuple[str, list[bytes], list[int], list[int]]] = []
        for topic, cfg in configs.items():
            parts = orjson.dumps(cfg).split(_ID_BYTES)
            self.payloads.append((topic, parts,
                                  [i for i, part in enumerate(parts) if _IDENT_JSON in part],
                                  [i for i, part in enumerate(parts) if _NAME_JSON in part]))
        self.uses = 0


class DiscoveryTemplates:
    def __init__(self, build: Callable[[Device], Configs],
                 context: Callable[[Device], Hashable] = lambda dev: None) -> None:
        """`context(dev)`: what else `build` reads for the device that is not its own
        (flespi's names of its type and protocol, which are learnt while running)."""
        self._build = build
        self._context = context
        self._shapes: dict[Shape, _Template | None] = {}  # None: templates off for it

    def shape(self, dev: Device) -> Shape:
        info = dev.info
        values = dev.values
        return (tuple(values), dev.last_seen is not None, dev.online is not None,
                info.device_type_id, info.protocol_id, bool(info.ident),
                bool(info.name),  # an empty name shows as "flespi <id>" (`Device.name`)
                tuple(values.get(a) for a in DEVICE_INFO),  # firmware, hardware versions
                self._context(dev))

    def render(self, dev: Device) -> tuple[Configs, Serialized]:
        """(config topic -> a dictionary with the device's components, the device's
        configs serialized)."""
        key = self.shape(dev)
        if key not in self._shapes:
            self._shapes[key] = _Template(self._build(_stand_in(dev)))
        template = self._shapes[key]
        if template is None:
            return self._full(dev)
        template.uses += 1
        configs, encoded = self._fill(template, dev)
        if ((template.uses <= 2 or template.uses % CHECK_EVERY == 0)
                and not self._check(key, dev, encoded)):
            return self._full(dev)
        return configs, Serialized(encoded, template.components)

    def _full(self, dev: Device) -> tuple[Configs, Serialized]:
        configs = self._build(dev)
        return configs, Serialized({topic: orjson.dumps(cfg) for topic, cfg in configs.items()},
                                   components_of(configs))

    @staticmethod
    def _fill(template: _Template, dev: Device) -> tuple[Configs, dict[str, bytes]]:
        device_id = str(dev.id)
        id_bytes = device_id.encode()
        name = orjson.dumps(dev.info.name)[1:-1] if dev.info.name else b""
        ident = orjson.dumps(dev.info.ident)[1:-1] if dev.info.ident is not None else b""
        configs: Configs = {}
        encoded: dict[str, bytes] = {}
        for topic, parts, ident_at, name_at in template.payloads:
            if ident_at or name_at:
                parts = list(parts)
                for i in ident_at:
                    parts[i] = parts[i].replace(_IDENT_JSON, ident)
                for i in name_at:
                    parts[i] = parts[i].replace(_NAME_JSON, name)
            real = topic.replace(_ID, device_id)
            configs[real] = template.configs[topic]
            encoded[real] = id_bytes.join(parts)
        return configs, encoded

    def _check(self, key: Shape, dev: Device, encoded: dict[str, bytes]) -> bool:
        _, full = self._full(dev)
        if full.payloads == encoded:
            return True
        self._shapes[key] = None
        log.warning("discovery templates disagree with the full rendering for device %s: "
                    "rendering this shape in full from now on", dev.id)
        return False


def _stand_in(dev: Device) -> Device:
    """`dev` with sentinels for its id, name and ident."""
    info = dev.info
    return Device(int(_ID), values=dict(dev.values), last_seen=dev.last_seen,
                  online=dev.online,
                  info=Info(name=_NAME if info.name else info.name,
                            ident=_IDENT if info.ident else info.ident,
                            device_type_id=info.device_type_id,
                            protocol_id=info.protocol_id))
