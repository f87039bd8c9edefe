"""The `[commands]` section: limits, the transport, and the profiles that turn local
command topics into flespi device commands (documented in `docs/commands.md`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bridge.config.sections import Section
from bridge.normalize.overrides import Identifier

Scalar = str | int | float | bool


class CommandSpec(Section):
    """One entity command: how a local command becomes a flespi device command."""

    component: Literal["lock", "button", "number"]
    command: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="flespi command name")
    properties: dict[str, Scalar] = Field(default_factory=dict)
    value_property: str | None = Field(
        None, description="the properties key that receives the value (lock, number)"
    )
    payload_lock: Scalar = 1
    payload_unlock: Scalar = 0
    min: float = 0
    max: float = 100
    step: float = 1
    unit: str | None = None
    label: str | None = Field(None, description="Home Assistant entity name")
    state_attribute: str | None = Field(
        None, description="state attribute that confirms the command (e.g. locked)"
    )
    setting: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="flespi device setting whose current value is the number's state "
        "(flespi/state/gw/devices/{id}/settings/{name}); its change confirms the command",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CommandSpec:
        if self.component in ("lock", "number") and not self.value_property:
            raise ValueError(f"a {self.component} command needs value_property")
        if self.setting is not None and self.component != "number":
            raise ValueError("only a number takes its state from a setting")
        if self.setting is not None and self.state_attribute is not None:
            raise ValueError("a number's state comes from a setting or a state attribute, "
                             "not both")
        if self.component == "number" and not (self.min < self.max and self.step > 0):
            raise ValueError("a number needs min < max and step > 0")
        return self


class CommandSettings(Section):
    """Local command topics -> flespi device commands."""

    read_only: bool = Field(False, description="refuse every command")
    transport: Literal["mqtt", "http"] = "mqtt"
    http_url: str = Field("https://flespi.io", pattern=r"^https?://")
    timeout: float = Field(10, gt=0, le=300, description="seconds flespi may take to answer")
    max_payload: int = Field(1024, ge=16, le=65536, description="bytes")
    device_rate: float = Field(1.0, gt=0, description="commands per second per device")
    device_burst: int = Field(3, ge=1)
    global_rate: float = Field(10.0, gt=0, description="commands per second in all")
    global_burst: int = Field(20, ge=1)
    dedup_window: float = Field(300, ge=0, description="seconds a transaction id is remembered")
    confirm_timeout: float = Field(
        60, ge=0, le=3600, description="seconds a command with a state_attribute waits, once "
        "flespi accepted it, for the device's telemetry to confirm it (0: no wait)")
    # Above what the default rates let reach flespi within a timeout (a burst of 20, then
    # 10/s for timeout + 5 s: 170), so it refuses only a flood the rates would refuse anyway.
    max_in_flight: int = Field(
        200, ge=1, le=100_000, description="requests handled at once; past it: busy")
    # device type id (as a string) or "default" -> entity -> command
    profiles: dict[str, dict[Identifier, CommandSpec]] = Field(default_factory=dict)

    @field_validator("profiles")
    @classmethod
    def _profile_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key != "default" and not (key.isascii() and key.isdigit()):
                raise ValueError(f"profile {key!r}: use a device type id or \"default\"")
        return value

    def profile(self, device_type_id: int | None) -> dict[str, CommandSpec]:
        if device_type_id is not None and str(device_type_id) in self.profiles:
            return self.profiles[str(device_type_id)]
        return self.profiles.get("default", {})

    @property
    def settings(self) -> list[str]:
        """The flespi device settings some profile's number shows (what to subscribe)."""
        return sorted(self.setting_properties())

    def setting_properties(self) -> dict[str, tuple[str, ...]]:
        """Setting name -> the value properties the profiles' numbers read from it."""
        out: dict[str, tuple[str, ...]] = {}
        for profile in self.profiles.values():
            for spec in profile.values():
                if spec.setting is not None and spec.value_property is not None:
                    known = out.get(spec.setting, ())
                    if spec.value_property not in known:
                        out[spec.setting] = (*known, spec.value_property)
        return out
