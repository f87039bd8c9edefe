"""Pinned, cached Home Assistant releases for the integration tests.

`RELEASES` are the releases the real-HA tests run against: the oldest one the bridge
supports (`OLDEST`) and the newest on PyPI when it was last pinned (`NEWEST`). `ensure(release)`
returns a `Runtime`: a venv holding `homeassistant==<version>` and the requirements of the
integrations the tests load (resolved from Home Assistant's own manifests, installed under its
own package constraints), built once, under a file lock, in `cache_dir(release)`
(`$FLESPI_BRIDGE_CACHE` or `~/.cache/flespi-bridge`, then `homeassistant-<version>-<digest>`,
the digest of what is pinned), and reused while its stamp matches.

Each release needs its own Python. `OLDEST` (2025.4, Python 3.13) uses this machine's:
`$FLESPI_BRIDGE_HA_PYTHON`, else `python3.13` on PATH, else pyenv's 3.13 (none: `HarnessError`,
the test fails, never skips). `NEWEST` (Python 3.14, which Debian 12 lacks) runs in a Debian
root debootstrapped into the cache (`support.debian_chroot`: Debian unstable's `python3.14`),
its venv at /opt/venv inside it; the config directory is bound at /config and the process
shares the host's loopback.

`HomeAssistant` runs one instance as a child process on a loopback port with a fresh config
directory: onboarding over the REST API gives the owner's token, the MQTT integration is set
up through its config flow, and the process is stopped by its PID.

Build the caches by hand (`.ci/run` does, before the tests):
`python tests/support/homeassistant_harness.py [VERSION ...]`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support import debian_chroot


@dataclass(frozen=True)
class Release:
    version: str
    python: tuple[int, int]
    debian: str | None = None  # the Debian suite whose `python` a root is built with
    host_python: bool = False  # this machine's Python `python` first, if it has one


# 2025.4.4: the newest 2025.4 patch, the last release that runs on Python 3.13 (a machine
# without one gets Debian trixie's).
OLDEST = Release("2025.4.4", (3, 13), debian="trixie", host_python=True)
# 2026.11.0: the newest on PyPI when pinned; Python 3.14, from Debian unstable.
NEWEST = Release("2026.11.0", (3, 14), debian="unstable")
RELEASES = (OLDEST, NEWEST)
HA_VERSION = OLDEST.version
PYTHON_VERSION = OLDEST.python
# Integrations the tests load (their manifest dependencies are followed). `automation`
# brings `frontend` along (Home Assistant starts in recovery mode without it).
INTEGRATIONS = ["mqtt", "api", "config", "onboarding", "http", "auth", "person",
                "device_tracker", "lock", "button", "number", "sensor", "binary_sensor",
                "event", "automation", "frontend", "backup", "analytics", "search",
                "repairs", "homeassistant_alerts"]
PIP_TIMEOUT = 1800
IN_ROOT_VENV = "/opt/venv"
IN_ROOT_CONFIG = "/config"


@dataclass(frozen=True)
class Runtime:
    """An installed release: `python` is its venv's interpreter, a path inside `root` when
    it runs in a Debian root (None: on this machine)."""

    release: Release
    python: Path
    root: Path | None = None

    def command(self, config: Path, *args: str) -> list[str]:
        """`python -m homeassistant` with `config` as its config directory. `--skip-pip`:
        the cache holds what the tests load; Home Assistant 2026 also sets up integrations
        nobody configured (assist_pipeline, ...) whose requirements have no Python 3.14
        wheel, and would spend half a minute failing to build them at every start."""
        args = ("--skip-pip", *args)
        if self.root is None:
            return [str(self.python), "-m", "homeassistant", "--config", str(config),
                    "--log-file", str(config / "home-assistant.log"), *args]
        return debian_chroot.command(self.root, [
            str(self.python), "-m", "homeassistant", "--config", IN_ROOT_CONFIG,
            "--log-file", f"{IN_ROOT_CONFIG}/home-assistant.log", *args],
            {config: IN_ROOT_CONFIG})


class HarnessError(RuntimeError):
    """Home Assistant could not be installed or started."""


def cache_dir(release: Release = OLDEST) -> Path:
    """`homeassistant-<version>-<key>`: the key is a digest of what is pinned (the release,
    its Python and Debian suite, the integrations), so branches that pin differently keep
    their own installs instead of rebuilding each other's."""
    root = os.environ.get("FLESPI_BRIDGE_CACHE") or Path.home() / ".cache" / "flespi-bridge"
    pinned = json.dumps([release.version, release.python, release.debian, INTEGRATIONS])
    key = hashlib.sha256(pinned.encode()).hexdigest()[:8]
    return Path(root) / f"homeassistant-{release.version}-{key}"


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = out.split()
    return int(major), int(minor)


