"""Settings: a TOML file, overridden by `FLESPI_BRIDGE_<SECTION>__<KEY>` environment variables
and by files in a secrets directory (`<section>__<key>`, e.g. `flespi__token`).

Precedence, highest first: environment, explicit `overrides`, secrets directory, TOML file,
defaults (`load(..., environment=False)` leaves the environment out). Every option is
documented in `config.example.toml`.

File options (`flespi.token_file`, `flespi.ca_file`, `local.ca_file`, `local.cert_file`,
`local.key_file`) are checked when the settings are loaded, so `check-config` and `run` refuse
what would fail later: a file that is set must exist, be a regular file and be readable,
whether or not the option is in use (a wrong path is a mistake waiting for the day TLS is
turned on); the TLS material must also load as PEM (CA bundle, client certificate and its
matching, unencrypted key) where TLS uses it: `flespi.ca_file` with `flespi.tls`, the `local`
files with `local.tls`.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.exceptions import ConfigError

ENV_PREFIX = "FLESPI_BRIDGE_"
DEFAULT_SECRETS_DIR = Path("/run/secrets/flespi-bridge")
SECRET_FILE_MAX_BYTES = 64 * 1024

TopicLevel = Annotated[str, Field(min_length=1, pattern=r"^[^#+\x00]+$")]

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a configuration file (names the path), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as exc:
        return f"cannot access {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special file")
        return f"not a regular file: {path} ({kind})"
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _ssl_reason(exc: ssl.SSLError) -> str:
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def ca_problem(path: Path) -> str | None:
    """Why `path` is not a usable CA bundle (PEM), or None."""
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        return f"not a PEM certificate: {path} ({_ssl_reason(exc)})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def cert_problem(path: Path) -> str | None:
    """Why `path` holds no PEM certificate, or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        return f"not a PEM certificate: {path} ({_ssl_reason(exc)})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def key_problem(key: Path, cert: Path) -> str | None:
    """Why `key` is not the unencrypted PEM private key of the certificate `cert`, or None."""
    asked: list[bool] = []

    def no_password() -> bytes:  # never prompt on a terminal: refuse encrypted keys
        asked.append(True)
        return b""

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(key), password=no_password)
    except ssl.SSLError as exc:
        if asked:
            return f"encrypted private keys are not supported: {key}"
        if "KEY_VALUES_MISMATCH" in str(exc):
            return f"not the private key of the certificate in cert_file: {key}"
        return f"not a PEM private key: {key} ({_ssl_reason(exc)})"
    except OSError as exc:
        return f"cannot read {key}: {exc.strerror or exc}"
    return None


# False while `load(..., check_files=False)` validates a configuration meant for another
# machine (a Helm chart's ConfigMap): file options are then not looked at.
_CHECK_FILES: ContextVar[bool] = ContextVar("flespi_bridge_check_files", default=True)


