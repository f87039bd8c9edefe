"""The Home Assistant add-on: its files and options schema, and the translation of add-on
options + the Supervisor's MQTT service into the bridge's configuration (bridge/addon.py),
checked by the bridge's own configuration loader and, through the entry point, against a
Supervisor stand-in on loopback."""

from __future__ import annotations

import http.server
import json
import re
import struct
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import addon, config, tomlwrite
from bridge.exceptions import ConfigError

REPO = Path(__file__).resolve().parent.parent
ADDONS = REPO / "homeassistant-addon"
ADDON = ADDONS / "flespi-bridge"
CONFIG = yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
    "version"]
SERVICE: dict[str, Any] = {"host": "core-mosquitto", "port": 1883, "ssl": False,
                           "protocol": "3.1.1", "username": "addons",
                           "password": "Supervisor-Generated-Pw"}
TOKEN = "AddonTestToken0123456789abcdefSECRET"

# The Supervisor's option types (developers.home-assistant.io, add-on configuration).
SIMPLE_TYPES = {"str", "bool", "int", "float", "email", "url", "password", "port", "device"}
TYPE = re.compile(r"^(?:(?:str|int|float)(?:\((-?[\d.]*),(-?[\d.]*)\))?|bool|email|url|password"
                  r"|port|device(?:\(.*\))?|match\((.+)\)|list\(([^|()]+(?:\|[^|()]+)*)\))\??$")


# --- the add-on's files -------------------------------------------------------------------

def test_repository_and_addon_files() -> None:
    repo = yaml.safe_load((ADDONS / "repository.yaml").read_text(encoding="utf-8"))
    assert {"name", "url", "maintainer"} <= set(repo)
    for name in ("config.yaml", "build.yaml", "Dockerfile", "DOCS.md", "icon.png",
                 "translations/en.yaml"):
        assert (ADDON / name).is_file(), f"{name} missing from the add-on"
    png = (ADDON / "icon.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert width == height == 128, "Home Assistant shows a square 128x128 icon"


def test_config_yaml_required_keys_and_version() -> None:
    for key in ("name", "version", "slug", "description", "arch"):
        assert key in CONFIG, f"config.yaml has no {key}"
    assert re.fullmatch(r"[a-z0-9_]+", CONFIG["slug"])
    assert CONFIG["version"] == VERSION, "the add-on version follows the package"
    assert f"BRIDGE_VERSION={VERSION}" in (ADDON / "Dockerfile").read_text(encoding="utf-8")
    assert set(CONFIG["arch"]) <= {"amd64", "aarch64", "armv7", "armhf", "i386"}
    build = yaml.safe_load((ADDON / "build.yaml").read_text(encoding="utf-8"))
    assert set(build["build_from"]) == set(CONFIG["arch"])
    assert "mqtt:want" in CONFIG["services"] or "mqtt:need" in CONFIG["services"]
    assert CONFIG["watchdog"] == f"http://[HOST]:[PORT:{addon.METRICS_PORT}]/healthz"
    assert f"{addon.METRICS_PORT}/tcp" in CONFIG["ports"]
    assert "bridge.addon" in (ADDON / "Dockerfile").read_text(encoding="utf-8")


def _check_type(spec: str, value: Any, where: str) -> None:
    match = TYPE.fullmatch(spec)
    assert match, f"{where}: {spec!r} is not a Supervisor option type"
    base = spec.rstrip("?").split("(")[0]
    if value is None:
        return
    if base in ("str", "password", "email", "url", "device"):
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    elif base == "bool":
        assert isinstance(value, bool), where
    elif base in ("int", "port"):
        assert isinstance(value, int), where
        assert not isinstance(value, bool), where
        low = match[1] if base == "int" else "1"
        if low:
            assert value >= float(low), where
    elif base == "float":
        assert isinstance(value, int | float), where
    elif base == "match":
        assert isinstance(value, str), where
        assert re.fullmatch(match[3], value), f"{where}: {value!r} does not match {match[3]}"
    elif base == "list":
        assert value in match[4].split("|"), f"{where}: {value!r} not in {match[4]}"


def _check(schema: Any, value: Any, where: str) -> None:
    if isinstance(schema, dict):
        assert isinstance(value, dict), f"{where}: not an object"
        for key, spec in schema.items():
            if key in value:
                _check(spec, value[key], f"{where}.{key}")
            else:
                assert isinstance(spec, str), f"{where}.{key} is required but has no default"
                assert spec.endswith("?"), f"{where}.{key} is required but has no default"
        assert not set(value) - set(schema), f"{where}: unknown {set(value) - set(schema)}"
    elif isinstance(schema, list):
        assert len(schema) == 1, where
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            _check(schema[0], item, f"{where}[{i}]")
    else:
        _check_type(schema, value, where)


def test_options_match_their_schema() -> None:
    _check(CONFIG["schema"], CONFIG["options"], "options")
    assert CONFIG["schema"]["token"] == "password", "the token is a password field"
    assert CONFIG["schema"]["mqtt_password"] == "password?"


def test_schema_check_catches_bad_options() -> None:
    """The validator above means something: it rejects what the Supervisor would."""
    for bad in ({"devices": ["x"]}, {"log_level": "verbose"}, {"base_topic": "a/#"},
                {"discovery": "yes"}, {"surprise": 1}):
        with pytest.raises(AssertionError):
            _check(CONFIG["schema"], {**CONFIG["options"], **bad}, "options")


def test_every_option_is_translated_and_described() -> None:
    translations = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text("utf-8"))
    assert set(translations["configuration"]) == set(CONFIG["schema"])
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    for option in CONFIG["schema"]:
        assert f"`{option}`" in docs, f"DOCS.md does not describe {option}"