def find_python(version: tuple[int, int] = PYTHON_VERSION) -> str:
    """A Python `version` interpreter on this machine, or HarnessError naming where it
    looked."""
    candidates: list[str] = []
    if env := os.environ.get("FLESPI_BRIDGE_HA_PYTHON"):
        candidates.append(env)
    name = "python{}.{}".format(*version)
    if found := shutil.which(name):
        candidates.append(found)
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                       timeout=30).stdout.strip())
    prefix = "{}.{}.".format(*version)
    for root in filter(None, roots):
        versions = Path(root) / "versions"
        if versions.is_dir():
            candidates += [str(p / "bin" / "python") for p in sorted(versions.iterdir())
                           if p.name.startswith(prefix)]
    for candidate in candidates:
        if _version_of(candidate) == version:
            return candidate
    raise HarnessError(
        f"Home Assistant needs Python {name[6:]}, and none was found "
        f"(tried $FLESPI_BRIDGE_HA_PYTHON, {name} on PATH, pyenv versions {prefix}*: "
        f"{candidates or 'nothing'}); install one (e.g. `pyenv install 3.13`) or point "
        "FLESPI_BRIDGE_HA_PYTHON at it")


def run_logged(cmd: list[str], log: Path) -> None:
    try:
        debian_chroot.run_logged(cmd, log, PIP_TIMEOUT)
    except debian_chroot.ChrootError as error:
        raise HarnessError(str(error)) from None


# Run inside the venv: the requirements of INTEGRATIONS and what they depend on, from
# Home Assistant's manifests.
REQUIREMENTS_SCRIPT = """
import json, sys
from pathlib import Path
import homeassistant.components as components
root = Path(components.__path__[0])
todo, seen, reqs = list(sys.argv[1:]), set(), set()
while todo:
    name = todo.pop()
    if name in seen or not (root / name / "manifest.json").exists():
        continue
    seen.add(name)
    manifest = json.loads((root / name / "manifest.json").read_text())
    reqs.update(manifest.get("requirements", []))
    todo += manifest.get("dependencies", []) + manifest.get("after_dependencies", [])
print(json.dumps(sorted(reqs)))
"""


def _stamp(release: Release, python: str) -> str:
    return json.dumps({"homeassistant": release.version, "python": python,
                       "debian": release.debian, "integrations": INTEGRATIONS})


def ensure_venv() -> Path:
    """The oldest release's venv Python (on this machine), built first unless cached."""
    return ensure(OLDEST).python


