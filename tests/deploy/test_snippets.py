"""Every shell snippet of the README and the docs marked runnable (an `<!-- runnable -->` line
right above its ```sh fence) runs as written, and a snippet that fails fails CI.

Each runs under `bash -e` in a fresh folder holding a copy of `config.example.toml`, with this
checkout's `flespi-bridge` first on PATH, in a process group of its own (ended by the test, so
a snippet's background job never outlives it), against a throwaway Mosquitto: the local
broker's port 1883 in a snippet is the throwaway broker's port. Snippets that need what a test
cannot have (a flespi account, a Docker registry, a Kubernetes cluster) are not marked."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO
from support.helpers import bridge_env

from bridge.sim import brokers as mosquitto

MARK = "<!-- runnable -->"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_BLOCK = re.compile("^" + re.escape(MARK) + r"\s*\n```sh\n(.*?)\n```", re.DOTALL | re.M)


def runnable() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for number, found in enumerate(_BLOCK.finditer(text), 1):
            yield f"{page.relative_to(REPO)}#{number}", found.group(1)


SNIPPETS = dict(runnable())


def test_every_marked_block_is_an_sh_block() -> None:
    """A mark above anything but a ```sh fence would leave its snippet untested."""
    marks = sum(len(re.findall(rf"^{re.escape(MARK)}$", page.read_text(encoding="utf-8"),
                               re.M)) for page in PAGES)
    assert marks == len(SNIPPETS)
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_the_snippet_runs_as_written(name: str, tmp_path: Path) -> None:
    shutil.copy(REPO / "config.example.toml", tmp_path)
    env = bridge_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    with mosquitto.start() as broker:
        script = SNIPPETS[name].replace(":1883", f":{broker.port}").replace(
            "-p 1883", f"-p {broker.port}").replace("port = 1883", f"port = {broker.port}")
        proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=100)
        finally:
            # the snippet's background jobs share its process group, the one started here
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"{name} failed:\n{script}\n--- output:\n{out}"
    assert "Traceback" not in out, out
