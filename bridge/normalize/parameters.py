"""The active parameter table of one bridge: the catalogue, the configuration's overrides,
and with `flespi.parameters = "all"` the rule-made rows of whatever else devices send.

The one owner of attribute names: `attributes` maps every attribute the bridge can publish to
its definition, and grows as rule-made parameters appear (the renderer and the metrics read
it live). A parameter's row is decided once, on its first value, and kept: its attribute
name never changes while the bridge runs, and is the same on every run (`rules`).

Hot path: `table.get(name)` for what is known already, `skipped.get(name)` for what was
decided to make no entity; `resolve` runs once per new parameter.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.normalize import catalog, overrides, rules
from bridge.normalize.catalog import Attribute, Parameter
from bridge.normalize.overrides import ParameterOverride

log = logging.getLogger(__name__)

# Distinct rule-made parameters at most: a device sending ever new names (a bug, an attack)
# must not grow the state and discovery without bound. Later ones are skipped (`limit`).
MAX_RULE_MADE = 2000


class Parameters:
    def __init__(self, extra: Iterable[str] = (),
                 overrides_: Mapping[str, ParameterOverride] | None = None, *,
                 all_parameters: bool = False) -> None:
        specs = dict(overrides_ or {})
        self.open = all_parameters
        self.table: dict[str, Parameter] = {}
        # parameter -> why it makes no entity (decided once, counted on every arrival)
        self.skipped: dict[str, str] = {}
        self._overrides = {n: s for n, s in specs.items() if not s.ignore}
        for name, param in catalog.build(extra).items():
            spec = specs.get(name)
            if spec is not None and spec.ignore:
                continue
            if spec is not None and param.attribute is not None:
                param = Parameter(name, overrides.apply(param.attribute, spec))
            self.table[name] = param
        for name, spec in specs.items():
            if spec.ignore:
                self.skipped[name] = rules.IGNORED
        self.attributes: dict[str, Attribute] = catalog.attributes(self.table)
        # names rule-made attributes must not take: the catalogue's and the overrides'
        self._taken = set(self.attributes) | {s.attribute for s in specs.values()
                                              if s.attribute}
        self.rule_made = 0

    def subscribed(self) -> list[str] | None:
        """The parameters to subscribe to by name (flespi's comma lists); None for all."""
        if self.open:
            return None
        return [*self.table, *(n for n in self._overrides if n not in self.table)]

    def wants(self, name: str) -> bool:
        """Whether a parameter outside the table is worth reading: rules are on, or the
        configuration names it."""
        return self.open or name in self._overrides

    def get(self, name: str) -> Parameter | None:
        return self.table.get(name)

    def resolve(self, name: str, value: Any) -> Parameter | str | None:
        """The row of a parameter seen for the first time, made by the rules (and its
        override) and kept; a skip reason when it makes no entity (kept too); None when
        this value cannot tell (JSON null)."""
        param = self.table.get(name)
        if param is not None:
            return param
        reason = self.skipped.get(name)
        if reason is not None:
            return reason
        if not self.wants(name):
            return None
        if self.rule_made >= MAX_RULE_MADE:
            log.warning("more than %d parameters outside the catalogue: %.100r and later "
                        "ones are skipped", MAX_RULE_MADE, name)
            self.skipped[name] = rules.LIMIT
            return rules.LIMIT
        made = rules.rule_attribute(name, value, self._taken)
        if made is None or isinstance(made, str):
            if made is not None:
                self.skipped[name] = made
            return made
        spec = self._overrides.get(name)
        if spec is not None:
            made = overrides.apply(made, spec)
            if made.type == "str" and (made.unit or made.state_class):
                log.warning("overrides.%s: a text value takes no unit and no state_class; "
                            "left out", name)
                made = dataclasses.replace(made, unit=None, state_class=None)
        param = Parameter(name, made)
        self.table[name] = param
        self.attributes.setdefault(made.name, made)
        self._taken.add(made.name)
        self.rule_made += 1
        return param
