"""The Python package as published: `python -m build` makes an sdist and a wheel that pass
`twine check`, and a clean virtualenv holding only the wheel (and its dependencies) runs the
demo and check-config on the example configuration, away from the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PROJECT["version"]
# python -m build (an isolated build env) and a venv's installs reach PyPI.
pytestmark = pytest.mark.timeout(900)


def run(argv: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, (f"{' '.join(argv)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], cwd=out)
    return out


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    sdist = dist / f"flespi_bridge-{VERSION}.tar.gz"
    wheel = dist / f"flespi_bridge-{VERSION}-py3-none-any.whl"
    assert sdist.is_file(), sorted(p.name for p in dist.iterdir())
    assert wheel.is_file(), sorted(p.name for p in dist.iterdir())
    proc = run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
               cwd=dist)
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    names = zipfile.ZipFile(wheel).namelist()
    assert "bridge/cli.py" in names
    assert "bridge/addon.py" in names
    assert "bridge/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "bench/"))], names
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert f"flespi_bridge-{VERSION}/README.md" in members
    assert f"flespi_bridge-{VERSION}/bridge/cli.py" in members


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
    demo = run([cli, "demo", "--duration", "3", "--devices", "3"], cwd=tmp_path, timeout=120,
               env=env)
    assert "flespi/" in demo.stdout, demo.stdout[-2000:]
    env["FLESPI_BRIDGE_FLESPI__TOKEN"] = "WheelTestToken0123456789abcdefSECRET"
    check = run([cli, "check-config", "--config", str(REPO / "config.example.toml")],
                cwd=tmp_path, env=env)
    assert check.stdout.startswith("ok"), check.stdout
    assert "WheelTestToken0123456789abcdefSECRET" not in check.stdout