def ensure(release: Release) -> Runtime:
    """`release` installed, building it first unless the cache holds it."""
    base = cache_dir(release)
    base.mkdir(parents=True, exist_ok=True)
    stamp_file = base / "complete"
    with (base / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs wait for one build
        root = base / "root" if release.debian else None
        python = ""
        if release.host_python:
            try:
                python = find_python(release.python)
                root = None
            except HarnessError:
                if root is None:
                    raise
        if root is None:
            python = python or find_python(release.python)
            runtime = Runtime(release, base / "venv" / "bin" / "python")
            if stamp_file.exists() and stamp_file.read_text() == _stamp(release, python) \
                    and runtime.python.exists():
                return runtime
        else:
            runtime = Runtime(release, Path(IN_ROOT_VENV) / "bin" / "python", root)
            python = "python{}.{}".format(*release.python)
            if stamp_file.exists() and json.loads(stamp_file.read_text()).get(
                    "stamp") == _stamp(release, python) \
                    and os.path.lexists(root / IN_ROOT_VENV.lstrip("/") / "bin" / "python"):
                # (lexists: the venv's python links to /usr/bin/python3.x of the root)
                return runtime
        stamp_file.unlink(missing_ok=True)
        log = base / "install.log"
        log.write_text("")
        started = time.monotonic()
        timings: dict[str, float] = {}
        if root is None:
            shutil.rmtree(base / "venv", ignore_errors=True)
            _install(runtime, python, base, [], log)
            stamp = _stamp(release, python)
        else:
            try:
                debian_python = debian_chroot.build(root, str(release.debian), release.python,
                                                    log)
            except debian_chroot.ChrootError as error:
                raise HarnessError(str(error)) from error
            timings["debootstrap"] = time.monotonic() - started
            _install(runtime, python, Path("/opt"), ["chroot", str(root)], log)
            stamp = json.dumps({"stamp": _stamp(release, python),
                                "debian_python": debian_python})
        timings["total"] = time.monotonic() - started
        with log.open("a") as out:
            out.write("installed in " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
                      + "\n")
        stamp_file.write_text(stamp)
        return runtime


def _install(runtime: Runtime, python: str, work: Path, prefix: list[str], log: Path) -> None:
    """The venv, Home Assistant and its integrations' requirements. `work`: the directory
    for the venv and downloads as the commands see it; `prefix`: what runs a command where
    they see it (`chroot <root>`)."""
    def host(path: Path) -> Path:
        return path if runtime.root is None else runtime.root / path.relative_to("/")

    venv_py = str(runtime.python)
    run_logged([*prefix, python, "-m", "venv", str(runtime.python.parents[1])], log)
    pip = [*prefix, venv_py, "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input"]
    run_logged([*pip, "--upgrade", "pip"], log)
    # Home Assistant's own pins (package_constraints.txt, inside its wheel) keep pip
    # from backtracking through the newest releases of its loosely pinned dependencies.
    wheels = work / "wheel"
    shutil.rmtree(host(wheels), ignore_errors=True)
    run_logged([*prefix, venv_py, "-m", "pip", "download", "--disable-pip-version-check",
                "--no-deps", "--only-binary", ":all:", "--dest", str(wheels),
                f"homeassistant=={runtime.release.version}"], log)
    wheel = next(host(wheels).glob("homeassistant-*.whl"))
    constraints = work / "package_constraints.txt"
    with zipfile.ZipFile(wheel) as archive:
        host(constraints).write_bytes(archive.read("homeassistant/package_constraints.txt"))
    run_logged([*pip, "--constraint", str(constraints), str(wheels / wheel.name)], log)
    reqs = json.loads(subprocess.run(
        [*prefix, venv_py, "-c", REQUIREMENTS_SCRIPT, *INTEGRATIONS], capture_output=True,
        text=True, timeout=300, check=True).stdout)
    if reqs:
        run_logged([*pip, "--constraint", str(constraints), *reqs], log)
    shutil.rmtree(host(wheels), ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


CLIENT_ID = "http://127.0.0.1/"


class HomeAssistant:
    """One Home Assistant process on 127.0.0.1; `stop()` (also on context exit) ends it by
    its PID."""

    def __init__(self, runtime: Runtime | Path, config_dir: Path) -> None:
        self.runtime = runtime if isinstance(runtime, Runtime) else Runtime(OLDEST, runtime)
        self.config = config_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "configuration.yaml").write_text(
            "homeassistant:\n"
            "  name: flespi-bridge test\n"
            "  latitude: -17.72436\n  longitude: -63.171508\n  elevation: 400\n"
            "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: BO\n"
            "  language: en\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\n"
            # automations the tests write (automations.yaml), as the UI's editor would
            "automation: !include automations.yaml\n"
            "logger:\n  default: info\n")
        (self.config / "automations.yaml").write_text("[]\n")

    @property
    def log_path(self) -> Path:
        return self.config / "home-assistant.log"

    def log(self) -> str:
        """Everything Home Assistant logged since the first start: it renames its log to
        `.log.1` at every start (one backup), so `start` keeps the earlier ones."""
        return "".join(path.read_text(errors="replace")
                       for path in (self.config / "earlier.log", self.log_path)
                       if path.exists())

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        if self.log_path.exists():  # before Home Assistant rotates it away
            with (self.config / "earlier.log").open("a") as earlier:
                earlier.write(self.log_path.read_text(errors="replace"))
            self.log_path.unlink()
        with (self.config / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                self.runtime.command(self.config),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items()
                     if k not in ("PYTHONPATH", "VIRTUAL_ENV")})

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (Home Assistant saves its registries and stops), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> HomeAssistant:
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def headers(self) -> dict[str, str]:
        assert self.token is not None, "no token: onboard() first"
        return {"Authorization": f"Bearer {self.token}"}

    def storage(self, key: str) -> Any:
        """A `.storage` file of Home Assistant's, e.g. core.entity_registry (None if absent)."""
        path = self.config / ".storage" / key
        return json.loads(path.read_text()) if path.exists() else None


