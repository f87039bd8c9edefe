"""The Home Assistant add-on's start: add-on options + the Supervisor's MQTT service -> the
bridge's configuration, then `flespi-bridge run`.

`bridge_config(options, mqtt_service)` is the whole translation (pure); `main()` reads
/data/options.json, asks the Supervisor for the `mqtt` service (`GET http://supervisor/
services/mqtt` with the add-on's SUPERVISOR_TOKEN, what `bashio::services mqtt` does) unless
the options name a broker, writes the configuration without secrets and replaces itself with
`flespi-bridge run`, the secrets (flespi token, broker password, stream authorization)
passed in the environment, and SUPERVISOR_TOKEN dropped from it (`bridge_environment`).

The add-on offers what a Home Assistant user tunes; everything else keeps the bridge's
defaults (`docs/configuration.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

OPTIONS_FILE = Path("/data/options.json")
SUPERVISOR_URL = "http://supervisor"
METRICS_PORT = 9871  # config.yaml's watchdog and ports use the same
STREAM_PORT = 9872  # config.yaml's ports
SSL_DIR = Path("/ssl")  # config.yaml maps Home Assistant's certificates here (read-only)
SHUTDOWN_GRACE = 10.0  # seconds; config.yaml's `timeout` (when Docker kills) is longer
PROFILE_KEYS = ("component", "command", "value_property", "state_attribute", "min", "max",
                "step", "unit", "label", "setting")


class AddonError(Exception):
    """Options or the Supervisor's answer that cannot make a configuration."""


