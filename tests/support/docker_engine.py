"""A Docker engine for the image tests (tests/deploy/test_*image.py): the `docker` client,
a clear failure when no engine answers, the bases (the Dockerfile's default when Docker Hub
answers, else one built from Debian packages by tools/debian-python-base), this checkout's
version for the VERSION build argument, and waiting on a container's condition. Containers
run with --network host only (the engine has no bridge network: .ci/run)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import REPO

DEFAULT_BASE = re.search(r"^ARG PYTHON_IMAGE=(\S+)$",
                         (REPO / "Dockerfile").read_text(encoding="utf-8"), re.M)


def docker(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return proc


def require_engine() -> None:
    if shutil.which("docker") is None:
        pytest.fail("no `docker` client on PATH: the image test needs a Docker engine "
                    "(apt-get install docker.io; .ci/run starts dockerd itself)")
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    if info.returncode != 0:
        pytest.fail("no Docker engine answers (DOCKER_HOST="
                    f"{os.environ.get('DOCKER_HOST', 'default')}): {info.stderr.strip()[-500:]}"
                    " - start one (.ci/run does: dockerd --storage-driver=vfs --bridge=none "
                    "--iptables=false) or run the default test selection without -m image")


def builder_ca() -> str | None:
    """The CA bundle the host's pip uses, if any (a TLS-inspecting proxy): the builder stage
    needs it to reach PyPI; the runtime stage never gets it."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        proc = subprocess.run([os.environ.get("PYTHON", "python3"), "-m", "pip", "config",
                               "get", "global.cert"], capture_output=True, text=True,
                              timeout=60, check=False)
        cert = proc.stdout.strip() if proc.returncode == 0 else None
    return cert if cert and Path(cert).is_file() else None


def base_images() -> tuple[str, str]:
    """(PYTHON_IMAGE, BUILDER_IMAGE): the Dockerfile's default base if it can be pulled,
    else the Debian-built equivalent."""
    assert DEFAULT_BASE is not None, "the Dockerfile has no ARG PYTHON_IMAGE default"
    default = DEFAULT_BASE[1]
    if docker("pull", default, timeout=600, check=False).returncode == 0:
        return default, default
    ca = builder_ca()
    script = str(REPO / "tools" / "debian-python-base")
    proc = subprocess.run([script], capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, f"tools/debian-python-base failed:\n{proc.stderr[-3000:]}"
    base = proc.stdout.strip().splitlines()[-1]
    builder = base
    if ca:
        proc = subprocess.run([script, "--builder-ca", ca], capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, f"builder base failed:\n{proc.stderr[-3000:]}"
        builder = proc.stdout.strip().splitlines()[-1]
    return base, builder


def checkout_version() -> str:
    """This checkout's version as setuptools-scm makes it from git: what the Dockerfile's
    VERSION build argument carries in (the build context has no .git), what a wheel built
    from it is named."""
    return subprocess.run([sys.executable, "-m", "setuptools_scm"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True
                          ).stdout.strip()


def inspect(container: str, fmt: str) -> str:
    return docker("inspect", "--format", fmt, container).stdout.strip()


async def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll a condition with no event to wait on (container state, an HTTP endpoint)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.5)


def answering(container: str, url: str) -> Callable[[], bool]:
    """For wait_for: the container still runs (else fail with its log) and `url` answers
    200."""
    def check() -> bool:
        assert inspect(container, "{{.State.Running}}") == "true", (
            f"{container} exited:\n" + docker("logs", container, check=False).stderr[-3000:])
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    return check
