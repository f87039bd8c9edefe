"""A pinned, cached Home Assistant for the integration tests.

`ensure_venv()` returns the Python of a venv holding `homeassistant==HA_VERSION` and the
requirements of the integrations the tests load (resolved from Home Assistant's own
manifests, installed under its own package constraints). The venv is built once, under a
file lock, in `cache_dir()` (`$FLESPI_BRIDGE_CACHE` or `~/.cache/flespi-bridge`, then
`homeassistant-<version>`), and reused while its stamp matches. Home Assistant 2025.4
requires Python 3.13: the interpreter is `$FLESPI_BRIDGE_HA_PYTHON`, else `python3.13` on
PATH, else pyenv's 3.13; with none, `HarnessError` says so (the test fails, never skips).

`HomeAssistant` runs one instance as a child process on a loopback port with a fresh config
directory: onboarding over the REST API gives the owner's token, the MQTT integration is set
up through its config flow, and the process is stopped by its PID.

Run it by hand to build the cache: `python tests/homeassistant_harness.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from pathlib import Path
from typing import Any

import httpx

HA_VERSION = "2025.4.4"  # the newest 2025.4 patch: the last release that runs on Python 3.13
PYTHON_VERSION = (3, 13)
# Integrations the tests load (their manifest dependencies are followed).
INTEGRATIONS = ["mqtt", "api", "config", "onboarding", "http", "auth", "person",
                "device_tracker", "lock", "button", "number", "sensor", "binary_sensor",
                "backup", "analytics", "search", "repairs", "homeassistant_alerts"]
PIP_TIMEOUT = 1800


class HarnessError(RuntimeError):
    """Home Assistant could not be installed or started."""


def cache_dir() -> Path:
    root = os.environ.get("FLESPI_BRIDGE_CACHE") or Path.home() / ".cache" / "flespi-bridge"
    return Path(root) / f"homeassistant-{HA_VERSION}"


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = out.split()
    return int(major), int(minor)


def find_python() -> str:
    """A Python 3.13 interpreter, or HarnessError naming where it looked."""
    candidates: list[str] = []
    if env := os.environ.get("FLESPI_BRIDGE_HA_PYTHON"):
        candidates.append(env)
    name = "python{}.{}".format(*PYTHON_VERSION)
    if found := shutil.which(name):
        candidates.append(found)
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                       timeout=30).stdout.strip())
    prefix = "{}.{}.".format(*PYTHON_VERSION)
    for root in filter(None, roots):
        versions = Path(root) / "versions"
        if versions.is_dir():
            candidates += [str(p / "bin" / "python") for p in sorted(versions.iterdir())
                           if p.name.startswith(prefix)]
    for candidate in candidates:
        if _version_of(candidate) == PYTHON_VERSION:
            return candidate
    raise HarnessError(
        f"Home Assistant {HA_VERSION} needs Python {name[6:]}, and none was found "
        f"(tried $FLESPI_BRIDGE_HA_PYTHON, {name} on PATH, pyenv versions {prefix}*: "
        f"{candidates or 'nothing'}); install one (e.g. `pyenv install 3.13`) or point "
        "FLESPI_BRIDGE_HA_PYTHON at it")


def run_logged(cmd: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT,
                                check=False)
    if result.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise HarnessError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{tail}")


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


def _stamp(python: str) -> str:
    return json.dumps({"homeassistant": HA_VERSION, "python": python,
                       "integrations": INTEGRATIONS})


def venv_python() -> Path:
    return cache_dir() / "venv" / "bin" / "python"


def ensure_venv() -> Path:
    """The venv's Python, building the venv first unless the cache holds it."""
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    stamp_file = base / "complete"
    with (base / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs wait for one build
        python = find_python()
        if stamp_file.exists() and stamp_file.read_text() == _stamp(python) \
                and venv_python().exists():
            return venv_python()
        stamp_file.unlink(missing_ok=True)
        shutil.rmtree(base / "venv", ignore_errors=True)
        log = base / "install.log"
        log.write_text("")
        started = time.monotonic()
        run_logged([python, "-m", "venv", str(base / "venv")], log)
        pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input"]
        run_logged([*pip, "--upgrade", "pip"], log)
        # Home Assistant's own pins (package_constraints.txt, inside its wheel) keep pip
        # from backtracking through the newest releases of its loosely pinned dependencies.
        wheels = base / "wheel"
        shutil.rmtree(wheels, ignore_errors=True)
        run_logged([str(venv_python()), "-m", "pip", "download", "--disable-pip-version-check",
              "--no-deps", "--only-binary", ":all:", "--dest", str(wheels),
              f"homeassistant=={HA_VERSION}"], log)
        wheel = next(wheels.glob("homeassistant-*.whl"))
        constraints = base / "package_constraints.txt"
        with zipfile.ZipFile(wheel) as archive:
            constraints.write_bytes(archive.read("homeassistant/package_constraints.txt"))
        run_logged([*pip, "--constraint", str(constraints), str(wheel)], log)
        reqs = json.loads(subprocess.run(
            [str(venv_python()), "-c", REQUIREMENTS_SCRIPT, *INTEGRATIONS], capture_output=True,
            text=True, timeout=300, check=True).stdout)
        if reqs:
            run_logged([*pip, "--constraint", str(constraints), *reqs], log)
        shutil.rmtree(wheels, ignore_errors=True)
        with log.open("a") as out:
            out.write(f"installed in {time.monotonic() - started:.0f} s\n")
        stamp_file.write_text(_stamp(python))
        return venv_python()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


CLIENT_ID = "http://127.0.0.1/"


class HomeAssistant:
    """One Home Assistant process on 127.0.0.1; `stop()` (also on context exit) ends it by
    its PID."""

    def __init__(self, python: Path, config_dir: Path) -> None:
        self.python = python
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
            "logger:\n  default: info\n")

    @property
    def log_path(self) -> Path:
        return self.config / "home-assistant.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with (self.config / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "homeassistant", "--config", str(self.config),
                 "--log-file", str(self.log_path)],
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
def running(python: Path, config_dir: Path) -> Iterator[HomeAssistant]:
    with HomeAssistant(python, config_dir) as ha:
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
                data = {"broker": host, "port": port}
            else:
                raise HarnessError(f"MQTT config flow: unexpected step {flow}")
            response = await http.post(f"/api/config/config_entries/flow/{flow['flow_id']}",
                                       json=data)
            response.raise_for_status()
            flow = response.json()
        raise HarnessError(f"MQTT config flow did not finish: {flow}")


if __name__ == "__main__":
    began = time.monotonic()
    try:
        path = ensure_venv()
    except HarnessError as error:
        sys.exit(str(error))
    print(f"{path} (Home Assistant {HA_VERSION}) ready in {time.monotonic() - began:.0f} s")
