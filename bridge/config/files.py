"""File options of the configuration: why a file cannot serve (named by path; the TLS contexts
built from them are `bridge.config.tls`). Checked when the settings load, so `check-config`
and `run` refuse what would fail later (`load(..., check_files=False)` skips them for a
configuration meant for another machine, such as a Helm chart's ConfigMap).
"""

from __future__ import annotations

import re
import ssl
import stat
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from pydantic_core import PydanticCustomError

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a configuration file (names the path), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as exc:
        return f"cannot access {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special file")
        return f"not a regular file: {path} ({kind})"
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _ssl_reason(exc: ssl.SSLError) -> str:
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def ca_problem(path: Path) -> str | None:
    """Why `path` holds no usable PEM certificate (a CA bundle, or a client certificate),
    or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        return f"not a PEM certificate: {path} ({_ssl_reason(exc)})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


# A client certificate is read the same way; its key is checked against it by key_problem.
cert_problem = ca_problem


def key_problem(key: Path, cert: Path) -> str | None:
    """Why `key` is not the unencrypted PEM private key of the certificate `cert`, or None."""
    asked: list[bool] = []

    def no_password() -> bytes:  # never prompt on a terminal: refuse encrypted keys
        asked.append(True)
        return b""

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(key), password=no_password)
    except ssl.SSLError as exc:
        if asked:
            return f"encrypted private keys are not supported: {key}"
        if "KEY_VALUES_MISMATCH" in str(exc):
            return f"not the private key of the certificate in cert_file: {key}"
        return f"not a PEM private key: {key} ({_ssl_reason(exc)})"
    except OSError as exc:
        return f"cannot read {key}: {exc.strerror or exc}"
    return None


# False while `load(..., check_files=False)` validates a configuration meant for another
# machine (a Helm chart's ConfigMap): file options are then not looked at.
CHECK_FILES: ContextVar[bool] = ContextVar("flespi_bridge_check_files", default=True)


def checked(path: Path | None, in_use: bool, content: Callable[[Path], str | None]
            ) -> Path | None:
    """A field validator's work for a file option: the file must be readable, and where the
    option is `in_use`, its `content` must pass too."""
    if path is not None:
        refuse(file_problem(path))
        if in_use:
            refuse(content(path))
    return path


def refuse(problem: str | None) -> None:
    if problem is not None and CHECK_FILES.get():
        raise PydanticCustomError("config_file", "{problem}", {"problem": problem})
