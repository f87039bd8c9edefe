"""The Home Assistant Supervisor's checks of an add-on, ported from its source so the tests
judge the add-on as the Supervisor does (home-assistant/supervisor, 2026: the add-on code now
lives in supervisor/apps/): config.yaml (`_SCHEMA_APP_CONFIG` in apps/validate.py), build.yaml
(`SCHEMA_BUILD_CONFIG`), translations (`SCHEMA_APP_TRANSLATIONS`), repository.yaml
(store/validate.py) and the options against their schema (`AppOptions` in apps/options.py).
The regular expressions are copied verbatim; voluptuous' coercions are spelled out.

Each check raises `Invalid` with the path of the offending key."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse


class Invalid(ValueError):
    pass


# apps/options.py
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
# apps/validate.py, apps/const.py, validate.py, const.py
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
RE_DOCKER_IMAGE_BUILD = re.compile(
    r"^([a-zA-Z\-\.:\d{}]+/)*?([\-\w{}]+)/([\-\w{}]+)(:[\.\-\w{}]+)?$"
)
RE_SLUG_FIELD = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_WATCHDOG = re.compile(r"^(?:https?|\[PROTO:\w+\]|tcp):\/\/\[HOST\]:(\[PORT:\d+\]|\d+).*$")
RE_DOCKER_PORT = re.compile(r"^\d+(?:/tcp|/udp)?$")
ARCH_ALL = ("aarch64", "amd64")
ARCH_DEPRECATED = ("armhf", "armv7", "i386")
STARTUP = ("initialize", "system", "services", "application", "once")
BOOT = ("auto", "manual", "manual_only")
STAGE = ("stable", "experimental", "deprecated")
MAP_TYPES = ("data", "config", "ssl", "local_apps", "backup", "share", "media",
             "homeassistant_config", "all_app_configs", "app_config")
BOOLEAN_KEYS = ("init", "ingress", "host_network", "hassio_api", "homeassistant_api",
                "auth_api", "docker_api", "full_access", "udev", "tmpfs", "journald", "stdin")
_TRUE = ("1", "true", "yes", "on", "enable")
_FALSE = ("0", "false", "no", "off", "disable")


def _boolean(value: Any, where: str) -> bool:
    """voluptuous.Boolean: a few words for strings, bool() of anything else."""
    if isinstance(value, str):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise Invalid(f"{where}: expected boolean, got {value!r}")
    return bool(value)


def _number(kind: type[int] | type[float], value: Any, where: str) -> float:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise Invalid(f"{where}: expected {kind.__name__}, got {value!r}") from None


def _port(value: Any, where: str) -> int:
    port = int(_number(int, value, where))
    if not 1 <= port <= 65535:
        raise Invalid(f"{where}: {port} is not a port")
    return port


# --- the options against their schema (AppOptions) ---------------------------------------

def validate_options(schema: dict[str, Any], options: Any) -> dict[str, Any]:
    """What the Supervisor writes to /data/options.json for these options, or Invalid.
    Unknown keys are an error here (the Supervisor drops them with a warning)."""
    return _dict(schema, options, "options")


def _element(spec: Any, value: Any, where: str) -> Any:
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise Invalid(f"{where}: invalid list")
        return [_element(spec[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(spec, dict):
        return _dict(spec, value, where)
    return _single(spec, value, where)


def _dict(schema: dict[str, Any], value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{where}: invalid dict")
    unknown = set(value) - set(schema)
    if unknown:
        raise Invalid(f"{where}: options not in the schema: {sorted(unknown)}")
    out = {key: _element(schema[key], item, f"{where}.{key}") for key, item in value.items()}
    for key in set(schema) - set(out):  # _check_missing_options
        spec = schema[key]
        if isinstance(spec, list) and spec:
            spec = spec[0]
        if not (isinstance(spec, str) and spec.endswith("?")):
            raise Invalid(f"{where}: missing option {key!r}")
    return out


def _single(spec: str, value: Any, where: str) -> Any:
    if value is None:  # even an optional (`?`) option may not be null, only absent
        raise Invalid(f"{where}: missing required option (null)")
    match = RE_SCHEMA_ELEMENT.match(spec)
    if not match:
        raise Invalid(f"{where}: unknown type {spec!r}")
    bounds = {name[2:]: float(match[name]) for name in (
        "i_min", "i_max", "f_min", "f_max", "s_min", "s_max", "p_min", "p_max") if match[name]}
    if spec.startswith(("str", "password")):
        if not isinstance(value, str):
            raise Invalid(f"{where}: expected str, got {value!r}")
        _within(len(value), bounds, f"{where} (length)")
        return value
    if spec.startswith("int"):
        number = int(_number(int, value, where))
        _within(number, bounds, where)
        return number
    if spec.startswith("float"):
        real = float(_number(float, value, where))
        _within(real, bounds, where)
        return real
    if spec.startswith("bool"):
        return _boolean(value, where)
    if spec.startswith("email"):
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", str(value)):
            raise Invalid(f"{where}: not an email address")
        return value
    if spec.startswith("url"):
        parsed = urlparse(str(value))
        if not (parsed.scheme and parsed.netloc):
            raise Invalid(f"{where}: not a URL")
        return value
    if spec.startswith("port"):
        return _port(value, where)
    if spec.startswith("match"):
        if not re.match(match["match"], str(value)):  # vol.Match: re.match, not fullmatch
            raise Invalid(f"{where}: {value!r} does not match {match['match']}")
        return str(value)
    if spec.startswith("list"):
        if str(value) not in match["list"].split("|"):
            raise Invalid(f"{where}: {value!r} not in {match['list']}")
        return str(value)
    raise Invalid(f"{where}: device options need the Supervisor's hardware list")


def _within(value: float, bounds: dict[str, float], where: str) -> None:
    if "min" in bounds and value < bounds["min"]:
        raise Invalid(f"{where}: {value} is below {bounds['min']}")
    if "max" in bounds and value > bounds["max"]:
        raise Invalid(f"{where}: {value} is above {bounds['max']}")


# --- config.yaml, build.yaml, translations, repository.yaml ------------------------------

def _schema_element(spec: Any, where: str, in_list: bool = False) -> None:
    """SCHEMA_ELEMENT: a type string, a dict of elements, or a one-element list of either
    (a list may not directly contain another list)."""
    if isinstance(spec, str):
        if not RE_SCHEMA_ELEMENT.match(spec):
            raise Invalid(f"{where}: {spec!r} is not an option type")
    elif isinstance(spec, dict):
        for key, inner in spec.items():
            if not isinstance(key, str):
                raise Invalid(f"{where}: key {key!r} is not a string")
            _schema_element(inner, f"{where}.{key}")
    elif isinstance(spec, list) and not in_list:
        for inner in spec:
            _schema_element(inner, f"{where}[]", in_list=True)
    else:
        raise Invalid(f"{where}: {spec!r} is not a schema element")


def _ports(ports: Any, where: str, values: str) -> None:
    if not isinstance(ports, dict):
        raise Invalid(f"{where}: not a mapping")
    for key, value in ports.items():
        if not (isinstance(key, str) and RE_DOCKER_PORT.match(key)):
            raise Invalid(f"{where}: {key!r} is not a container port (9871/tcp)")
        if values == "port" and value is not None:
            _port(value, f"{where}.{key}")
        if values == "str" and not isinstance(value, str):
            raise Invalid(f"{where}.{key}: not a string")


def validate_config(config: Any) -> None:
    """config.yaml as `_SCHEMA_APP_CONFIG` takes it, and without the deprecation warnings
    `_warn_app_config` logs (deprecated architectures)."""
    if not isinstance(config, dict):
        raise Invalid("config.yaml: not a mapping")
    for key in ("name", "version", "slug", "description", "arch"):
        if key not in config:
            raise Invalid(f"config.yaml: required key {key!r} missing")
    for key in ("name", "description"):
        if not isinstance(config[key], str):
            raise Invalid(f"config.yaml.{key}: not a string")
    if config["version"] is None:
        raise Invalid("config.yaml.version: empty")
    if not RE_SLUG_FIELD.match(str(config["slug"])):
        raise Invalid("config.yaml.slug: not a slug")
    for arch in config["arch"]:
        if arch not in ARCH_ALL:
            raise Invalid(f"config.yaml.arch: {arch!r} is unknown or deprecated")
    if "url" in config:
        parsed = urlparse(config["url"])
        if not (parsed.scheme and parsed.netloc):
            raise Invalid("config.yaml.url: not a URL")
    for key, choices in (("startup", STARTUP), ("boot", BOOT), ("stage", STAGE)):
        if key in config and config[key] not in choices:
            raise Invalid(f"config.yaml.{key}: {config[key]!r} not in {choices}")
    for key in BOOLEAN_KEYS:
        if key in config:
            _boolean(config[key], f"config.yaml.{key}")
    if "ports" in config:
        _ports(config["ports"], "config.yaml.ports", "port")
    if "ports_description" in config:
        _ports(config["ports_description"], "config.yaml.ports_description", "str")
    if "watchdog" in config and not RE_WATCHDOG.match(str(config["watchdog"])):
        raise Invalid(f"config.yaml.watchdog: {config['watchdog']!r}")
    for service in config.get("services", []):
        if not RE_SERVICE.match(str(service)):
            raise Invalid(f"config.yaml.services: {service!r}")
    for entry in config.get("map", []):
        kind = entry.get("type") if isinstance(entry, dict) else re.sub(r":(rw|ro)$", "",
                                                                       str(entry))
        if kind not in MAP_TYPES:
            raise Invalid(f"config.yaml.map: {entry!r}")
    if "timeout" in config:
        timeout = int(_number(int, config["timeout"], "config.yaml.timeout"))
        if not 10 <= timeout <= 300:
            raise Invalid("config.yaml.timeout: 10 to 300 seconds")
    if not isinstance(config.get("options", {}), dict):
        raise Invalid("config.yaml.options: not a mapping")
    schema = config.get("schema", {})
    if schema is not False:
        if not isinstance(schema, dict):
            raise Invalid("config.yaml.schema: not a mapping")
        _schema_element(schema, "config.yaml.schema")


def validate_build(build: Any, arches: list[str]) -> None:
    """build.yaml (`SCHEMA_BUILD_CONFIG`), with a base image for each of the add-on's
    architectures (else the Supervisor refuses to build it there)."""
    build_from = build.get("build_from", {})
    images = {arch: build_from for arch in arches} if isinstance(build_from, str) \
        else build_from
    for arch in arches:
        if arch not in images:
            raise Invalid(f"build.yaml.build_from: no base image for {arch}")
    for arch, image in images.items():
        if arch not in ARCH_ALL + ARCH_DEPRECATED:
            raise Invalid(f"build.yaml.build_from: unknown architecture {arch!r}")
        if not RE_DOCKER_IMAGE_BUILD.match(str(image)):
            raise Invalid(f"build.yaml.build_from.{arch}: {image!r} is not an image")
    for key in ("args", "labels"):
        for name, value in build.get(key, {}).items():
            if not (isinstance(name, str) and isinstance(value, str)):
                raise Invalid(f"build.yaml.{key}.{name}: strings only")


def validate_translations(translations: Any) -> None:
    """translations/<lang>.yaml (`SCHEMA_APP_TRANSLATIONS`)."""
    def entry(value: Any, where: str) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise Invalid(f"{where}: needs a name")
        if value.get("description") is not None and not isinstance(value["description"], str):
            raise Invalid(f"{where}.description: not a string")
        for key, inner in value.get("fields", {}).items():
            entry(inner, f"{where}.fields.{key}")

    for key, value in translations.get("configuration", {}).items():
        entry(value, f"configuration.{key}")
    for key, value in translations.get("network", {}).items():
        if not isinstance(value, str):
            raise Invalid(f"network.{key}: not a string")


def validate_repository(repository: Any) -> None:
    """repository.yaml (`SCHEMA_REPOSITORY_CONFIG`)."""
    if not isinstance(repository, dict) or not isinstance(repository.get("name"), str):
        raise Invalid("repository.yaml: needs a name")
    if "url" in repository and not urlparse(repository["url"]).netloc:
        raise Invalid("repository.yaml.url: not a URL")
    if "maintainer" in repository and not isinstance(repository["maintainer"], str):
        raise Invalid("repository.yaml.maintainer: not a string")
