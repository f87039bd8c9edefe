"""The version a release's files name, and whether they agree: the newest `## [X.Y.Z] - date`
section of CHANGELOG.md, the chart's `appVersion`, the add-on's `version` and the version its
Dockerfile installs. The package's own version comes from the git tag (setuptools-scm), so
these files are what a tag must match.

    python tools/release_version.py              # prints X.Y.Z, or says which file disagrees
    python tools/release_version.py --tag vX.Y.Z # and fails unless the tag is vX.Y.Z

The release workflow runs the second form before it builds anything; the deploy tests the
first. Standard library only (the workflow's runner has nothing else)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (file, pattern whose group 1 is the version it names)
SOURCES = (
    ("CHANGELOG.md", r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$"),
    ("charts/flespi-bridge/Chart.yaml", r'^appVersion: "?([^"\s]+)"?$'),
    ("homeassistant-addon/flespi-bridge/config.yaml", r'^version: "?([^"\s]+)"?$'),
    ("homeassistant-addon/flespi-bridge/Dockerfile", r"^ARG BRIDGE_VERSION=(\S+)$"),
)


def named(root: Path = REPO) -> dict[str, str | None]:
    """Each file's version (the first match: the changelog's newest release), None if none."""
    found: dict[str, str | None] = {}
    for name, pattern in SOURCES:
        match = re.search(pattern, (root / name).read_text(encoding="utf-8"), re.M)
        found[name] = match[1] if match else None
    return found


def problems(root: Path = REPO, tag: str | None = None) -> tuple[str | None, list[str]]:
    """(the release version, what is wrong): the files must name one version, and a tag
    must be v<that version>."""
    found = named(root)
    wrong = [f"{name} names no version" for name, version in found.items() if version is None]
    versions = {v for v in found.values() if v}
    if len(versions) > 1:
        wrong.append("the release files disagree: " + ", ".join(
            f"{name} {version}" for name, version in found.items()))
    version = found[SOURCES[0][0]]
    if tag is not None and not wrong and tag != f"v{version}":
        wrong.append(f"tag {tag} is not v{version} (the version the release files name: "
                     "add its CHANGELOG section and bump the chart and the add-on first)")
    return version, wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", help="the git tag being released (vX.Y.Z)")
    args = parser.parse_args(argv)
    version, wrong = problems(tag=args.tag)
    for line in wrong:
        print(f"error: {line}", file=sys.stderr)
    if wrong:
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
