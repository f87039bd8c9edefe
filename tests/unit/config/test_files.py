"""File options (`flespi.token_file`, `flespi.ca_file`, `local.ca_file`, `local.cert_file`,
`local.key_file`): a file that is missing, not a regular file, unreadable, or (TLS material in
use) not PEM is a configuration error that `check-config` and `run` both refuse with exit
status 2, naming the option and the path."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trustme
from cryptography.hazmat.primitives import serialization
from support.helpers import PYTHON, TOKEN, bridge_env

from bridge.config import settings as config
from bridge.config import tls
from bridge.exceptions import ConfigError

OPTIONS = ["local.ca_file", "local.cert_file", "local.key_file", "flespi.ca_file",
           "flespi.token_file"]
PEM_OPTIONS = OPTIONS[:4]


@dataclass
class Files:
    """Valid files for every option, made by the test."""

    directory: Path
    ca: Path
    cert: Path
    key: Path
    token: Path
    other_key: Path  # the key of another certificate
    encrypted_key: Path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    ca = trustme.CA()
    leaf = ca.issue_cert("flespi-bridge.test")
    other = ca.issue_cert("someone-else.test")
    d = tmp_path / "files"
    d.mkdir()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(d / "client.crt"))
    leaf.private_key_pem.write_to_path(str(d / "client.key"))
    other.private_key_pem.write_to_path(str(d / "other.key"))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    (d / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    (d / "token").write_text(TOKEN + "\n")
    return Files(d, d / "ca.pem", d / "client.crt", d / "client.key", d / "token",
                 d / "other.key", d / "encrypted.key")


def sections(files: Files, **changes: Any) -> dict[str, dict[str, Any]]:
    """A configuration whose every file option is in use and valid, with `changes`
    (`"local.ca_file": path`, or None to leave an option out)."""
    conf: dict[str, dict[str, Any]] = {
        "flespi": {"token_file": str(files.token), "host": "127.0.0.1", "port": 9,
                   "tls": True, "ca_file": str(files.ca)},
        "local": {"host": "127.0.0.1", "port": 9, "tls": True, "ca_file": str(files.ca),
                  "cert_file": str(files.cert), "key_file": str(files.key)},
        "metrics": {"enabled": False},
    }
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        if value is None:
            conf[section].pop(key, None)
        else:
            conf[section][key] = str(value) if isinstance(value, Path) else value
    return conf


def write_config(tmp_path: Path, conf: dict[str, dict[str, Any]]) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(tomli_w.dumps(conf))
    return path


def problems(tmp_path: Path, conf: dict[str, dict[str, Any]]) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        config.load(write_config(tmp_path, conf))
    # without the file and line the reason ends with (tests/unit/config/test_report.py)
    return {key: re.sub(r" \([^()]*, line \d+\)$", "", reason)
            for key, reason in err.value.problems}


# -- bad files: each makes a path that must be refused, returns the expected reason ---------

def missing(tmp_path: Path, option: str) -> tuple[Path, str]:
    return tmp_path / "nowhere" / "absent.pem", "file not found"


def directory(tmp_path: Path, option: str) -> tuple[Path, str]:
    path = tmp_path / "a-directory"
    path.mkdir()
    return path, "not a regular file"


def fifo(tmp_path: Path, option: str) -> tuple[Path, str]:
    # opening a FIFO for reading blocks until a writer comes: it must never be opened
    path = tmp_path / "a-fifo"
    os.mkfifo(path)
    return path, "not a regular file"


def garbage(tmp_path: Path, option: str) -> tuple[Path, str]:
    path = tmp_path / "garbage.pem"
    if option == "flespi.token_file":
        path.write_text("  \n")  # any text is a token; only an empty file is garbage
        return path, "empty file"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                     b"-----END CERTIFICATE-----\n" if option != "local.key_file"
                     else b"this is not a key\n")
    expected = {"local.key_file": "not a PEM private key"}.get(option, "not a PEM certificate")
    return path, expected


BAD: dict[str, Callable[[Path, str], tuple[Path, str]]] = {
    "missing": missing, "directory": directory, "fifo": fifo, "garbage": garbage,
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("option", OPTIONS)
def test_a_bad_file_is_a_problem_naming_option_and_path(
        tmp_path: Path, files: Files, option: str, kind: str) -> None:
    path, reason = BAD[kind](tmp_path, option)
    found = problems(tmp_path, sections(files, **{option: path}))
    assert option in found, found
    assert reason in found[option]
    assert str(path) in found[option]
    # the problem is reported once, on the option: not as a missing token or on the section
    assert set(found) == {option}, found


def test_valid_files_load_and_give_tls_contexts(tmp_path: Path, files: Files) -> None:
    settings = config.load(write_config(tmp_path, sections(files)))
    assert settings.flespi.token.get_secret_value() == TOKEN
    local = tls.local_tls_context(settings.local)
    assert local is not None
    assert local.verify_mode == ssl.CERT_REQUIRED
    assert local.check_hostname
    assert [c["subject"] for c in local.get_ca_certs()] == [
        c["subject"] for c in _ca_certs(files.ca)]
    upstream = tls.flespi_tls_context(settings.flespi)
    assert upstream is not None
    assert upstream.verify_mode == ssl.CERT_REQUIRED
    assert upstream.check_hostname
    assert len(upstream.get_ca_certs()) == 1

    insecure = settings.local.model_copy(update={"tls_insecure": True})
    ctx = tls.local_tls_context(insecure)
    assert ctx is not None
    assert not ctx.check_hostname
    assert tls.local_tls_context(settings.local.model_copy(update={"tls": False})) is None
    assert tls.flespi_tls_context(settings.flespi.model_copy(update={"tls": False})) is None


def _ca_certs(path: Path) -> list[dict[str, Any]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(path))
    return ctx.get_ca_certs()


def test_a_key_that_is_not_the_certificates(tmp_path: Path, files: Files) -> None:
    found = problems(tmp_path, sections(files, **{"local.key_file": files.other_key}))
    assert set(found) == {"local.key_file"}
    assert "not the private key of the certificate" in found["local.key_file"]
    assert str(files.other_key) in found["local.key_file"]


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path, files: Files) -> None:
    found = problems(tmp_path, sections(files, **{"local.key_file": files.encrypted_key}))
    assert set(found) == {"local.key_file"}
    assert found["local.key_file"] == (
        f"encrypted private keys are not supported: {files.encrypted_key}")


def test_pem_content_matters_only_where_tls_uses_it(tmp_path: Path, files: Files) -> None:
    # Decision: a file that is set is always checked to exist and be readable (a wrong path
    # is a mistake waiting for the day TLS is turned on), its PEM content only in use.
    bad, _ = garbage(tmp_path, "local.ca_file")
    conf = sections(files, **{"local.tls": False, "local.ca_file": bad,
                              "flespi.tls": False, "flespi.ca_file": bad})
    settings = config.load(write_config(tmp_path, conf))
    assert settings.local.ca_file == bad
    assert settings.flespi.ca_file == bad

    gone = tmp_path / "gone.pem"
    conf = sections(files, **{"local.tls": False, "local.ca_file": gone,
                              "flespi.tls": False, "flespi.ca_file": gone})
    assert set(problems(tmp_path, conf)) == {"local.ca_file", "flespi.ca_file"}


def test_a_token_file_is_checked_even_beside_a_token(tmp_path: Path, files: Files) -> None:
    gone = tmp_path / "no-token"
    found = problems(tmp_path, sections(files, **{"flespi.token": "x" * 20,
                                                  "flespi.token_file": gone}))
    assert found == {"flespi.token_file": f"file not found: {gone}"}


def test_every_file_problem_is_listed_at_once(tmp_path: Path, files: Files) -> None:
    gone = tmp_path / "gone"
    conf = sections(files, **{option: gone for option in OPTIONS})
    conf["local"]["qos"] = 7
    found = problems(tmp_path, conf)
    assert set(found) == {*OPTIONS, "local.qos"}
    assert all(found[option] == f"file not found: {gone}" for option in OPTIONS)


# -- through the command line ----------------------------------------------------------------

def _without_dac_capabilities() -> list[str]:
    """As root, chmod 000 does not stop reading: run the command as root without the
    capabilities that bypass file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed: "
                    "a chmod 000 file stays readable to root")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def unreadable(tmp_path: Path, option: str) -> tuple[Path, str]:
    """Unreadable to the command run with `_without_dac_capabilities()`."""
    path = tmp_path / "unreadable.pem"
    path.write_text("whatever\n")
    path.chmod(0)
    return path, "cannot read"


