"""Settings: a TOML file, overridden by `FLESPI_BRIDGE_<SECTION>__<KEY>` environment variables
and by files in a secrets directory (`<section>__<key>`, e.g. `flespi__token`).

Precedence, highest first: environment, explicit `overrides`, secrets directory, TOML file,
defaults (`load(..., environment=False)` leaves the environment out). Every option is
documented in `config.example.toml`.

The sections are in `bridge.config.sections`; file options are checked by `bridge.config.files`:
a file that is set must exist, be a regular file and be readable, whether or not the option
is in use (a wrong path is a mistake waiting for the day TLS is turned on); the TLS material
must also load as PEM (CA bundle, client certificate and its matching, unencrypted key) where
TLS uses it: `flespi.ca_file` with `flespi.tls`, the `local` files with `local.tls`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.config import report
from bridge.config.cluster import ClusterSettings
from bridge.config.files import CHECK_FILES
from bridge.config.profiles import CommandSettings
from bridge.config.sections import (
    FlespiSettings,
    HomeAssistantSettings,
    LocalSettings,
    LogSettings,
    MetricsSettings,
    ReconnectSettings,
    ShutdownSettings,
    StreamSettings,
)
from bridge.exceptions import ConfigError

ENV_PREFIX = "FLESPI_BRIDGE_"
DEFAULT_SECRETS_DIR = Path("/run/secrets/flespi-bridge")
SECRET_FILE_MAX_BYTES = 64 * 1024
# Secrets stripped of surrounding whitespace wherever they come from (an environment variable
# set from a file keeps its trailing newline; `echo` into a secret file adds one).
SECRETS = (("flespi", "token"), ("local", "password"), ("stream", "authorization"))
TOKEN_MISSING = ("missing: set flespi.token, flespi.token_file, "
                 f"{ENV_PREFIX}FLESPI__TOKEN or a secrets-dir file flespi__token")


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
    stream: StreamSettings = Field(default_factory=StreamSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="before")
    @classmethod
    def _strip_secrets(cls, data: Any) -> Any:
        """Every source merged (the environment included): secrets lose surrounding
        whitespace, so `FLESPI_BRIDGE_FLESPI__TOKEN=$(cat token)` with its newline works."""
        if not isinstance(data, dict):
            return data
        stripped = dict(data)
        for section, key in SECRETS:
            values = stripped.get(section)
            if isinstance(values, dict) and isinstance(values.get(key), str):
                stripped[section] = {**values, key: values[key].strip()}
        return stripped

    @field_validator("cluster")
    @classmethod
    def _no_stream_when_split(cls, value: ClusterSettings, info: ValidationInfo
                              ) -> ClusterSettings:
        stream = info.data.get("stream")
        if value.shards > 1 and stream is not None and stream.enabled:
            raise ValueError(
                f"shards = {value.shards} with stream.enabled: flespi pushes the whole fleet "
                "to one URL, so a replica would publish devices another one owns; run the "
                "HTTP stream on a single bridge, or split the fleet over MQTT alone")
        return value

    @model_validator(mode="after")
    def _client_ids_per_shard(self) -> Settings:
        """A split fleet: each replica's client ids end in `-<shard>` (`docs/cluster.md`).
        Set here, once, so that every user of a client id sees the replica's own."""
        c = self.cluster
        if c.shards > 1:
            # frozen models: the one place a section is replaced after validation
            object.__setattr__(self, "flespi", self.flespi.model_copy(
                update={"client_id": c.client_id(self.flespi.client_id)}))
            object.__setattr__(self, "local", self.local.model_copy(
                update={"client_id": c.client_id(self.local.client_id)}))
        return self

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


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The document and its text (the text says on which line a bad value is)."""
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text), text
    except FileNotFoundError:
        raise ConfigError([("--config", f"file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("--config", f"cannot read {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("--config", f"{path} is not UTF-8 text")]) from None
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


def _problems(exc: ValidationError, origins: report.Origins) -> list[tuple[str, str]]:
    token_file_problem = any(
        tuple(err["loc"]) == ("flespi", "token_file") for err in exc.errors()
    )
    problems: list[tuple[str, str]] = []
    for key, reason in report.problems(exc, Settings, origins):
        if reason == "missing" and key == "flespi.token":
            if token_file_problem:
                continue  # the token_file problem says it all
            reason = TOKEN_MISSING
        elif reason == "missing" and key == "flespi":
            reason = ("missing: the bridge needs at least a flespi token. "
                      + ("" if origins.path else "No --config FILE was given; copy "
                         "config.example.toml to config.toml and pass --config config.toml, "
                         "or ") + TOKEN_MISSING.removeprefix("missing: "))
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
    data, text = _read_toml(path) if path is not None else ({}, "")
    secrets: dict[str, Any] = {}
    if environment and secrets_dir is None and os.environ.get(f"{ENV_PREFIX}SECRETS_DIR"):
        secrets_dir = Path(os.environ[f"{ENV_PREFIX}SECRETS_DIR"])
    if environment and secrets_dir is None and DEFAULT_SECRETS_DIR.is_dir():
        secrets_dir = DEFAULT_SECRETS_DIR
    if secrets_dir is not None:
        if not secrets_dir.is_dir():
            raise ConfigError([("--secrets-dir", f"not a directory: {secrets_dir}")])
        secrets = _read_secrets_dir(secrets_dir)
        data = _merge(data, secrets)
    if overrides:
        data = _merge(data, overrides)
    try:
        with _environment(environment):
            files = CHECK_FILES.set(check_files)
            try:
                return Settings(**data)
            finally:
                CHECK_FILES.reset(files)
    except ValidationError as exc:
        origins = report.Origins.of_file(
            path, text, secrets_dir=secrets_dir,
            secrets=frozenset((s, k) for s, keys in secrets.items() for k in keys),
            environment=os.environ if environment else None, env_prefix=ENV_PREFIX)
        raise ConfigError(_problems(exc, origins)) from None


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
        f"homeassistant: discovery={ha.discovery_mode if ha.discovery else 'off'} "
        f"include={ha.include or 'all'} exclude={ha.exclude or '-'}"
    )
    ignored = sum(1 for o in f.overrides.values() if o.ignore)
    lines.append(
        f"parameters: {f.parameters} extra={len(f.extra_parameters)} "
        f"overrides={len(f.overrides) - ignored} ignored={ignored}"
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
    st = settings.stream
    lines.append(
        f"stream:  {'https' if st.tls else 'http'}://{st.host}:{st.port}{st.path} "
        f"authorization={mask(st.authorization)}" if st.enabled else "stream:  disabled"
    )
    lines.append(f"log:     level={settings.log.level} format={settings.log.format}")
    return lines
