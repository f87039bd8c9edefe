"""The sections of the configuration, one model each (`[flespi]`, `[local]`, ...). Every
option is documented in `config.example.toml` and `docs/configuration.md`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.config.files import (
    CHECK_FILES,
    ca_problem,
    cert_problem,
    checked,
    file_problem,
    key_problem,
    refuse,
)
from bridge.normalize.overrides import ParameterOverride
from bridge.normalize.overrides import problems as override_problems
from bridge.normalize.parameters import Parameters

TopicLevel = Annotated[str, Field(min_length=1, pattern=r"^[^#+\x00]+$")]


def key_checked(value: Path | None, info: ValidationInfo, active: str) -> Path | None:
    """A private key file: readable; and, when the section's `active` flag is on, the key
    of its cert_file (checked only once cert_file is valid: it is validated first, and a
    bad one is reported there)."""
    if value is not None:
        refuse(file_problem(value))
    cert = info.data.get("cert_file")
    if value is not None and cert is not None and info.data.get(active):
        refuse(key_problem(value, cert))
    return value


def secret_from_file(data: Any, key: str) -> Any:
    """`<key>_file` supplies `<key>` when that is not set (a readable, non-empty file; a
    problem with the file is reported on `<key>_file` by its own validator)."""
    path_value = data.get(f"{key}_file") if isinstance(data, dict) else None
    if path_value and not data.get(key):
        path = Path(path_value)
        if file_problem(path) is None:
            try:
                secret = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                secret = ""
            if secret:
                return {**data, key: secret}
    return data


def secret_file_checked(value: Path | None) -> Path | None:
    """A `<key>_file` option: a readable, non-empty UTF-8 file (when files are checked)."""
    if value is not None and CHECK_FILES.get():
        refuse(file_problem(value))
        try:
            content = value.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            refuse(f"not UTF-8 text: {value}")
        except OSError as exc:
            refuse(f"cannot read {value}: {exc.strerror or exc}")
        else:
            if not content.strip():
                refuse(f"empty file: {value}")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlespiSettings(Section):
    """The upstream connection to the flespi MQTT broker."""

    token: SecretStr = Field(description="flespi token, sent as the MQTT username")
    token_file: Path | None = Field(None, description="read the token from this file instead")
    host: str = "mqtt.flespi.io"
    port: int = Field(8883, ge=1, le=65535)
    tls: bool = True
    ca_file: Path | None = Field(None, description="CA bundle; default: the system store")
    # also names the bridge's reply topics (flespi-bridge/<client_id>/...), so topic-safe
    client_id: str = Field("flespi-bridge", pattern=r"^[A-Za-z0-9._-]{1,128}$")
    session_expiry: int = Field(
        7 * 24 * 3600, ge=0, le=0xFFFFFFFF, description="seconds flespi keeps the session"
    )
    keepalive: int = Field(60, ge=5, le=65535)
    max_inflight: int = Field(
        5000, ge=10, le=65535,
        description="unacknowledged flespi messages at most (MQTT receive maximum)",
    )
    devices: Literal["all"] | list[Annotated[int, Field(gt=0)]] = "all"
    comma_lists: bool | None = Field(
        None,
        description="use flespi's comma-list topic levels (default: on for *.flespi.io hosts)",
    )
    extra_parameters: list[str] = Field(
        default_factory=list, description="flespi parameters outside the catalogue to publish"
    )
    messages: bool = Field(
        False, description="full device messages: republished on <base>/<id>/message, and "
        "their parameters drive the state")
    telemetry: bool = Field(
        True, description="subscribe to telemetry; off: the state comes from messages only")
    parameters: Literal["catalogue", "all"] = Field(
        "catalogue", description="all: every parameter a device sends becomes an attribute, "
        "by the naming rules where the catalogue has no row"
    )
    # flespi parameter -> how it is published instead (bridge/overrides.py)
    overrides: dict[str, ParameterOverride] = Field(
        default_factory=dict, description="per flespi parameter: attribute, label, unit, "
        "device_class, state_class, component, entity_category, enabled_by_default or ignore"
    )

    @model_validator(mode="after")
    def _some_values(self) -> FlespiSettings:
        if not (self.telemetry or self.messages):
            raise ValueError("telemetry = false needs messages = true (or nothing drives "
                             "the state)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "token")

    @field_validator("token_file")
    @classmethod
    def _token_file_readable(cls, value: Path | None) -> Path | None:
        return secret_file_checked(value)

    @field_validator("ca_file")
    @classmethod
    def _ca_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return checked(value, bool(info.data.get("tls")), ca_problem)

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if not text:
            raise ValueError("the token is empty")
        if text.lower().startswith("flespitoken ") or any(c.isspace() for c in text):
            # `FlespiToken <token>` is the REST header's form; MQTT sends the token alone as
            # the user name, and flespi refuses it with the prefix.
            raise ValueError("give the token alone, without the \"FlespiToken \" prefix "
                             "or spaces (copy it from the flespi panel: Tokens)")
        return value

    @field_validator("extra_parameters")
    @classmethod
    def _valid_parameter_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or any(c in name for c in "/+#,") or name != name.strip():
                raise ValueError(f"{name!r} is not a flespi parameter name")
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides_work(cls, value: dict[str, ParameterOverride]
                        ) -> dict[str, ParameterOverride]:
        found = override_problems(value)
        if found:
            raise ValueError("; ".join(found))
        return value

    @property
    def use_comma_lists(self) -> bool:
        if self.comma_lists is not None:
            return self.comma_lists
        return self.host == "flespi.io" or self.host.endswith(".flespi.io")

    def parameter_table(self) -> Parameters:
        """The table this configuration asks for (`extra_parameters`, `parameters`,
        `overrides`)."""
        return Parameters(self.extra_parameters, self.overrides,
                          all_parameters=self.parameters == "all")


class LocalSettings(Section):
    """The local MQTT broker (Mosquitto) that receives the normalized fleet."""

    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = Field(False, description="skip the broker's hostname check")
    client_id: str = Field("flespi-bridge", min_length=1, max_length=128)
    keepalive: int = Field(60, ge=5, le=65535)
    base_topic: TopicLevel = "flespi"
    discovery_prefix: TopicLevel = "homeassistant"
    qos: Literal[0, 1] = 1
    coalesce_window: float = Field(
        0.1, ge=0, le=60, description="seconds to merge a device's updates into one publish"
    )
    output: Literal["json", "attribute", "both"] = "json"
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version to the local broker: auto = MQTT 5, falling back to "
                            "3.1.1 for a broker that refuses it (or does not answer it)")
    max_string_length: int = Field(
        4096, ge=0, le=268_435_455,
        description="bytes (UTF-8) of a string attribute at most; a longer one is left out "
                    "of the state and its topic, counted and logged (0: no limit)",
    )

    @field_validator("ca_file")
    @classmethod
    def _ca_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return checked(value, bool(info.data.get("tls")), ca_problem)

    @field_validator("cert_file")
    @classmethod
    def _cert_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return checked(value, bool(info.data.get("tls")), cert_problem)

    @field_validator("key_file")
    @classmethod
    def _key_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return key_checked(value, info, "tls")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> LocalSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self


class HomeAssistantSettings(Section):
    """Home Assistant MQTT discovery (the prefix is `local.discovery_prefix`)."""

    discovery: bool = True
    discovery_mode: Literal["device", "entity"] = Field(
        "device", description="device: one config per device (Home Assistant 2024.11+); "
        "entity: one per entity"
    )
    include: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="device ids to announce; empty = every device"
    )
    exclude: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list, description="device ids never announced"
    )
    expire_after: int = Field(0, ge=0, description="seconds until sensors expire; 0 = never")
    status_delay: float = Field(
        2.0, ge=0, le=60, description="max random delay before republishing after HA restarts"
    )
    # Any local client may publish `online`: at most one full republish per interval (one
    # more waits for its end, so a Home Assistant restart is always answered). 30 s is well
    # under a Home Assistant restart and leaves a large fleet's republish room to finish.
    republish_interval: float = Field(
        30.0, ge=0, le=3600, description="seconds at least between republishes for online"
    )

    def announces(self, device_id: int) -> bool:
        if not self.discovery or device_id in self.exclude:
            return False
        return not self.include or device_id in self.include


class ReconnectSettings(Section):
    """Exponential backoff with full jitter, used by both broker connections."""

    min_delay: float = Field(0.5, gt=0, le=60)
    max_delay: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSettings:
        if self.max_delay < self.min_delay:
            raise ValueError("max_delay must be >= min_delay")
        return self


class MetricsSettings(Section):
    """The HTTP port serving /metrics, /healthz and /readyz."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9871, ge=0, le=65535)
    fleet_parameters: list[str] = Field(
        default_factory=lambda: ["voltage", "signal", "speed"],
        description="numeric state attributes exported per device",
    )
    max_devices: int = Field(10_000, ge=0, description="cap on devices with per-device series")


