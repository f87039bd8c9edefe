"""CI check of the layout (issue "A house a newcomer can read"): no module of `bridge/` over
400 lines; the wiring module (`bridge/app/bridge.py`), which only builds, connects, starts and
stops the parts, at most 200; directly under `bridge/` only `__init__.py`, `__main__.py` and
the two shared leaves (`exceptions.py`, `logs.py`); and a docstring on every sub-package
saying what it owns and what it may import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT, WIRING_LIMIT = 400, 200
ROOT = Path(__file__).resolve().parent.parent / "bridge"
WIRING = ROOT / "app" / "bridge.py"
TOP_LEVEL = {"__init__.py", "__main__.py", "exceptions.py", "logs.py"}


def problems(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = WIRING_LIMIT if path == WIRING else LIMIT
        if lines > limit:
            found.append(f"{path.relative_to(root.parent)}: {lines} lines (limit {limit})")
    for path in sorted(root.glob("*.py")):
        if path.name not in TOP_LEVEL:
            found.append(f"{path.relative_to(root.parent)}: a module directly under bridge/ "
                         "(put it in the sub-package that owns its concern)")
    for init in sorted(root.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        if not doc or "import" not in doc:
            found.append(f"{init.relative_to(root.parent)}: no docstring saying what the "
                         "package owns and what it may import")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