@contextlib.contextmanager
def running(runtime: Runtime | Path, config_dir: Path) -> Iterator[HomeAssistant]:
    with HomeAssistant(runtime, config_dir) as ha:
        try:
            yield ha
        finally:
            ha.stop()


async def wait_api(ha: HomeAssistant, timeout: float = 240) -> None:
    """Until the HTTP server answers (onboarding or, with a token, `GET /api/` = 200)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            assert ha.proc is not None
            if ha.proc.poll() is not None:
                raise HarnessError(f"Home Assistant exited ({ha.proc.returncode}):\n"
                                   + ha.log()[-3000:])
            try:
                if ha.token is None:
                    response = await http.get(f"{ha.url}/api/onboarding")
                else:
                    response = await http.get(f"{ha.url}/api/", headers=ha.headers())
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if loop.time() > deadline:
                raise HarnessError(f"Home Assistant did not answer within {timeout}s:\n"
                                   + ha.log()[-3000:])
            await asyncio.sleep(0.25)


async def onboard(ha: HomeAssistant) -> None:
    """Create the owner through onboarding and take an access token (it stays valid across
    restarts: its refresh token is stored in .storage/auth)."""
    async with httpx.AsyncClient(timeout=30, base_url=ha.url) as http:
        response = await http.post("/api/onboarding/users", json={
            "client_id": CLIENT_ID, "name": "Test", "username": "test",
            "password": "flespi-bridge-test", "language": "en"})
        response.raise_for_status()
        code = response.json()["auth_code"]
        response = await http.post("/auth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": CLIENT_ID})
        response.raise_for_status()
        ha.token = response.json()["access_token"]
        # The other onboarding steps are left alone: "core_config" would set up default
        # integrations (radio browser, weather, ...) that have nothing to do with the bridge.


def form_data(schema: list[dict[str, Any]], given: dict[str, Any]) -> dict[str, Any]:
    """A config flow form filled as the UI submits it: `given`, and what the user leaves
    alone (defaults; a required switch off, a required menu's first choice), in the
    expandable sections Home Assistant 2025.x added as well."""
    data: dict[str, Any] = {}
    for field in schema:
        name = field["name"]
        if field.get("type") == "expandable":
            data[name] = form_data(field["schema"], given)
        elif name in given:
            data[name] = given[name]
        elif "default" in field:
            data[name] = field["default"]
        elif field.get("required"):
            selector = field.get("selector", {})
            if "boolean" in selector:
                data[name] = False
            elif "select" in selector:
                first = selector["select"]["options"][0]
                data[name] = first["value"] if isinstance(first, dict) else first
    return data


async def add_mqtt(ha: HomeAssistant, host: str, port: int) -> dict[str, Any]:
    """Set up the MQTT integration through its config flow (as a user would in the UI)."""
    async with httpx.AsyncClient(timeout=60, base_url=ha.url, headers=ha.headers()) as http:
        response = await http.post("/api/config/config_entries/flow",
                                   json={"handler": "mqtt", "show_advanced_options": False})
        response.raise_for_status()
        flow: dict[str, Any] = response.json()
        for _ in range(5):
            if flow.get("type") == "create_entry":
                return flow
            if flow.get("type") == "menu":
                data: dict[str, Any] = {"next_step_id": "broker"}
            elif flow.get("type") == "form":
                data = form_data(flow.get("data_schema", []), {"broker": host, "port": port})
            else:
                raise HarnessError(f"MQTT config flow: unexpected step {flow}")
            response = await http.post(f"/api/config/config_entries/flow/{flow['flow_id']}",
                                       json=data)
            response.raise_for_status()
            flow = response.json()
        raise HarnessError(f"MQTT config flow did not finish: {flow}")


if __name__ == "__main__":
    wanted = sys.argv[1:] or [r.version for r in RELEASES]
    for release in RELEASES:
        if release.version not in wanted:
            continue
        began = time.monotonic()
        try:
            runtime = ensure(release)
        except HarnessError as error:
            sys.exit(str(error))
        where = f" in the Debian root {runtime.root}" if runtime.root else ""
        print(f"Home Assistant {release.version}: {runtime.python}{where}, ready in "
              f"{time.monotonic() - began:.0f} s")
