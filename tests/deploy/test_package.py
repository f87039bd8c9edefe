"""The Python package as published: `python -m build`, on a clean copy of the tracked files
committed to a git repository of its own, makes an sdist and a wheel whose version is the
release tag (setuptools-scm; untagged, a 0.1.devN version), that pass `twine check` and hold
every module, and a clean virtualenv holding only the wheel (and its dependencies) runs the
demo until every simulated device's state arrives, says its version, and runs check-config on
the example configuration, away from the source tree."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO

# The version the release files name (CHANGELOG, chart, add-on): the tag a release pushes.
VERSION = subprocess.run([sys.executable, str(REPO / "tools" / "release_version.py")],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid",
       "-c", "init.defaultBranch=main"]
# python -m build (an isolated build env) and a venv's installs reach PyPI.
pytestmark = pytest.mark.timeout(900)


def run(argv: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, (f"{' '.join(argv)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def states(lines: list[str]) -> set[str]:
    """Device ids whose state line the demo printed (`  flespi/<id>/state: battery 65%, ...`)."""
    return {m[1] for line in lines if (m := re.match(r"  flespi/(\d+)/state: battery \d+%",
                                                      line))}


def demo_lines(proc: subprocess.Popen[str], until: Callable[[list[str]], bool],
               timeout: float) -> list[str]:
    """The demo's output lines, read until `until` holds or the demo ends; after `timeout`
    the demo is killed (and the lines so far returned)."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if until(lines):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout):
        proc.kill()
        done.wait(30)
    return lines


def tracked_copy(target: Path) -> Path:
    """The files git tracks, copied to `target`: what a clone builds from, without this
    checkout's build/, *.egg-info or caches."""
    listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                             timeout=60, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files as one commit of a new git repository, not yet tagged."""
    source = tracked_copy(tmp_path_factory.mktemp("source"))
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the tracked files"]):
        run([*GIT, *argv], cwd=source)
    return source


@pytest.fixture(scope="module")
def untagged_sdist(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist of the untagged commit (`dist` needs it, so it is built before the tag)."""
    out = tmp_path_factory.mktemp("untagged")
    run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(source)], cwd=out)
    return out


@pytest.fixture(scope="module")
def dist(source: Path, untagged_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run([*GIT, "tag", f"v{VERSION}"], cwd=source)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=out)
    for built in sorted(out.iterdir()):
        print(f"\n{built.name}: {built.stat().st_size / 1e3:.0f} kB")
    return out


def test_an_untagged_commit_builds_a_dev_version(source: Path, untagged_sdist: Path) -> None:
    """A clone without any tag is a development version below 0.1.0 that names its commit
    (0.1.dev<commits>+g<hash>), never a release's number."""
    (built,) = untagged_sdist.iterdir()
    commit = run(["git", "rev-parse", "HEAD"], cwd=source).stdout.strip()
    match = re.fullmatch(r"flespi_bridge-0\.1\.dev1\+g([0-9a-f]{7,})\.tar\.gz", built.name)
    assert match, built.name
    assert commit.startswith(match[1])


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    sdist = dist / f"flespi_bridge-{VERSION}.tar.gz"
    wheel = dist / f"flespi_bridge-{VERSION}-py3-none-any.whl"
    assert sdist.is_file(), sorted(p.name for p in dist.iterdir())
    assert wheel.is_file(), sorted(p.name for p in dist.iterdir())
    proc = run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
               cwd=dist)
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    names = zipfile.ZipFile(wheel).namelist()
    # Every module and subpackage (flespi, sim, toolbox, ...), and the typing marker.
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "bridge").rglob("*.py")}
    assert modules - set(names) == set()
    assert "bridge/py.typed" in names
    # The MIT licence the metadata declares travels with the wheel and the sdist.
    assert f"flespi_bridge-{VERSION}.dist-info/licenses/LICENSE" in names or \
        f"flespi_bridge-{VERSION}.dist-info/LICENSE" in names, names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "bench/"))], names
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert f"flespi_bridge-{VERSION}/README.md" in members
    assert f"flespi_bridge-{VERSION}/config.example.toml" in members
    assert f"flespi_bridge-{VERSION}/LICENSE" in members
    assert {f"flespi_bridge-{VERSION}/{m}" for m in modules} <= set(members)
    # No half test suite (setuptools would add tests/test_*.py without their helpers), nor the
    # rest of the repository that setuptools-scm offers (every file git tracks).
    top = {m.split("/")[1] for m in members if m.count("/") > 1}
    assert top == {"bridge", "flespi_bridge.egg-info"}, sorted(top)


def test_wheel_alone_runs_demo_and_check_config(dist: Path,
                                                tmp_path: Path) -> None:
    # Nothing of the source tree: no PYTHONPATH, no FLESPI_BRIDGE_*, run from elsewhere.
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("FLESPI_BRIDGE_")}
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    wheel = dist / f"flespi_bridge-{VERSION}-py3-none-any.whl"
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", str(wheel)], cwd=tmp_path, env=env)
    where = run([str(venv / "bin" / "python"), "-c", "import bridge; print(bridge.__file__)"],
                cwd=tmp_path, env=env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    cli = str(venv / "bin" / "flespi-bridge")
    # The demo runs until each simulated scooter's normalized state has reached its local
    # broker, then stops on SIGTERM as a service manager (or Ctrl-C) stops it.
    demo = subprocess.Popen([cli, "demo", "--devices", "3", "--duration", "300"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = demo_lines(demo, until=lambda seen: len(states(seen)) == 3, timeout=120)
        demo.send_signal(signal.SIGTERM)
        lines += demo.communicate(timeout=60)[0].splitlines()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = "\n".join(lines)
    assert len(states(lines)) == 3, output[-2000:]
    assert demo.returncode == 0, output[-2000:]
    assert lines[-1] == "demo stopped", output[-2000:]
    # The wheel built from the tag says so.
    assert run([cli, "--version"], cwd=tmp_path, env=env).stdout == f"flespi-bridge {VERSION}\n"
    env["FLESPI_BRIDGE_FLESPI__TOKEN"] = "WheelTestToken0123456789abcdefSECRET"
    check = run([cli, "check-config", "--config", str(REPO / "config.example.toml")],
                cwd=tmp_path, env=env)
    assert check.stdout.startswith("ok"), check.stdout
    assert "WheelTestToken0123456789abcdefSECRET" not in check.stdout
