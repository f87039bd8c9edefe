"""A Debian root filesystem holding a Python this machine lacks, to run programs in.

Home Assistant's newest releases need a newer Python than the project's machines (Debian 12,
Python 3.11) carry. `build(root, suite, python, log)` debootstraps a minimal Debian `suite`
(e.g. `unstable`, whose `python3.14` Home Assistant 2026.11 needs) with that Python, its
venv module, CA certificates and time zones, from Debian's signed archive; `command(root,
argv, binds)` runs a program inside it: its own mount namespace (`unshare --mount`, so the
mounts vanish with the process and nothing is left mounted on the host), /proc mounted,
host directories bound at given paths, then `chroot`. The network is the host's: a server in
the root listening on 127.0.0.1 is reached from the host as usual. Each step `exec`s the
next, so the PID of the command is the PID of the program (it is stopped by that PID).

Needs root, `debootstrap` and `unshare`/`chroot` (util-linux, coreutils); `.ci/run` installs
debootstrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
TIMEOUT = 1800
# Never read by a program run in the root: trimmed after the build.
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/info", "usr/share/locale")


class ChrootError(RuntimeError):
    """The root could not be built."""


def packages(python: tuple[int, int]) -> list[str]:
    name = "python{}.{}".format(*python)
    return [name, f"{name}-venv", "ca-certificates", "tzdata"]


def build(root: Path, suite: str, python: tuple[int, int], log: Path) -> str:
    """Debootstrap `suite` with `python` into `root` (replacing what is there); returns the
    Debian version of the Python package installed (for the cache's stamp)."""
    if os.geteuid() != 0:
        raise ChrootError("building a Debian root needs root (debootstrap, chroot)")
    if not Path(DEBOOTSTRAP).exists():
        raise ChrootError("debootstrap is missing (apt-get install debootstrap)")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    cmd = [DEBOOTSTRAP, "--variant=minbase", f"--include={','.join(packages(python))}",
           suite, str(root), MIRROR]
    run_logged(cmd, log)
    for part in TRIM:
        shutil.rmtree(root / part, ignore_errors=True)
    # name resolution and TLS trust for pip inside the root: the host's (a build machine
    # behind a TLS-inspecting proxy trusts its CA there)
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        shutil.copyfile(bundle, root / bundle.relative_to("/"))
    name = "python{}.{}".format(*python)
    version = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f=${Version}", name],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    return version


def run_logged(cmd: list[str], log: Path, timeout: float = TIMEOUT) -> None:
    """Run `cmd` with its output appended to `log`; ChrootError with the log's tail if it
    fails."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False)
    if done.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise ChrootError(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{tail}")


def command(root: Path, argv: list[str], binds: dict[Path, str] | None = None) -> list[str]:
    """`argv` run inside `root`, with each host directory of `binds` mounted at its path in
    the root (created if missing)."""
    script = ['set -e', 'mount -t proc proc "$1/proc"']
    args = [str(root)]
    for host, inside in (binds or {}).items():
        (root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        script.append(f'mount --bind "${{{len(args) + 1}}}" "$1/${{{len(args) + 2}}}"')
        args += [str(host), inside.lstrip("/")]
    script.append(f'root="$1"; shift {len(args)}; exec chroot "$root" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            "; ".join(script), "sh", *args, *argv]
