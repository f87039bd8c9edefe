"""CI check of the core's shape (issue "A core you can trust"): no module of `bridge/` over
400 lines, and `bridge/service.py`, which only builds and wires the parts, at most 200."""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT, SERVICE_LIMIT = 400, 200


def main() -> int:
    root = Path(__file__).resolve().parent.parent / "bridge"
    problems = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = SERVICE_LIMIT if path.name == "service.py" and path.parent == root else LIMIT
        if lines > limit:
            problems.append(f"{path.relative_to(root.parent)}: {lines} lines (limit {limit})")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
