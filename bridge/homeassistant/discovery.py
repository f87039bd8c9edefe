"""What the bridge has announced to Home Assistant, and the announcements it owes.

`Discovery` is the one owner of what was published per owner (a flespi device,
`flespi_<id>`, or the bridge itself): it republishes what changed, removes what is no longer
generated — a whole config in the entity layout, a `{"p": "<platform>"}` component in the
device layout — and carries out the hand-over from the other layout (an installation that
ran with the other `homeassistant.discovery_mode`) with Home Assistant's documented
`migrate_discovery` protocol, in one ordered sequence per owner:

1. `{"migrate_discovery": true}` on each old topic whose entities live on (Home Assistant
   unloads them and keeps their registry entries: entity ids, names, areas, history);
2. the new config(s), which take the same `unique_id`s over;
3. an empty retained payload on each old topic.

Old topics of entities no longer generated are simply cleared. Which old topics belong to a
live owner is decided by `bridge.publish.cleanup.Cleanup` once the upstream state is known in full:
until it `release`s, announcements are held back (an announcement published before the
`migrate_discovery` markers would make Home Assistant reject the taken-over `unique_id`s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.core.transport import Publication
from bridge.homeassistant.payloads import MIGRATE, Context

Components = frozenset[tuple[str, str]]  # (component id, platform)


def components_of(configs: Mapping[str, dict[str, Any]]) -> Components:
    """The components device-layout configs announce (none in the entity layout)."""
    return frozenset((cid, c["p"]) for cfg in configs.values()
                     if isinstance(cmps := cfg.get("cmps"), dict) for cid, c in cmps.items())


@dataclass(frozen=True, slots=True)
class Serialized:
    """Configs already serialized (the renderer's templates): config topic -> payload, and
    the components they announce."""

    payloads: Mapping[str, bytes]
    components: Components


@dataclass
class Discovery:
    ctx: Context
    # owner -> config topic -> hash of the payload published (not the payload: a large
    # fleet has hundreds of thousands of entities)
    published: dict[str, dict[str, int]] = field(default_factory=dict)
    # owner -> components announced in its device config (to publish their removal)
    components: dict[str, Components] = field(default_factory=dict)
    # owner -> topics of the other layout to migrate from; None: not known yet (hold)
    legacy: dict[str, list[str]] | None = field(default_factory=dict)
    _shapes: dict[Components, Components] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        return self.legacy is None

    def hold(self) -> None:
        """Announce nothing until `release` (a new local connection: what is retained
        there is about to be taken stock of)."""
        self.legacy = None

    def release(self, legacy: Mapping[str, list[str]]) -> None:
        """Announce again; `legacy` maps live owners to their topics of the other layout."""
        self.legacy = {owner: list(topics) for owner, topics in legacy.items()}

    def update(self, owner: str, configs: Mapping[str, dict[str, Any]],
               force: bool = False, serialized: Serialized | None = None
               ) -> list[Publication]:
        """What announces `configs` now. `serialized`: the same configs serialized, for an
        owner with nothing `announced` (so with no removals to add)."""
        if self.legacy is None:
            return []
        before = self.published.get(owner, {})
        now: Mapping[str, bytes]
        if serialized is None:
            configs = self._with_removals(owner, configs)
            now = {topic: orjson.dumps(cfg) for topic, cfg in configs.items()}
        elif self.announced(owner):
            raise ValueError(f"{owner}: serialized configs only for a first announcement")
        else:
            self._remember(owner, serialized.components)
            now = serialized.payloads
        old = [t for t in self.legacy.pop(owner, []) if t not in now]
        handed_over = [t for t in old if self._lives_on(t, configs)]
        pubs = [Publication(t, MIGRATE) for t in handed_over]
        pubs += [Publication(t, b"") for t in before if t not in now]
        pubs += [Publication(t, p) for t, p in now.items()
                 if force or old or before.get(t) != hash(p)]
        pubs += [Publication(t, b"") for t in old]
        self.published[owner] = {t: hash(p) for t, p in now.items()}
        return pubs

    def has_published(self, owner: str) -> bool:
        """Whether configs of `owner` are out (since the last local connect)."""
        return owner in self.published

    def announced(self, owner: str) -> bool:
        """Whether components of `owner` were announced (their removal may be owed)."""
        return owner in self.components

    def forget(self, owner: str) -> list[Publication]:
        """Empty retained payloads for every config of an owner that is gone."""
        self.components.pop(owner, None)
        if self.legacy is not None:
            self.legacy.pop(owner, None)
        return [Publication(t, b"") for t in self.published.pop(owner, {})]

    def reset(self) -> None:
        """After a local reconnect nothing can be assumed published."""
        self.published.clear()
        self.components.clear()

    def _with_removals(self, owner: str, configs: Mapping[str, dict[str, Any]]
                       ) -> Mapping[str, dict[str, Any]]:
        """Device layout: components announced before and gone now stay in `cmps` as
        `{"p": platform}` (their removal) for as long as the bridge runs."""
        out = dict(configs)
        shape: set[tuple[str, str]] = set(self.components.get(owner, ()))
        for topic, cfg in configs.items():
            cmps = cfg.get("cmps")
            if not isinstance(cmps, dict):
                continue
            current = {(cid, c["p"]) for cid, c in cmps.items()}
            gone = {cid: {"p": p} for cid, p in sorted(shape) if cid not in cmps}
            if gone:
                out[topic] = {**cfg, "cmps": {**cmps, **gone}}
            shape |= current
        self._remember(owner, frozenset(shape))
        return out

    def _remember(self, owner: str, shape: Components) -> None:
        if shape:  # one shared set per shape: a large fleet has few
            self.components[owner] = self._shapes.setdefault(shape, shape)

    def _lives_on(self, old_topic: str, configs: Mapping[str, dict[str, Any]]) -> bool:
        """Whether an old-layout topic's entities are among the new configs."""
        parsed = self.ctx.owner(old_topic)
        if parsed is None:
            return False
        _, layout, key = parsed
        if layout == "device":
            return True  # its components are handed over as a whole
        for cfg in configs.values():
            cmps = cfg.get("cmps")
            if isinstance(cmps, dict) and key in cmps and len(cmps[key]) > 1:
                return True
        return False
