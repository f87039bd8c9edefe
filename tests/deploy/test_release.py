"""What a release is made of, checked by the tools that will read it: the release workflow by
actionlint, the compose quick start by `docker-compose config`, the systemd unit by
`systemd-analyze verify`, the changelog by its Keep a Changelog shape, and the add-on's
Dockerfile by hadolint (it installs a wheel from wheels/ when there is one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from support import REPO

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
COMPOSE = REPO / "compose.yaml"
UNIT = REPO / "deploy" / "systemd" / "flespi-bridge.service"
CHANGELOG = REPO / "CHANGELOG.md"
ADDON = REPO / "homeassistant-addon" / "flespi-bridge"


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"`{name}` is not installed (.ci/run installs it)"
    return found


def test_actionlint_passes_the_release_workflow() -> None:
    result = subprocess.run([tool("actionlint"), str(WORKFLOW)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_find_problems(tmp_path: Path) -> None:
    """The check above could not pass on a broken workflow."""
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text(encoding="utf-8").replace(
        "runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    needs: nowhere", 1))
    result = subprocess.run([tool("actionlint"), str(broken)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0


def test_the_release_builds_both_architectures_and_publishes_with_trusted_publishing() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    image = next(s for s in jobs["image"]["steps"]
                 if s.get("uses", "").startswith("docker/build-push-action"))
    assert image["with"]["platforms"] == "linux/amd64,linux/arm64"
    build = yaml.safe_load((ADDON / "build.yaml").read_text(encoding="utf-8"))
    arches = {entry["arch"] for entry in jobs["addon"]["strategy"]["matrix"]["include"]}
    assert arches == set(build["build_from"])


def test_the_compose_file_is_valid(tmp_path: Path) -> None:
    result = subprocess.run([tool("docker-compose"), "-f", str(COMPOSE), "config"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={"FLESPI_TOKEN": "not-a-token", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"bridge", "mosquitto", "prometheus", "grafana"}
    mounts = " ".join(str(v) for s in services.values() for v in s.get("volumes", []))
    for path in ("deploy/compose/config.toml", "deploy/compose/prometheus.yml",
                 "monitoring/alerts.yml", "monitoring/grafana-dashboard.json",
                 "deploy/compose/grafana/provisioning"):
        assert (REPO / path).exists()
        assert path in mounts
    # ports on loopback only
    assert all("127.0.0.1" in str(p) for s in services.values() for p in s.get("ports", []))


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    """What the compose Grafana would load, checked where it cannot run (no Debian package,
    no Docker Hub): the provider's folder is where compose.yaml mounts the dashboard, the
    data source is the compose Prometheus, and the dashboard is a dashboard."""
    grafana = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = REPO / "deploy" / "compose" / "grafana" / "provisioning"
    assert mounts["./deploy/compose/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "flespi-bridge.yml").read_text(
        encoding="utf-8"))["providers"]
    dashboard_mount = mounts["./monitoring/grafana-dashboard.json"]
    assert Path(dashboard_mount).parent.as_posix() == provider["options"]["path"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(
        encoding="utf-8"))["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((REPO / "monitoring" / "grafana-dashboard.json").read_text(
        encoding="utf-8"))
    assert dashboard["panels"]
    assert dashboard["title"]


def test_the_compose_file_needs_the_token() -> None:
    result = subprocess.run([tool("docker-compose"), "-f", str(COMPOSE), "config"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "set FLESPI_TOKEN" in result.stderr


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(UNIT)],
                            capture_output=True, text=True, timeout=120)
    # the ExecStart binary does not exist on this machine: the only complaint allowed
    problems = [line for line in result.stderr.splitlines()
                if line.strip() and "/opt/flespi-bridge/bin/flespi-bridge" not in line]
    assert problems == [], result.stderr


def release_version(*args: str, root: Path = REPO) -> subprocess.CompletedProcess[str]:
    """tools/release_version.py as the release workflow runs it, on `root`'s files."""
    return subprocess.run([sys.executable, str(root / "tools" / "release_version.py"), *args],
                          capture_output=True, text=True, timeout=60, cwd=root)


def test_the_changelog_keeps_a_changelog() -> None:
    text = CHANGELOG.read_text(encoding="utf-8")
    assert "## [Unreleased]" in text
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", text, re.M)
    assert versions
    for version in versions:
        assert re.search(rf"^\[{re.escape(version)}\]: https://", text, re.M)
    # The release files (the chart's appVersion, the add-on's version and what its Dockerfile
    # installs from PyPI) name the changelog's newest release.
    result = release_version()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == versions[0]


def test_a_release_tag_must_be_the_version_the_files_name(tmp_path: Path) -> None:
    version = release_version().stdout.strip()
    assert release_version("--tag", f"v{version}").returncode == 0
    wrong = release_version("--tag", "v99.0.0")
    assert wrong.returncode == 1
    assert f"tag v99.0.0 is not v{version}" in wrong.stderr
    # A chart bumped without the add-on: which file says what.
    for name in ("CHANGELOG.md", "charts/flespi-bridge/Chart.yaml",
                 "homeassistant-addon/flespi-bridge/config.yaml",
                 "homeassistant-addon/flespi-bridge/Dockerfile", "tools/release_version.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    chart = tmp_path / "charts/flespi-bridge/Chart.yaml"
    chart.write_text(chart.read_text(encoding="utf-8").replace(
        f'appVersion: "{version}"', 'appVersion: "9.9.9"'), encoding="utf-8")
    disagree = release_version("--tag", f"v{version}", root=tmp_path)
    assert disagree.returncode == 1
    assert "charts/flespi-bridge/Chart.yaml 9.9.9" in disagree.stderr


def test_the_addon_installs_a_wheel_from_its_folder() -> None:
    dockerfile = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY wheels/ /tmp/wheels/" in dockerfile
    assert "--find-links /tmp/wheels" in dockerfile
    assert (ADDON / "wheels").is_dir()
    result = subprocess.run([tool("hadolint"), "--failure-threshold", "warning", "-"],
                            input=dockerfile, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
