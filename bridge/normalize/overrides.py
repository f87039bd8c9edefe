"""Per-parameter overrides from the configuration (`[flespi.overrides."<flespi parameter>"]`): the
model of one, its checks, and applying it to an attribute. Pure.

Every option is optional and replaces what the catalogue row or the naming rules say; the
text `"none"` removes a catalogue's unit, device class, state class or entity category.
`ignore = true` drops the parameter altogether. An override of a parameter outside the
catalogue also makes the bridge take that parameter (by the rules, then the override), with
or without `flespi.parameters = "all"`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.normalize import catalog, ha_classes, rules

NONE = "none"
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class ParameterOverride(BaseModel):
    """How one flespi parameter is published, instead of what the catalogue or rules say."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ignore: bool = Field(False, description="take nothing of this parameter")
    attribute: Identifier | None = Field(None, description="state attribute name")
    label: str | None = Field(None, min_length=1, max_length=64,
                              description="Home Assistant entity name")
    unit: str | None = Field(None, min_length=1, max_length=32)
    device_class: str | None = Field(None, min_length=1, max_length=64)
    state_class: Literal["measurement", "total", "total_increasing", "none"] | None = None
    component: Literal["sensor", "binary_sensor", "none"] | None = Field(
        None, description="none: published in the state, no entity")
    entity_category: Literal["diagnostic", "none"] | None = None
    enabled_by_default: bool | None = None

    @model_validator(mode="after")
    def _ignore_alone(self) -> ParameterOverride:
        if self.ignore and self.model_fields_set - {"ignore"}:
            raise ValueError("ignore = true takes no other option")
        return self


def _opt(value: str | None, current: str | None) -> str | None:
    if value is None:
        return current
    return None if value == NONE else value


def apply(attr: catalog.Attribute, spec: ParameterOverride) -> catalog.Attribute:
    """`attr` with the override's options."""
    component: catalog.Component | None = attr.component
    if spec.component == "none":
        component = None
    elif spec.component is not None:
        component = spec.component
    type_ = attr.type
    unit, state_class = _opt(spec.unit, attr.unit), _opt(spec.state_class, attr.state_class)
    device_class = _opt(spec.device_class, attr.device_class)
    if component == "binary_sensor" and attr.component != "binary_sensor":
        type_ = "bool"  # 0/1 or true/false
        unit = state_class = None
        if spec.device_class is None:
            device_class = None
    elif component == "sensor" and attr.component == "binary_sensor" and spec.device_class is None:
        device_class = None
    return dataclasses.replace(
        attr, name=spec.attribute or attr.name, type=type_, label=spec.label or attr.label,
        unit=unit, component=component, device_class=device_class, state_class=state_class,
        entity_category=_opt(spec.entity_category, attr.entity_category),
        enabled_by_default=(attr.enabled_by_default if spec.enabled_by_default is None
                            else spec.enabled_by_default),
        invert=attr.invert and component == "binary_sensor")


def problems(overrides: Mapping[str, ParameterOverride]) -> list[str]:
    """Every reason the overrides cannot work, each naming its parameter."""
    out: list[str] = []
    table = catalog.build()
    owners: dict[str, str] = {}  # attribute -> the parameter that has it after overrides
    for param in table.values():
        if overrides.get(param.flespi, ParameterOverride()).ignore:
            continue
        for attr in ([param.attribute] if param.attribute else []) + list(param.fields.values()):
            owners.setdefault(attr.name, param.flespi)
    for name, spec in overrides.items():
        where = f"{name!r}"
        if not name or any(c in name for c in "/+#,") or name != name.strip():
            out.append(f"{where} is not a flespi parameter name")
            continue
        if spec.ignore:
            continue
        row = table.get(name)
        if row is not None and row.attribute is None:
            out.append(f"{where} is an object of several attributes: only ignore applies")
            continue
        if row is not None and row.attribute is not None:
            base = row.attribute
        else:  # rule-made: the first value decides its type; check as a number
            made = rules.rule_attribute(name, 0.0)
            base = made if isinstance(made, catalog.Attribute) else catalog.Attribute(
                rules.attribute_name(name), "float", name)
        attr = apply(base, spec)
        if spec.attribute is not None:
            if spec.attribute in rules.RESERVED:
                out.append(f"{where}: attribute {spec.attribute!r} is reserved "
                           f"(one of {', '.join(sorted(rules.RESERVED))})")
            owner = owners.get(spec.attribute)
            if owner is not None and owner != name:
                out.append(f"{where}: attribute {spec.attribute!r} is already {owner!r}'s")
            owners[spec.attribute] = name
        if attr.component is not None:
            numeric = attr.type in ("int", "float", "object")
            out.extend(f"{where}: {p}" for p in ha_classes.problems(
                attr.component, attr.device_class, attr.unit, attr.state_class, numeric))
    return out
