"""The Home Assistant add-on: its files and options schema, and the translation of add-on
options + the Supervisor's MQTT service into the bridge's configuration
(bridge/homeassistant/addon.py), checked by the bridge's own configuration loader and,
through the entry point, against a Supervisor stand-in on loopback."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trustme
import yaml
from support import REPO, supervisor_schema, supervisor_stand_in

from bridge.config import settings as config
from bridge.config.profiles import CommandSpec
from bridge.exceptions import ConfigError
from bridge.homeassistant import addon

ADDONS = REPO / "homeassistant-addon"
ADDON = ADDONS / "flespi-bridge"
CONFIG = yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))
SERVICE: dict[str, Any] = {"host": "core-mosquitto", "port": 1883, "ssl": False,
                           "protocol": "3.1.1", "username": "addons",
                           "password": "Supervisor-Generated-Pw"}
TOKEN = "AddonTestToken0123456789abcdefSECRET"

# --- the add-on's files, as the Supervisor checks them (tests/supervisor_schema.py) -------

def test_repository_and_addon_files() -> None:
    repo = yaml.safe_load((ADDONS / "repository.yaml").read_text(encoding="utf-8"))
    supervisor_schema.validate_repository(repo)
    assert {"name", "url", "maintainer"} <= set(repo)
    for name in ("config.yaml", "build.yaml", "Dockerfile", "DOCS.md", "icon.png",
                 "translations/en.yaml"):
        assert (ADDON / name).is_file(), f"{name} missing from the add-on"
    png = (ADDON / "icon.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert width == height == 128, "Home Assistant shows a square 128x128 icon"


def test_config_and_build_pass_the_supervisor_schema() -> None:
    supervisor_schema.validate_config(CONFIG)
    build = yaml.safe_load((ADDON / "build.yaml").read_text(encoding="utf-8"))
    supervisor_schema.validate_build(build, CONFIG["arch"])
    dockerfile = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    assert '"bridge.homeassistant.addon"' in dockerfile
    assert "mqtt:want" in CONFIG["services"] or "mqtt:need" in CONFIG["services"]
    assert CONFIG["watchdog"] == f"http://[HOST]:[PORT:{addon.METRICS_PORT}]/healthz"
    assert f"{addon.METRICS_PORT}/tcp" in CONFIG["ports"]
    assert f"{addon.STREAM_PORT}/tcp" in CONFIG["ports"]
    assert {"type": "ssl"} in CONFIG["map"], "the stream's certificates come from /ssl"


def test_docker_stop_leaves_the_shutdown_grace() -> None:
    """The Supervisor stops the add-on with `docker stop -t <timeout>`: SIGTERM must reach the
    bridge itself (Docker's init, not the base image's s6 /init, which kills a container
    command S6_KILL_GRACETIME = 3 s after it), and the bridge's grace must end before
    Docker's SIGKILL, or offline is never published."""
    assert CONFIG["init"] is True
    assert re.search(r"^ENTRYPOINT \[\]$", (ADDON / "Dockerfile").read_text("utf-8"), re.M)
    sections, _ = addon.bridge_config(options(), SERVICE)
    assert sections["shutdown"]["grace"] + 5 <= CONFIG["timeout"]


def test_options_pass_their_schema() -> None:
    written = supervisor_schema.validate_options(CONFIG["schema"], CONFIG["options"])
    assert written["command_profiles"][2]["setting"] == "upload_interval"
    assert CONFIG["schema"]["token"] == "password", "the token is a password field"
    assert CONFIG["schema"]["mqtt_password"] == "password?"
    assert CONFIG["schema"]["stream_authorization"] == "password?"
    # What a user sets in the UI passes too, the stream included.
    supervisor_schema.validate_options(CONFIG["schema"], options(
        devices=[5537057], discovery_mode="entity", parameters="all", stream=True,
        stream_authorization="Bearer x", stream_path="/hook/flespi",
        stream_certfile="fullchain.pem", stream_keyfile="privkey.pem",
        mqtt_host="192.0.2.10", mqtt_port=8883))


@pytest.mark.parametrize("bad", [
    {"devices": ["x"]}, {"devices": [0]}, {"log_level": "verbose"}, {"base_topic": "a/#"},
    {"discovery": "maybe"}, {"discovery_mode": "both"}, {"parameters": "some"},
    {"surprise": 1}, {"mqtt_port": 70000}, {"stream_authorization": None},
    {"stream_path": "no-slash"},
    {"command_profiles": [{"device_type": "1272", "entity": "x", "component": "switch",
                           "command": "c"}]},
    {"command_profiles": [{"device_type": "1272", "component": "button", "command": "c"}]},
])
def test_the_supervisor_refuses_bad_options(bad: dict[str, Any]) -> None:
    """The ported checks mean something: they refuse what the Supervisor refuses."""
    with pytest.raises(supervisor_schema.Invalid):
        supervisor_schema.validate_options(CONFIG["schema"], {**CONFIG["options"], **bad})


