"""Configuration: TOML file, environment overrides, secrets directory, check-config."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from support import REPO
from support.helpers import PYTHON, TOKEN, bridge_env

from bridge.config import settings as config
from bridge.exceptions import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = bridge_env()
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "bridge", "check-config", *args], capture_output=True,
                          text=True, env=full_env, timeout=60)


def test_defaults_from_a_minimal_file(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, f'[flespi]\ntoken = "{TOKEN}"\n'))
    assert (s.flespi.host, s.flespi.port, s.flespi.tls) == ("mqtt.flespi.io", 8883, True)
    assert s.flespi.client_id == "flespi-bridge"
    assert s.flespi.devices == "all"
    assert s.flespi.use_comma_lists
    assert (s.local.base_topic, s.local.discovery_prefix) == ("flespi", "homeassistant")
    assert s.flespi.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(s)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f'[flespi]\ntoken = "{TOKEN}"\ndevices = [1, 2]\n[local]\nport = 1883\n')
    monkeypatch.setenv("FLESPI_BRIDGE_LOCAL__PORT", "11883")
    monkeypatch.setenv("FLESPI_BRIDGE_FLESPI__DEVICES", "[7]")
    monkeypatch.setenv("FLESPI_BRIDGE_LOG__LEVEL", "debug")
    s = config.load(path)
    assert s.local.port == 11883
    assert s.flespi.devices == [7]
    assert s.log.level == "DEBUG"


def test_secrets_dir_supplies_the_token(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "flespi__token").write_text(TOKEN + "\n")
    (secrets / "local__password").write_text("broker-pass")
    (secrets / "..data").mkdir()  # Kubernetes' own entries are ignored
    s = config.load(write(tmp_path, "[local]\nusername = \"bridge\"\n"), secrets_dir=secrets)
    assert s.flespi.token.get_secret_value() == TOKEN
    assert s.local.password is not None
    assert s.local.password.get_secret_value() == "broker-pass"


def test_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    s = config.load(write(tmp_path, f'[flespi]\ntoken_file = "{tmp_path / "token"}"\n'))
    assert s.flespi.token.get_secret_value() == TOKEN


def test_every_problem_is_listed_with_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, """
[flespi]
port = "eighty"
devices = "some"

[local]
qos = 2
colour = "blue"

