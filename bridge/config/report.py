"""Configuration problems in plain words: pydantic's errors turned into `(option, reason)`
pairs a person can act on.

- The option is its dotted name (`flespi.devices`, `commands.profiles.12[1]`), never a
  pydantic type tag (`literal['all']`, `list[constrained-int]`); the reason ends with where the
  value came from: the TOML file and line, the environment variable, or the secrets file.
- A union's alternatives become one reason (`should be 'all' or a valid list`), pydantic's
  `Value error, ` prefix goes, and an unknown option or section gets a "did you mean".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

# The names pydantic gives a union's members in an error's location.
_TYPE_TAGS = frozenset({
    "str", "int", "float", "bool", "list", "dict", "none", "constrained-int",
    "constrained-str", "constrained-float", "is-instance", "lax-or-strict", "json-or-python",
})
_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                       r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _unquote_path(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p.strip("\"'") for p in parts)


def toml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Each table and key of a TOML document, as a path, to the line (1-based) that sets it."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        if header := _TOML_HEADER.match(line):
            table = _unquote_path(header.group(1))
            lines.setdefault(table, number)
        elif key := _TOML_KEY.match(line):
            lines.setdefault((*table, *_unquote_path(key.group(1))), number)
    return lines


@dataclass
class Origins:
    """Where the values came from, to say where a bad one was set (highest precedence first:
    the environment, then explicit overrides, the secrets directory, the file)."""

    path: Path | None = None
    file_lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    secrets_dir: Path | None = None
    secrets: frozenset[tuple[str, str]] = frozenset()
    environment: Mapping[str, str] | None = None
    env_prefix: str = "FLESPI_BRIDGE_"

    @classmethod
    def of_file(cls, path: Path | None, text: str, **kwargs: Any) -> Origins:
        return cls(path=path, file_lines=toml_lines(text), **kwargs)

    def where(self, loc: tuple[str, ...]) -> str:
        if len(loc) >= 2 and self.environment is not None:
            name = f"{self.env_prefix}{loc[0]}__{loc[1]}".upper()
            if any(key.upper() == name for key in self.environment):
                return f"environment variable {name}"
        if len(loc) >= 2 and (loc[0], loc[1]) in self.secrets and self.secrets_dir:
            return f"secrets file {self.secrets_dir / f'{loc[0]}__{loc[1]}'}"
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.file_lines and self.path is not None:
                return f"{self.path}, line {self.file_lines[loc[:end]]}"
        return ""


def _path(loc: tuple[int | str, ...]) -> tuple[tuple[str, ...], str]:
    """The location without type tags, as parts and as a dotted name (list items `[i]`)."""
    parts: list[str] = []
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
            continue
        if "[" in part or part in _TYPE_TAGS:
            continue
        parts.append(part)
        name += f".{part}" if name else part
    return tuple(parts), name or "(root)"


def _reason(message: str) -> str:
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("Input should be", "should be")
    return message


def _fields(model: type[BaseModel], parts: tuple[str, ...]) -> list[str]:
    """The option names beside `parts[-1]` (the known keys of its section)."""
    for part in parts[:-1]:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _union(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], bool]:
    """The location up to a union's type tag, and whether the error lies deeper than the
    tag (inside the alternative whose shape matched, e.g. one item of a list)."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and ("[" in part or part in _TYPE_TAGS):
            return loc[:i], len(loc) > i + 1
    return loc, False


def problems(exc: ValidationError, model: type[BaseModel], origins: Origins
             ) -> list[tuple[str, str]]:
    """Every problem once, as (option, `reason (where it was set)`); a union's failed
    alternatives joined into one reason, or, where one alternative matched in shape and failed
    inside (a list with a bad item), that alternative's problems alone."""
    errors = exc.errors(include_url=False, include_input=False)
    deeper = {_union(tuple(e["loc"]))[0] for e in errors if _union(tuple(e["loc"]))[1]}
    merged: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    for err in errors:
        union, inside = _union(tuple(err["loc"]))
        if union in deeper and not inside:
            continue
        parts, name = _path(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            known = _fields(model, parts)
            kind = "unknown option" if len(parts) > 1 else "unknown section"
            close = difflib.get_close_matches(parts[-1], known, n=1, cutoff=0.6) if parts else []
            reason = f"{kind}; did you mean {close[0]!r}?" if close else kind
        elif err["type"] == "missing":
            reason = "missing"
        else:
            reason = _reason(err["msg"])
        entry = merged.setdefault(name, (parts, []))
        if reason not in entry[1]:
            entry[1].append(reason)
    result = []
    for name, (parts, reasons) in merged.items():
        alternatives = [reasons[0], *(r.removeprefix("should be ") for r in reasons[1:])]
        where = "" if reasons == ["missing"] else origins.where(parts)  # nowhere: not set
        reason = " or ".join(alternatives)
        result.append((name, f"{reason} ({where})" if where else reason))
    return result