@pytest.mark.parametrize("bad", [
    {"watchdog": "http://localhost:9871/healthz"}, {"arch": ["amd64", "armv7"]},
    {"services": ["mqtt"]}, {"ports": {"9871": 0}}, {"timeout": 5},
    {"schema": {"token": "secret"}}, {"schema": {"devices": [["int"]]}},
])
def test_the_supervisor_refuses_a_bad_config(bad: dict[str, Any]) -> None:
    with pytest.raises(supervisor_schema.Invalid):
        supervisor_schema.validate_config({**CONFIG, **bad})


def test_profiles_offer_what_the_bridge_takes() -> None:
    """Every command-profile field of the bridge (CommandSpec) is an add-on option, but the
    lock's payloads: a number or a string, which an add-on schema cannot say (the bridge's
    defaults 1 / 0 stand)."""
    profile = CONFIG["schema"]["command_profiles"][0]
    bridge_fields = set(CommandSpec.model_fields) - {"payload_lock", "payload_unlock"}
    assert set(profile) - {"device_type", "entity"} == bridge_fields
    assert {*addon.PROFILE_KEYS, "properties"} == bridge_fields


def test_every_option_is_translated_and_described() -> None:
    translations = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text("utf-8"))
    supervisor_schema.validate_translations(translations)
    configuration = translations["configuration"]
    assert set(configuration) == set(CONFIG["schema"])
    for option, entry in configuration.items():
        assert entry.get("description"), f"translations/en.yaml: {option} has no description"
    fields = configuration["command_profiles"]["fields"]
    assert set(fields) == set(CONFIG["schema"]["command_profiles"][0])
    assert set(translations["network"]) == set(CONFIG["ports"])
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    for option in [*CONFIG["schema"], *CONFIG["schema"]["command_profiles"][0]]:
        assert f"`{option}`" in docs, f"DOCS.md does not describe {option}"


# --- the translation ----------------------------------------------------------------------

def options(**changes: Any) -> dict[str, Any]:
    return {**CONFIG["options"], "token": TOKEN, **changes}


def load(sections: dict[str, dict[str, Any]], secrets: dict[str, str], tmp_path: Path
         ) -> config.Settings:
    """The bridge's own loader on what the add-on writes (TOML) and passes (environment)."""
    path = tmp_path / "addon.toml"
    path.write_text(tomli_w.dumps(sections), encoding="utf-8")
    overrides: dict[str, dict[str, Any]] = {}
    for name, value in secrets.items():  # FLESPI_BRIDGE_<SECTION>__<KEY>, as the loader reads
        section, key = name.removeprefix("FLESPI_BRIDGE_").lower().split("__")
        overrides.setdefault(section, {})[key] = value
    return config.load(path, overrides=overrides, environment=False)