# --- the translation ----------------------------------------------------------------------

def options(**changes: Any) -> dict[str, Any]:
    return {**CONFIG["options"], "token": TOKEN, **changes}


def load(sections: dict[str, dict[str, Any]], secrets: dict[str, str], tmp_path: Path
         ) -> config.Settings:
    """The bridge's own loader on what the add-on writes (TOML) and passes (environment)."""
    path = tmp_path / "addon.toml"
    path.write_text(tomlwrite.dumps(sections), encoding="utf-8")
    overrides: dict[str, dict[str, Any]] = {"flespi": {"token": secrets[
        "FLESPI_BRIDGE_FLESPI__TOKEN"]}}
    if "FLESPI_BRIDGE_LOCAL__PASSWORD" in secrets:
        overrides["local"] = {"password": secrets["FLESPI_BRIDGE_LOCAL__PASSWORD"]}
    return config.load(path, overrides=overrides, environment=False)


def test_defaults_with_the_supervisor_broker(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(options(), SERVICE)
    assert TOKEN not in tomlwrite.dumps(sections)
    assert SERVICE["password"] not in tomlwrite.dumps(sections)
    settings = load(sections, secrets, tmp_path)
    assert settings.flespi.token.get_secret_value() == TOKEN
    assert (settings.local.host, settings.local.port) == ("core-mosquitto", 1883)
    assert settings.local.username == "addons"
    assert settings.local.password is not None
    assert settings.local.password.get_secret_value() == SERVICE["password"]
    assert settings.local.tls is False
    assert settings.flespi.devices == "all"
    assert settings.local.base_topic == "flespi"
    assert settings.homeassistant.discovery is True
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", addon.METRICS_PORT)
    lock = settings.commands.profiles["1272"]["lock"]
    assert (lock.component, lock.command, lock.value_property) == ("lock", "setting.r0.set",
                                                                   "lock")
    assert lock.properties == {"key_time": 1, "user_id": ""}
    interval = settings.commands.profiles["1272"]["upload_interval"]
    assert (interval.min, interval.max, interval.unit) == (5, 3600, "s")


def test_options_reach_the_bridge(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(
        options(devices=[5537057, 42], base_topic="fleet", discovery=False, read_only=True,
                discovery_prefix="ha", log_level="debug", command_profiles=[]), SERVICE)
    settings = load(sections, secrets, tmp_path)
    assert settings.flespi.devices == [5537057, 42]
    assert settings.local.base_topic == "fleet"
    assert settings.local.discovery_prefix == "ha"
    assert settings.homeassistant.discovery is False
    assert settings.commands.read_only is True
    assert settings.commands.profiles == {}
    assert settings.log.level == "DEBUG"


def test_own_broker_overrides_the_supervisor(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(
        options(mqtt_host="192.0.2.10", mqtt_port=8883, mqtt_username="me",
                mqtt_password="MyBrokerPw", mqtt_tls=True), SERVICE)
    settings = load(sections, secrets, tmp_path)
    assert (settings.local.host, settings.local.port, settings.local.tls) == (
        "192.0.2.10", 8883, True)
    assert settings.local.username == "me"
    assert secrets["FLESPI_BRIDGE_LOCAL__PASSWORD"] == "MyBrokerPw"


def test_no_token_or_no_broker_is_a_clear_error() -> None:
    with pytest.raises(addon.AddonError, match="token"):
        addon.bridge_config({**CONFIG["options"]}, SERVICE)
    with pytest.raises(addon.AddonError, match="Mosquitto broker add-on"):
        addon.bridge_config(options(), None)
    with pytest.raises(addon.AddonError, match="properties"):
        addon.bridge_config(options(command_profiles=[
            {"device_type": "default", "entity": "lock", "component": "lock",
             "command": "x", "value_property": "lock", "properties": "{not json"}]), SERVICE)


def test_bad_profile_is_refused_by_the_bridge(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(options(command_profiles=[
        {"device_type": "default", "entity": "lock", "component": "lock",
         "command": "setting.r0.set"}]), SERVICE)  # a lock needs value_property
    with pytest.raises(ConfigError, match="value_property"):
        load(sections, secrets, tmp_path)


# --- the entry point, against a Supervisor stand-in ---------------------------------------

@pytest.fixture
def supervisor() -> Iterator[tuple[str, list[str]]]:
    """`GET /services/mqtt` as the Supervisor answers it; records the Authorization seen."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            ok = self.path == "/services/mqtt"
            body = json.dumps({"result": "ok", "data": SERVICE} if ok else
                              {"result": "error", "message": "no"}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_entry_point_asks_the_supervisor_and_hands_over(
        supervisor: tuple[str, list[str]], tmp_path: Path) -> None:
    url, seen = supervisor
    (tmp_path / "options.json").write_text(json.dumps(options()), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.addon", "--options", str(tmp_path / "options.json"),
         "--config-out", str(tmp_path / "bridge.toml"), "--check"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SUPERVISOR_URL": url,
             "SUPERVISOR_TOKEN": "supervisor-token"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert seen == ["Bearer supervisor-token"]
    assert proc.stdout.startswith("ok")
    assert "core-mosquitto:1883" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    assert TOKEN not in (tmp_path / "bridge.toml").read_text(encoding="utf-8")


def test_entry_point_without_a_broker_says_so(tmp_path: Path) -> None:
    (tmp_path / "options.json").write_text(json.dumps(options()), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.addon", "--options", str(tmp_path / "options.json"),
         "--config-out", str(tmp_path / "bridge.toml"), "--check"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Mosquitto broker add-on" in proc.stderr