BAD_CLI = {**BAD, "unreadable": unreadable}


def cli(command: str, config_path: Path, *, prefix: list[str] | None = None
        ) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run([*(prefix or []), PYTHON, "-m", "bridge", command,
                             "--config", str(config_path)],
                            capture_output=True, text=True, env=bridge_env(), timeout=60)
    return result, time.monotonic() - start


def assert_refused(result: subprocess.CompletedProcess[str], option: str, path: Path,
                   reason: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0] == "error: 1 problem(s) in the configuration", result.stderr
    assert any(line.startswith(f"{option}: {reason}") and str(path) in line
               for line in lines[1:]), result.stderr
    assert TOKEN not in result.stderr


def test_the_root_work_around_makes_chmod_000_unreadable(tmp_path: Path) -> None:
    """The root work-around really makes a chmod 000 file unreadable (else the unreadable
    cases below would pass for the wrong reason)."""
    prefix = _without_dac_capabilities()
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0)
    probe = subprocess.run([*prefix, PYTHON, "-c", f"open({str(path)!r}).read()"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1, probe.stderr
    assert "PermissionError" in probe.stderr


@pytest.mark.parametrize("kind", ["missing", "directory", "garbage", "unreadable"])
@pytest.mark.parametrize("option", OPTIONS)
def test_check_config_refuses(tmp_path: Path, files: Files, option: str, kind: str) -> None:
    prefix = _without_dac_capabilities() if kind == "unreadable" else []
    path, reason = BAD_CLI[kind](tmp_path, option)
    conf_path = write_config(tmp_path, sections(files, **{option: path}))
    result, _ = cli("check-config", conf_path, prefix=prefix)
    assert_refused(result, option, path, reason)


@pytest.mark.parametrize("kind", ["missing", "garbage", "unreadable"])
@pytest.mark.parametrize("option", OPTIONS)
def test_run_refuses_at_once(tmp_path: Path, files: Files, option: str, kind: str) -> None:
    prefix = _without_dac_capabilities() if kind == "unreadable" else []
    path, reason = BAD_CLI[kind](tmp_path, option)
    conf_path = write_config(tmp_path, sections(files, **{option: path}))
    result, elapsed = cli("run", conf_path, prefix=prefix)
    assert_refused(result, option, path, reason)
    assert elapsed < 20  # it never got as far as connecting


def test_run_refuses_a_fifo_without_hanging(tmp_path: Path, files: Files) -> None:
    path, reason = fifo(tmp_path, "local.ca_file")
    result, elapsed = cli("run", write_config(tmp_path, sections(files, **{
        "local.ca_file": path})))
    assert_refused(result, "local.ca_file", path, reason)
    assert elapsed < 20


def test_check_config_no_file_checks_for_another_machines_config(
        tmp_path: Path, files: Files) -> None:
    """A Helm chart's ConfigMap names files that exist only in the pod."""
    gone = tmp_path / "only-in-the-pod"
    conf = sections(files, **{"flespi.token": TOKEN, "flespi.token_file": None,
                              **{option: gone for option in PEM_OPTIONS}})
    path = write_config(tmp_path, conf)
    assert set(problems(tmp_path, conf)) == set(PEM_OPTIONS)
    settings = config.load(path, check_files=False)
    assert settings.local.ca_file == gone
    result = subprocess.run([PYTHON, "-m", "bridge", "check-config", "--no-file-checks",
                             "--config", str(path)],
                            capture_output=True, text=True, env=bridge_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok\n")
    # only check-config has the switch: run never starts with files it cannot read
    run = subprocess.run([PYTHON, "-m", "bridge", "run", "--no-file-checks",
                          "--config", str(path)],
                         capture_output=True, text=True, env=bridge_env(), timeout=60)
    assert run.returncode == 2
    assert "unrecognized arguments: --no-file-checks" in run.stderr
