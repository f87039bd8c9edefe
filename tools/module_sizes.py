"""CI check of the layout (issue "A house a newcomer can read"): no module of `bridge/` over
400 lines; the wiring module (`bridge/app/bridge.py`), which only builds, connects, starts and
stops the parts, at most 200; directly under `bridge/` only `__init__.py`, `__main__.py` and
the two shared leaves (`exceptions.py`, `logs.py`); a docstring on every sub-package
saying what it owns and what it may import; and no constructor (`__init__`) taking more
than 6 parameters besides `self` (keyword-only ones count too): group settings objects
instead."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT, WIRING_LIMIT = 400, 200
MAX_PARAMETERS = 6
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
    found += wide_constructors(root)
    return found


def _parameters(init: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = init.args
    count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
    count += (a.vararg is not None) + (a.kwarg is not None)
    return count - 1  # self


def wide_constructors(root: Path = ROOT) -> list[str]:
    """Classes whose `__init__` takes more than `MAX_PARAMETERS` parameters besides `self`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if not (isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                        and item.name == "__init__"):
                    continue
                count = _parameters(item)
                if count <= MAX_PARAMETERS:
                    continue
                found.append(f"{name}:{item.lineno}: {node.name}.__init__ takes {count} "
                             f"parameters besides self (limit {MAX_PARAMETERS}): group "
                             "settings or collaborators into an object")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