def _profiles(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    profiles: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in entries:
        spec = {k: entry[k] for k in PROFILE_KEYS if entry.get(k) not in (None, "")}
        raw = entry.get("properties") or "{}"
        try:
            properties = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise AddonError(f"command_profiles {entry.get('entity')}: properties is not "
                             f"JSON: {exc}") from None
        if not isinstance(properties, dict):
            raise AddonError(f"command_profiles {entry.get('entity')}: properties must be a "
                             "JSON object")
        if properties:
            spec["properties"] = properties
        device_type = str(entry.get("device_type", "default"))
        profiles.setdefault(device_type, {})[str(entry["entity"])] = spec
    return profiles


def bridge_config(options: Mapping[str, Any], mqtt_service: Mapping[str, Any] | None,
                  ssl_dir: Path = SSL_DIR
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(configuration sections, secret environment) for `flespi-bridge run`.

    The broker: the options' `mqtt_host` (with `mqtt_port`, `mqtt_username`, `mqtt_password`,
    `mqtt_tls`) when set, else the Supervisor's `mqtt` service. Secrets (the flespi token, the
    broker password, the stream's authorization) go into the environment, never into the
    configuration file. `ssl_dir` holds the stream's certificate files."""
    token = str(options.get("token") or "")
    if not token:
        raise AddonError("set the add-on option `token` (your flespi token)")
    if options.get("mqtt_host"):
        broker = {"host": options["mqtt_host"], "port": options.get("mqtt_port") or 1883,
                  "username": options.get("mqtt_username"),
                  "password": options.get("mqtt_password"),
                  "tls": bool(options.get("mqtt_tls", False))}
    elif mqtt_service:
        broker = {"host": mqtt_service["host"], "port": mqtt_service.get("port", 1883),
                  "username": mqtt_service.get("username"),
                  "password": mqtt_service.get("password"),
                  "tls": bool(mqtt_service.get("ssl", False))}
    else:
        raise AddonError("no MQTT broker: install the Mosquitto broker add-on, or set "
                         "`mqtt_host` in the add-on options")
    devices = list(options.get("devices") or [])
    local: dict[str, Any] = {"host": str(broker["host"]), "port": int(broker["port"]),
                             "tls": broker["tls"],
                             "base_topic": options.get("base_topic") or "flespi",
                             "discovery_prefix": options.get("discovery_prefix")
                             or "homeassistant",
                             "client_id": "flespi-bridge-addon"}
    if broker["username"]:
        local["username"] = str(broker["username"])
    sections: dict[str, dict[str, Any]] = {
        "flespi": {"devices": [int(d) for d in devices] if devices else "all",
                   "parameters": str(options.get("parameters") or "catalogue")},
        "local": local,
        "homeassistant": {"discovery": bool(options.get("discovery", True)),
                          "discovery_mode": str(options.get("discovery_mode") or "device")},
        "commands": {"read_only": bool(options.get("read_only", False))},
        # The Supervisor's watchdog reaches /healthz from outside the add-on's container.
        "metrics": {"host": "0.0.0.0", "port": METRICS_PORT},
        "shutdown": {"grace": SHUTDOWN_GRACE},
        "log": {"level": str(options.get("log_level") or "info").upper()},
    }
    profiles = _profiles(options.get("command_profiles") or [])
    if profiles:
        sections["commands"]["profiles"] = profiles
    secrets = {"FLESPI_BRIDGE_FLESPI__TOKEN": token}
    if broker["password"]:
        secrets["FLESPI_BRIDGE_LOCAL__PASSWORD"] = str(broker["password"])
    if options.get("stream"):
        sections["stream"], authorization = _stream(options, ssl_dir)
        secrets["FLESPI_BRIDGE_STREAM__AUTHORIZATION"] = authorization
    return sections, secrets


def _stream(options: Mapping[str, Any], ssl_dir: Path) -> tuple[dict[str, Any], str]:
    """The HTTP stream's listener (section, authorization): the container's port 9872, TLS
    from the certificate files named relative to /ssl (Home Assistant's convention)."""
    authorization = str(options.get("stream_authorization") or "")
    if not authorization:
        raise AddonError("the option `stream` needs `stream_authorization` (the exact "
                         "Authorization header your flespi stream sends)")
    section: dict[str, Any] = {"enabled": True, "host": "0.0.0.0", "port": STREAM_PORT}
    if options.get("stream_path"):
        section["path"] = str(options["stream_path"])
    certfile, keyfile = options.get("stream_certfile"), options.get("stream_keyfile")
    if bool(certfile) != bool(keyfile):
        raise AddonError("set both `stream_certfile` and `stream_keyfile` (files in /ssl), "
                         "or neither")
    if certfile and keyfile:
        section["cert_file"] = str(ssl_dir / str(certfile))
        section["key_file"] = str(ssl_dir / str(keyfile))
    return section, authorization


def mqtt_service(url: str, token: str | None) -> dict[str, Any] | None:
    """The Supervisor's `mqtt` service (host, port, ssl, username, password), None when no
    add-on provides it or there is no Supervisor (no token)."""
    if not token:
        return None
    request = urllib.request.Request(f"{url}/services/mqtt",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 404):  # no MQTT service provided
            return None
        raise AddonError(f"the Supervisor answered {exc.code} for services/mqtt") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AddonError(f"cannot reach the Supervisor at {url}: {exc}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if body.get("result") != "ok" or not isinstance(data, dict) or not data.get("host"):
        return None
    return data


def bridge_environment(environ: Mapping[str, str], secrets: Mapping[str, str]
                       ) -> dict[str, str]:
    """The long-running bridge's environment: the add-on's, without SUPERVISOR_TOKEN (only
    needed to read the MQTT service, done by now: the bridge has no use for the Supervisor's
    API, so it does not hold the key to it) and any FLESPI_BRIDGE_ variable, plus `secrets`."""
    env = {k: v for k, v in environ.items()
           if not k.startswith("FLESPI_BRIDGE_") and k != "SUPERVISOR_TOKEN"}
    env.update(secrets)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.homeassistant.addon",
                                     description="start flespi-bridge as a Home Assistant add-on")
    parser.add_argument("--options", type=Path, default=OPTIONS_FILE)
    parser.add_argument("--config-out", type=Path, default=Path("/tmp/flespi-bridge.toml"))
    parser.add_argument("--check", action="store_true",
                        help="run check-config instead of run (what the tests use)")
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.options.read_text(encoding="utf-8"))
        service = None if options.get("mqtt_host") else mqtt_service(
            os.environ.get("SUPERVISOR_URL", SUPERVISOR_URL), os.environ.get("SUPERVISOR_TOKEN"))
        sections, secrets = bridge_config(options, service)
    except (OSError, ValueError, AddonError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.config_out.write_text(tomli_w.dumps(sections), encoding="utf-8")
    env = bridge_environment(os.environ, secrets)
    command = "check-config" if args.check else "run"
    argv_run = [sys.executable, "-m", "bridge", command, "--config", str(args.config_out)]
    sys.stdout.flush()
    os.execve(sys.executable, argv_run, env)


if __name__ == "__main__":
    sys.exit(main())