def _refuse(problem: str | None) -> None:
    if problem is not None and _CHECK_FILES.get():
        raise PydanticCustomError("config_file", "{problem}", {"problem": problem})


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
    messages: bool = Field(False, description="republish every full message on <base>/<id>/message")

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        # A token_file that cannot be read or is empty is reported on flespi.token_file by
        # its field validator; the token is then simply missing.
        if isinstance(data, dict) and not data.get("token") and data.get("token_file"):
            path = Path(data["token_file"])
            if file_problem(path) is None:
                try:
                    token = path.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError):
                    token = ""
                if token:
                    data = {**data, "token": token}
        return data

    @field_validator("token_file")
    @classmethod
    def _token_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and _CHECK_FILES.get():
            _refuse(file_problem(value))
            try:
                content = value.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                _refuse(f"not UTF-8 text: {value}")
            except OSError as exc:
                _refuse(f"cannot read {value}: {exc.strerror or exc}")
            else:
                if not content.strip():
                    _refuse(f"empty file: {value}")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            _refuse(file_problem(value))
            if info.data.get("tls"):
                _refuse(ca_problem(value))
        return value

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("the token is empty")
        return value

    @field_validator("extra_parameters")
    @classmethod
    def _valid_parameter_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or any(c in name for c in "/+#,") or name != name.strip():
                raise ValueError(f"{name!r} is not a flespi parameter name")
        return value

    @property
    def use_comma_lists(self) -> bool:
        if self.comma_lists is not None:
            return self.comma_lists
        return self.host == "flespi.io" or self.host.endswith(".flespi.io")


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

    @field_validator("ca_file")
    @classmethod
    def _ca_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            _refuse(file_problem(value))
            if info.data.get("tls"):
                _refuse(ca_problem(value))
        return value

    @field_validator("cert_file")
    @classmethod
    def _cert_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            _refuse(file_problem(value))
            if info.data.get("tls"):
                _refuse(cert_problem(value))
        return value

    @field_validator("key_file")
    @classmethod
    def _key_file_usable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            _refuse(file_problem(value))
        # only once cert_file is valid (it is validated first): a bad one is reported there
        cert = info.data.get("cert_file")
        if value is not None and cert is not None and info.data.get("tls"):
            _refuse(key_problem(value, cert))
        return value

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> LocalSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self


class HomeAssistantSettings(Section):
    """Home Assistant MQTT discovery (the prefix is `local.discovery_prefix`)."""

    discovery: bool = True
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

    def announces(self, device_id: int) -> bool:
        if not self.discovery or device_id in self.exclude:
            return False
        return not self.include or device_id in self.include


Scalar = str | int | float | bool
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


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

    @model_validator(mode="after")
    def _consistent(self) -> CommandSpec:
        if self.component in ("lock", "number") and not self.value_property:
            raise ValueError(f"a {self.component} command needs value_property")
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


# False while `load(..., environment=False)` builds a Settings: no environment source.
_USE_ENVIRONMENT: ContextVar[bool] = ContextVar("flespi_bridge_use_environment", default=True)


