"""tools/get_helm.py, the project's way to Helm for the chart tests and .ci/run: a Helm 3 on
PATH first; never an unchecked binary; offline, a clear error instead of a traceback. (The
download itself, pinned by version and SHA-256, is what the chart tests use on a machine
without Helm.)"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from support import REPO

from bridge.sim import brokers as mosquitto

GET_HELM = REPO / "tools" / "get_helm.py"


def fake_helm(directory: Path, version_line: str, marker: Path | None = None) -> Path:
    """A `helm` that answers `helm version --short` (and, if given, touches `marker` when run)."""
    directory.mkdir(parents=True, exist_ok=True)
    helm = directory / "helm"
    touch = f"touch '{marker}'\n" if marker else ""
    helm.write_text(f"#!/bin/sh\n{touch}echo '{version_line}'\n", encoding="utf-8")
    helm.chmod(0o755)
    return helm


def get_helm(tmp_path: Path, path: str, offline: bool = False
             ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("https_proxy", "http_proxy", "all_proxy", "no_proxy")}
    env.update(PATH=path, FLESPI_BRIDGE_CACHE=str(tmp_path / "cache"))
    if offline:  # every download goes to a loopback port where nothing listens
        env["https_proxy"] = env["HTTPS_PROXY"] = f"http://127.0.0.1:{mosquitto.free_port()}"
    return subprocess.run([sys.executable, str(GET_HELM)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)


def test_a_helm_3_on_path_comes_first(tmp_path: Path) -> None:
    helm = fake_helm(tmp_path / "bin", "v3.99.0+gfake")
    proc = get_helm(tmp_path, f"{helm.parent}:/usr/bin:/bin", offline=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(helm)
    assert not (tmp_path / "cache").exists(), "nothing downloaded or cached"


def test_offline_without_helm_is_a_clear_error(tmp_path: Path) -> None:
    """A Helm 2 on PATH does not count; a cached binary whose SHA-256 is not the pinned one is
    never run; and with no way to download, the message says what to do."""
    marker = tmp_path / "ran"
    fake_helm(tmp_path / "bin", "Client: v2.17.0+ga690bad")
    fake_helm(tmp_path / "cache" / "helm-v3.17.1", "v3.17.1+gtampered", marker)
    proc = get_helm(tmp_path, f"{tmp_path / 'bin'}:/usr/bin:/bin", offline=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists(), "a cached binary that fails its checksum was run"
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert "cannot be downloaded" in proc.stderr, proc.stderr
        assert "https://helm.sh/docs/intro/install/" in proc.stderr
    else:  # the pinned binary is linux-amd64: elsewhere it says to install Helm
        assert "install Helm 3 yourself" in proc.stderr, proc.stderr