[mqtt]
host = "x"
""")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    keys = dict(err.value.problems)
    assert set(keys) >= {"flespi.token", "flespi.port", "local.qos", "local.colour", "mqtt"}
    assert "missing" in keys["flespi.token"]
    assert keys["mqtt"] == f"unknown section ({path}, line 10)"
    assert keys["local.colour"] == f"unknown option ({path}, line 8)"


def test_check_config_ok_masks_the_token(tmp_path: Path) -> None:
    path = write(tmp_path, f'[flespi]\ntoken = "{TOKEN}"\n')
    result = check_config("--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok\n")
    assert f"token=<set, {len(TOKEN)} characters>" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_check_config_broken_file_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[flespi]\nport = "x"\n[nonsense]\na = 1\n')
    result = check_config("--config", str(path))
    assert result.returncode == 2
    assert "3 problem(s)" in result.stderr
    for key in ("flespi.token:", "flespi.port:", "nonsense: unknown section"):
        assert key in result.stderr


def test_check_config_errors_never_echo_the_token(tmp_path: Path) -> None:
    # a bad token_file path next to a token set by environment: no error shows the token
    path = write(tmp_path, f'[flespi]\nport = 0\ntoken_file = "{tmp_path / "gone"}"\n')
    result = check_config("--config", str(path), env={"FLESPI_BRIDGE_FLESPI__TOKEN": TOKEN})
    assert result.returncode == 2
    assert "2 problem(s)" in result.stderr
    assert "flespi.port" in result.stderr
    assert f"flespi.token_file: file not found: {tmp_path / 'gone'}" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_check_config_missing_and_invalid_files(tmp_path: Path) -> None:
    result = check_config("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "file not found" in result.stderr
    bad = write(tmp_path, "[flespi\n")
    result = check_config("--config", str(bad))
    assert result.returncode == 2
    assert "invalid TOML" in result.stderr


def _fields(model: type) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, field in config.Settings.model_fields.items():
        assert field.annotation is not None
        fields[name] = list(field.annotation.model_fields)
    return fields


def test_example_config_documents_every_option_and_loads() -> None:
    example = REPO / "config.example.toml"
    text = example.read_text()
    data = tomllib.loads(text)
    # Every option appears in the example (commented out when it has no default).
    for section, keys in _fields(config.Settings).items():
        assert f"[{section}]" in text, section
        for key in keys:
            assert (f"\n{key} =" in text or f"\n# {key} =" in text
                    or f"[{section}.{key}." in text), f"{section}.{key}"
    settings = config.load(overrides={**data, "flespi": {**data["flespi"], "token": TOKEN}})
    defaults = config.load(overrides={"flespi": {"token": TOKEN}})
    # the example shows the defaults, plus the command profile of the reference scooter
    assert settings.model_copy(update={"commands": defaults.commands}) == defaults
    assert sorted(settings.commands.profiles["1272"]) == ["lock", "restart", "upload_interval"]
    lock = settings.commands.profiles["1272"]["lock"]
    assert (lock.command, lock.value_property, lock.state_attribute) == (
        "setting.r0.set", "lock", "locked")


# -- the secrets directory (docs/configuration.md) --------------------------------------------

def secrets_dir(tmp_path: Path, files: dict[str, str], name: str = "secrets") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    for key, value in files.items():
        (directory / key).write_text(value)
    return directory


def test_precedence_environment_secrets_file_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"""
[flespi]
token = "{TOKEN}"
[local]
host = "from-file"
port = 1111
username = "file-user"
client_id = "file-id"
""")
    secrets = secrets_dir(tmp_path, {"local__host": "from-secret", "local__port": "2222",
                                     "local__username": "secret-user"})
    monkeypatch.setenv("FLESPI_BRIDGE_LOCAL__HOST", "from-env")
    s = config.load(path, secrets_dir=secrets)
    assert s.local.host == "from-env"              # environment > secrets directory
    assert s.local.port == 2222                    # secrets directory > file
    assert s.local.username == "secret-user"
    assert s.local.client_id == "file-id"          # file > defaults
    assert s.local.keepalive == 60                 # defaults
    assert s.flespi.token.get_secret_value() == TOKEN


def test_the_environment_wins_over_load_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    # as the module docstring says (the demo passes environment=False for that reason)
    monkeypatch.setenv("FLESPI_BRIDGE_LOCAL__HOST", "from-env")
    s = config.load(overrides={"flespi": {"token": TOKEN}, "local": {"host": "override"}})
    assert s.local.host == "from-env"
    s = config.load(overrides={"flespi": {"token": TOKEN}, "local": {"host": "override"}},
                    environment=False)
    assert s.local.host == "override"


def test_secrets_dir_from_the_environment_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_env = secrets_dir(tmp_path, {"flespi__token": TOKEN + "-env"}, "by-env")
    by_arg = secrets_dir(tmp_path, {"flespi__token": TOKEN + "-arg"}, "by-arg")
    monkeypatch.setattr(config, "DEFAULT_SECRETS_DIR", tmp_path / "no-default")
    monkeypatch.setenv("FLESPI_BRIDGE_SECRETS_DIR", str(by_env))
    assert config.load().flespi.token.get_secret_value() == TOKEN + "-env"
    # an explicit --secrets-dir wins over the variable
    assert config.load(secrets_dir=by_arg).flespi.token.get_secret_value() == TOKEN + "-arg"
    monkeypatch.setenv("FLESPI_BRIDGE_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as err:
        config.load()
    assert err.value.problems == [("--secrets-dir", f"not a directory: {tmp_path / 'missing'}")]


def test_the_default_secrets_dir_is_used_when_it_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_SECRETS_DIR", tmp_path / "run-secrets")
    with pytest.raises(ConfigError):
        config.load()  # no token anywhere
    secrets_dir(tmp_path, {"flespi__token": TOKEN}, "run-secrets")
    assert config.load().flespi.token.get_secret_value() == TOKEN


def test_check_config_with_the_secrets_dir_variable(tmp_path: Path) -> None:
    secrets = secrets_dir(tmp_path, {"flespi__token": TOKEN + "\n", "local__password": "pw"})
    result = check_config("--config", str(write(tmp_path, "[local]\nusername = \"u\"\n")),
                          env={"FLESPI_BRIDGE_SECRETS_DIR": str(secrets)})
    assert result.returncode == 0, result.stderr
    assert f"token=<set, {len(TOKEN)} characters>" in result.stdout
    assert "password=<set, 2 characters>" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_kubernetes_secret_volume_layout(tmp_path: Path) -> None:
    """A mounted Secret: the keys are symlinks through `..data` to a timestamped directory;
    `..data`, the timestamped directory and other dot-files are not options."""
    secrets = tmp_path / "secrets"
    stamp = secrets / "..2024_06_01_12_00_00.123456789"
    stamp.mkdir(parents=True)
    (stamp / "flespi__token").write_text(TOKEN)
    (stamp / "local__password").write_text("broker-pass\n")
    (secrets / "..data").symlink_to(stamp.name)
    for key in ("flespi__token", "local__password"):
        (secrets / key).symlink_to(f"..data/{key}")
    (secrets / ".local__host").write_text("hidden-files-are-ignored")
    (secrets / "README").write_text("no __ in the name: not an option")
    s = config.load(secrets_dir=secrets)
    assert s.flespi.token.get_secret_value() == TOKEN
    assert s.local.password is not None
    assert s.local.password.get_secret_value() == "broker-pass"
    assert s.local.host == "localhost"


def test_an_unknown_secret_is_an_unknown_option(tmp_path: Path) -> None:
    secrets = secrets_dir(tmp_path, {"flespi__token": TOKEN, "local__colour": "blue"})
    with pytest.raises(ConfigError) as err:
        config.load(secrets_dir=secrets)
    assert dict(err.value.problems) == {
        "local.colour": f"unknown option (secrets file {secrets / 'local__colour'})"}


def test_a_too_large_secret_file_is_refused(tmp_path: Path) -> None:
    secrets = secrets_dir(tmp_path, {"flespi__token": TOKEN})
    (secrets / "local__password").write_text("x" * config.SECRET_FILE_MAX_BYTES)
    s = config.load(secrets_dir=secrets)  # at the limit: accepted
    assert s.local.password is not None
    (secrets / "local__password").write_text("x" * (config.SECRET_FILE_MAX_BYTES + 1))
    with pytest.raises(ConfigError) as err:
        config.load(secrets_dir=secrets)
    assert err.value.problems == [
        ("local.password", f"secret file {secrets / 'local__password'} is too large")]
    result = check_config("--secrets-dir", str(secrets))
    assert result.returncode == 2
    assert "local.password: secret file" in result.stderr
    assert "is too large" in result.stderr


def test_secrets_from_the_environment_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    """`FLESPI_BRIDGE_FLESPI__TOKEN=$(cat token-file)` keeps no newline, but `export
    X="$(cat f)\n"` or a Kubernetes env from a file with one does: the secret is used without
    it (flespi would refuse a token with a newline in it), and never shown."""
    monkeypatch.setenv("FLESPI_BRIDGE_FLESPI__TOKEN", f"{TOKEN}\n")
    monkeypatch.setenv("FLESPI_BRIDGE_LOCAL__PASSWORD", "  broker-pw\r\n")
    monkeypatch.setenv("FLESPI_BRIDGE_STREAM__AUTHORIZATION", "Bearer stream-secret\n")
    settings = config.load()
    assert settings.flespi.token.get_secret_value() == TOKEN
    assert settings.local.password is not None
    assert settings.local.password.get_secret_value() == "broker-pw"
    assert settings.stream.authorization is not None
    assert settings.stream.authorization.get_secret_value() == "Bearer stream-secret"
    summary = "\n".join(config.summary(settings))
    assert f"token=<set, {len(TOKEN)} characters>" in summary
    assert TOKEN not in summary


def test_check_config_with_a_token_env_newline(tmp_path: Path) -> None:
    result = check_config(env={"FLESPI_BRIDGE_FLESPI__TOKEN": f"{TOKEN}\n"})
    assert result.returncode == 0, result.stderr
    assert f"token=<set, {len(TOKEN)} characters>" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