def test_defaults_with_the_supervisor_broker(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(options(), SERVICE)
    assert TOKEN not in tomli_w.dumps(sections)
    assert SERVICE["password"] not in tomli_w.dumps(sections)
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


def test_discovery_layout_parameters_and_settings_reach_the_bridge(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(options(discovery_mode="entity", parameters="all"),
                                            SERVICE)
    settings = load(sections, secrets, tmp_path)
    assert settings.homeassistant.discovery_mode == "entity"
    assert settings.flespi.parameters == "all"
    interval = settings.commands.profiles["1272"]["upload_interval"]
    assert interval.setting == "upload_interval"  # Home Assistant shows the device's setting
    assert settings.commands.settings == ["upload_interval"]
    assert settings.commands.profiles["1272"]["restart"].label == "Restart"
    default = load(*addon.bridge_config(options(), SERVICE), tmp_path)
    assert default.homeassistant.discovery_mode == "device"
    assert default.flespi.parameters == "catalogue"
    assert default.stream.enabled is False


def test_stream_with_tls_from_ssl(tmp_path: Path) -> None:
    ssl = tmp_path / "ssl"
    ssl.mkdir()
    leaf = trustme.CA().issue_cert("ha.example.test")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(ssl / "fullchain.pem"))
    leaf.private_key_pem.write_to_path(str(ssl / "privkey.pem"))
    authorization = "Bearer StreamAuthorizationSECRET0123456789"
    sections, secrets = addon.bridge_config(
        options(stream=True, stream_authorization=authorization, stream_path="/hook",
                stream_certfile="fullchain.pem", stream_keyfile="privkey.pem"),
        SERVICE, ssl_dir=ssl)
    assert authorization not in tomli_w.dumps(sections)
    settings = load(sections, secrets, tmp_path)
    stream = settings.stream
    assert (stream.enabled, stream.host, stream.port, stream.path) == (
        True, "0.0.0.0", addon.STREAM_PORT, "/hook")
    assert (stream.cert_file, stream.key_file) == (ssl / "fullchain.pem", ssl / "privkey.pem")
    assert stream.tls
    assert stream.authorization is not None
    assert stream.authorization.get_secret_value() == authorization


def test_stream_without_tls_or_authorization(tmp_path: Path) -> None:
    sections, secrets = addon.bridge_config(
        options(stream=True, stream_authorization="Bearer x"), SERVICE)
    stream = load(sections, secrets, tmp_path).stream
    assert (stream.enabled, stream.path, stream.tls) == (True, "/flespi/stream", False)
    with pytest.raises(addon.AddonError, match="stream_authorization"):
        addon.bridge_config(options(stream=True), SERVICE)
    with pytest.raises(addon.AddonError, match="stream_keyfile"):
        addon.bridge_config(options(stream=True, stream_authorization="Bearer x",
                                    stream_certfile="fullchain.pem"), SERVICE)
    # A certificate missing from /ssl is the bridge's clear configuration error.
    sections, secrets = addon.bridge_config(
        options(stream=True, stream_authorization="Bearer x", stream_certfile="none.pem",
                stream_keyfile="none.key"), SERVICE, ssl_dir=tmp_path)
    with pytest.raises(ConfigError, match="cert_file"):
        load(sections, secrets, tmp_path)


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
    with supervisor_stand_in.supervisor(SERVICE) as stand_in:
        yield stand_in.url, stand_in.seen


def test_entry_point_asks_the_supervisor_and_hands_over(
        supervisor: tuple[str, list[str]], tmp_path: Path) -> None:
    url, seen = supervisor
    (tmp_path / "options.json").write_text(json.dumps(options()), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.homeassistant.addon",
         "--options", str(tmp_path / "options.json"),
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
        [sys.executable, "-m", "bridge.homeassistant.addon",
         "--options", str(tmp_path / "options.json"),
         "--config-out", str(tmp_path / "bridge.toml"), "--check"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Mosquitto broker add-on" in proc.stderr


def test_the_bridge_does_not_inherit_the_supervisor_token() -> None:
    env = addon.bridge_environment(
        {"PATH": "/usr/bin", "SUPERVISOR_TOKEN": "supervisor-token",
         "FLESPI_BRIDGE_LOCAL__HOST": "stale"}, {"FLESPI_BRIDGE_FLESPI__TOKEN": TOKEN})
    assert env == {"PATH": "/usr/bin", "FLESPI_BRIDGE_FLESPI__TOKEN": TOKEN}


def test_entry_point_drops_the_supervisor_token_before_the_bridge_runs(
        supervisor: tuple[str, list[str]], tmp_path: Path) -> None:
    """The add-on reads the MQTT service with SUPERVISOR_TOKEN, then execs the bridge (same
    PID) without it. A sitecustomize on PYTHONPATH records, in both programs, whether the
    variable is there."""
    url, seen = supervisor
    hook = tmp_path / "hook"
    hook.mkdir()
    record = tmp_path / "record"
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"with open({str(record)!r}, 'a') as fh:\n"
        "    fh.write(f\"{os.getpid()} {' '.join(sys.orig_argv[1:3])} "
        "{'SUPERVISOR_TOKEN' in os.environ}\\n\")\n", encoding="utf-8")
    (tmp_path / "options.json").write_text(json.dumps(options()), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.homeassistant.addon",
         "--options", str(tmp_path / "options.json"),
         "--config-out", str(tmp_path / "bridge.toml"), "--check"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{hook}:{REPO}", "SUPERVISOR_URL": url,
             "SUPERVISOR_TOKEN": "supervisor-token"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert seen == ["Bearer supervisor-token"]
    lines = [line.split() for line in record.read_text(encoding="utf-8").splitlines()]
    assert [line[1:] for line in lines] == [["-m", "bridge.homeassistant.addon", "True"],
                                            ["-m", "bridge", "False"]]
    assert lines[0][0] == lines[1][0], "the bridge replaced the add-on's process"