class StreamSettings(Section):
    """The ingest endpoint for flespi's HTTP stream (push): its own listener, off by default."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = Field(9872, ge=0, le=65535)
    path: str = Field("/flespi/stream", pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
    cert_file: Path | None = Field(None, description="TLS certificate (PEM, chain first)")
    key_file: Path | None = Field(None, description="its unencrypted private key (PEM)")
    authorization: SecretStr | None = Field(
        None, description="the exact Authorization header value flespi sends")
    authorization_file: Path | None = Field(None, description="read it from this file")
    max_body: int = Field(32 * 1024 * 1024, ge=1024, le=1024**3, description="bytes")
    timeout: float = Field(
        10.0, gt=0, le=300, description="seconds a batch waits for the local broker")
    devices: dict[str, Annotated[int, Field(gt=0)]] = Field(
        default_factory=dict, description="ident -> device id, for streams from a channel")
    # The port faces the internet: every connection is bounded (bridge/http/guard.py).
    header_timeout: float = Field(
        10.0, gt=0, le=300, description="seconds for a request's line and headers, then 408")
    body_timeout: float = Field(
        30.0, gt=0, le=3600, description="seconds for a body once its headers are in, then 408")
    keepalive_timeout: float = Field(
        15.0, gt=0, le=3600, description="seconds an idle keep-alive connection is kept")
    max_connections: int = Field(
        256, ge=1, le=65535, description="open connections at most; more are answered 503")
    max_connections_per_address: int = Field(
        32, ge=1, le=65535, description="open connections from one client address at most")

    @model_validator(mode="before")
    @classmethod
    def _authorization_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "authorization")

    @field_validator("authorization_file")
    @classmethod
    def _authorization_file_readable(cls, value: Path | None) -> Path | None:
        return secret_file_checked(value)

    @field_validator("authorization")
    @classmethod
    def _header_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            text = value.get_secret_value()
            if not text.strip() or any(c in text for c in "\r\n\x00"):
                raise ValueError("must be a non-empty header value on one line")
        return value

    @field_validator("cert_file")
    @classmethod
    def _cert_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return checked(value, bool(info.data.get("enabled")), cert_problem)

    @field_validator("key_file")
    @classmethod
    def _key_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return key_checked(value, info, "enabled")

    @model_validator(mode="after")
    def _complete(self) -> StreamSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.enabled and self.authorization is None:
            raise ValueError("the stream needs an authorization (stream.authorization, "
                             "stream.authorization_file, FLESPI_BRIDGE_STREAM__AUTHORIZATION "
                             "or a secrets-dir file stream__authorization)")
        return self

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


class ShutdownSettings(Section):
    grace: float = Field(
        10.0, ge=0, le=300, description="seconds to finish in-flight work on SIGTERM"
    )


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