@contextmanager
def _environment(enabled: bool) -> Iterator[None]:
    token = _USE_ENVIRONMENT.set(enabled)
    try:
        yield
    finally:
        _USE_ENVIRONMENT.reset(token)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    flespi: FlespiSettings
    local: LocalSettings = Field(default_factory=LocalSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    reconnect: ReconnectSettings = Field(default_factory=ReconnectSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file and the secrets directory are merged into the init arguments by `load`;
        # the environment is layered over them here, section by section (unless left out).
        if not _USE_ENVIRONMENT.get():
            return (init_settings,)
        return (env_settings, init_settings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([("--config", f"file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("--config", f"cannot read {path}: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("--config", f"invalid TOML in {path}: {exc}")]) from None


def _read_secrets_dir(directory: Path) -> dict[str, Any]:
    """Files named `<section>__<key>` become `{section: {key: content}}`."""
    values: dict[str, Any] = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_file() or "__" not in entry.name or entry.name.startswith("."):
            continue  # Kubernetes adds `..data` symlinks beside the keys
        section, key = entry.name.lower().split("__", 1)
        if entry.stat().st_size > SECRET_FILE_MAX_BYTES:
            raise ConfigError([(f"{section}.{key}", f"secret file {entry} is too large")])
        values.setdefault(section, {})[key] = entry.read_text(encoding="utf-8").strip()
    return values


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    errors = exc.errors(include_url=False, include_input=False)
    token_file_problem = any(
        tuple(err["loc"]) == ("flespi", "token_file") for err in errors
    )
    for err in errors:
        key = ".".join(str(part) for part in err["loc"]) or "(root)"
        reason = err["msg"]
        if err["type"] == "missing" and key == "flespi.token":
            if token_file_problem:
                continue  # the token_file problem says it all
            reason = (
                "missing: set flespi.token, flespi.token_file, "
                f"{ENV_PREFIX}FLESPI__TOKEN or a secrets-dir file flespi__token"
            )
        elif err["type"] == "extra_forbidden":
            reason = "unknown option" if "." in key else "unknown section"
        problems.append((key, reason))
    return problems


def load(
    path: Path | None = None,
    *,
    secrets_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environment: bool = True,
    check_files: bool = True,
) -> Settings:
    """Load and validate the settings; raises ConfigError listing every problem.

    With `environment=False` (the demo), `FLESPI_BRIDGE_*` variables are ignored entirely:
    neither settings from them nor `FLESPI_BRIDGE_SECRETS_DIR` nor the default secrets
    directory apply; only `path`, an explicit `secrets_dir` and `overrides` count.
    With `check_files=False` the file options are not checked (a configuration meant for
    another machine); a readable `flespi.token_file` still supplies the token.
    """
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    if environment and secrets_dir is None and os.environ.get(f"{ENV_PREFIX}SECRETS_DIR"):
        secrets_dir = Path(os.environ[f"{ENV_PREFIX}SECRETS_DIR"])
    if environment and secrets_dir is None and DEFAULT_SECRETS_DIR.is_dir():
        secrets_dir = DEFAULT_SECRETS_DIR
    if secrets_dir is not None:
        if not secrets_dir.is_dir():
            raise ConfigError([("--secrets-dir", f"not a directory: {secrets_dir}")])
        data = _merge(data, _read_secrets_dir(secrets_dir))
    if overrides:
        data = _merge(data, overrides)
    try:
        with _environment(environment):
            files = _CHECK_FILES.set(check_files)
            try:
                return Settings(**data)
            finally:
                _CHECK_FILES.reset(files)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def local_tls_context(settings: LocalSettings) -> ssl.SSLContext | None:
    """The TLS context of the local broker connection, or None without `local.tls`."""
    if not settings.tls:
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file else None
    )
    if settings.cert_file and settings.key_file:
        ctx.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    if settings.tls_insecure:
        ctx.check_hostname = False
    return ctx


def flespi_tls_context(settings: FlespiSettings) -> ssl.SSLContext | None:
    """The TLS context of the flespi connection (the server is always verified: system
    trust store unless `flespi.ca_file`), or None without `flespi.tls`."""
    if not settings.tls:
        return None
    return ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file else None
    )


def mask(secret: SecretStr | None) -> str:
    if secret is None:
        return "<not set>"
    return f"<set, {len(secret.get_secret_value())} characters>"


def summary(settings: Settings) -> list[str]:
    """A human summary for `check-config`; secrets appear only masked."""
    f, loc = settings.flespi, settings.local
    devices = "all" if f.devices == "all" else ", ".join(map(str, f.devices))
    lines = [
        f"flespi:  {'mqtts' if f.tls else 'mqtt'}://{f.host}:{f.port} "
        f"client_id={f.client_id} session_expiry={f.session_expiry}s token={mask(f.token)}",
        f"         devices={devices}",
        f"local:   {'mqtts' if loc.tls else 'mqtt'}://{loc.host}:{loc.port} "
        f"client_id={loc.client_id} user={loc.username or '-'} password={mask(loc.password)}",
        f"         base_topic={loc.base_topic} discovery_prefix={loc.discovery_prefix} "
        f"output={loc.output} coalesce_window={loc.coalesce_window}s",
    ]
    ha = settings.homeassistant
    lines.append(
        f"homeassistant: discovery={'on' if ha.discovery else 'off'} "
        f"include={ha.include or 'all'} exclude={ha.exclude or '-'}"
    )
    c = settings.commands
    profiles = ", ".join(f"{k}: {'/'.join(v)}" for k, v in c.profiles.items()) or "none"
    lines.append(
        f"commands: {'read-only' if c.read_only else 'enabled'} transport={c.transport} "
        f"profiles={profiles}"
    )
    m = settings.metrics
    lines.append(
        f"metrics: http://{m.host}:{m.port}/metrics" if m.enabled else "metrics: disabled"
    )
    lines.append(f"log:     level={settings.log.level} format={settings.log.format}")
    return lines
