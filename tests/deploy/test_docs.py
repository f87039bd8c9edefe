"""The README and the documentation site (docs/, mkdocs.yml): a README a newcomer reads in
minutes, whose two commands are the ones CI runs; every page in the navigation; every option
and command documented; and `mkdocs build --strict` green (broken links and anchors, pages
outside the nav fail it). The build needs the `docs` extra, which .ci/run installs: in CI it
never skips."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

from bridge.app import cli
from bridge.config import settings as config

README = REPO / "README.md"
DOCS = REPO / "docs"
CI = REPO / ".ci" / "run"
MKDOCS = REPO / "mkdocs.yml"
DEMO = "pip install . && flespi-bridge demo"
TESTS = "pip install -e '.[test]' && python -m pytest"
MAX_README_LINES = 200


def readme() -> str:
    return README.read_text(encoding="utf-8")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def code_lines(markdown: str) -> list[str]:
    """The lines inside fenced code blocks."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def nav_pages(nav: Any) -> list[str]:
    """Every Markdown file the nav names, however deeply nested."""
    if isinstance(nav, str):
        return [nav] if nav.endswith(".md") else []
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    return []


def mkdocs_config() -> dict[str, Any]:
    loaded = yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


# -- the README ------------------------------------------------------------------------------

def test_readme_is_short() -> None:
    lines = len(readme().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/")


def test_readme_commands_are_the_ones_ci_runs() -> None:
    """The demo and the test command, word for word; .ci/run runs the test command verbatim
    (and the demo runs from the wheel in tests/deploy/test_package.py)."""
    commands = code_lines(readme())
    assert DEMO in commands, f"README.md lost its demo command {DEMO!r}"
    assert TESTS in commands, f"README.md lost its test command {TESTS!r}"
    ci = CI.read_text(encoding="utf-8").splitlines()
    assert TESTS in ci, f".ci/run no longer runs {TESTS!r}"
    marker = ci.index("# The README's test command:")
    assert ci[marker + 1] == TESTS
    # The pages that teach the same commands say them the same way.
    assert DEMO in code_lines(page("getting-started.md"))
    assert TESTS in code_lines(page("development.md"))
    # .ci/run installs the docs extra before the test command, and builds the site.
    install = next(i for i, line in enumerate(ci) if "-e '.[test,docs]'" in line)
    build = next(i for i, line in enumerate(ci) if "mkdocs build --strict" in line)
    assert install < build < ci.index(TESTS)
    assert ci[build - 2] == "lint-imports"


def test_readme_links_resolve() -> None:
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme())
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_links_every_page_in_the_nav() -> None:
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", readme()))
    pages = set(nav_pages(mkdocs_config()["nav"]))
    # The README lists the site's pages; the decision records are reached from their index.
    expected = {p for p in pages if not p.startswith("decisions/") or p == "decisions/index.md"}
    assert expected - {"index.md"} <= linked, sorted(expected - linked)


# -- the site --------------------------------------------------------------------------------

def test_every_page_is_in_the_nav() -> None:
    nav = nav_pages(mkdocs_config()["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == on_disk, (
        f"not in mkdocs.yml's nav: {sorted(set(on_disk) - set(nav))}; "
        f"in the nav but missing: {sorted(set(nav) - set(on_disk))}")
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_site_is_strict_and_offline() -> None:
    """Warnings fail the build; nothing is fetched at build time (no web fonts, no social
    cards), so it builds where only PyPI is reachable."""
    conf = mkdocs_config()
    assert conf["strict"] is True
    assert conf["validation"] == {"omitted_files": "warn", "not_found": "warn",
                                  "absolute_links": "warn", "unrecognized_links": "warn",
                                  "anchors": "warn"}
    assert conf["theme"]["name"] == "material"
    assert conf["theme"]["font"] is False
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in conf.get("plugins", [])]
    assert set(plugins) <= {"search"}, plugins


def test_every_page_says_what_it_is_for() -> None:
    """Each page opens with its title, then a sentence saying what it is for."""
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), path
        assert lines[1] == "", path
        assert lines[2], path
        assert not lines[2].startswith(("#", "|", "`", "-")), path


def test_every_option_is_in_the_configuration_reference() -> None:
    text = page("configuration.md")
    missing = []
    for section, field in config.Settings.model_fields.items():
        model = field.annotation
        assert model is not None
        for key in getattr(model, "model_fields", {}):
            name = f"{section}.{key}"
            if not any(f"`{name}{end}" in text for end in ("`", ".", '"')):
                missing.append(name)
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_every_command_is_in_the_command_line_page() -> None:
    text = page("cli.md")
    subparsers = next(a for a in cli.parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    commands = sorted(subparsers.choices)
    assert {"run", "check-config", "demo", "simulate", "track"} <= set(commands)
    missing = [c for c in commands if f"`flespi-bridge {c}" not in text]
    assert not missing, f"docs/cli.md does not document {missing}"


def test_mqtt_package_names_its_decision_record() -> None:
    """bridge/mqtt's docstring sends readers to the record of why the client is our own."""
    doc = (REPO / "bridge" / "mqtt" / "__init__.py").read_text(encoding="utf-8")
    record = "docs/decisions/0001-own-local-mqtt-client.md"
    assert record in doc
    text = (REPO / record).read_text(encoding="utf-8")
    for figure in ("~4 µs", "~9 µs", "60+ µs", "0.5 µs", "0.16 µs"):
        assert figure in text, figure


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or \
            importlib.util.find_spec("material") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: .ci/run installs the docs extra "
                        "(pip install -e '.[test,docs]')")
        pytest.skip("the docs extra is not installed: pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    built = {p.relative_to(tmp_path / "site").as_posix()
             for p in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "architecture/index.html",
            "decisions/0001-own-local-mqtt-client/index.html"} <= built
