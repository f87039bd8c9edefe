"""The toolbox's subcommands in the CLI: their optional libraries imported only when used."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_loads_without_the_tools_extra() -> None:
    """`run`, `demo` and the rest must work from a plain `pip install`: the toolbox's
    optional libraries are imported only by the commands that use them."""
    hide = "; ".join(f"sys.modules[{m!r}] = None" for m in
                     ("tqdm", "gpxpy", "simplekml", "matplotlib", "folium"))
    code = (f"import sys; {hide}; from bridge.app.cli import parser; "
            "args = parser().parse_args(['track', '7', '--from=-1h']); print(args.device)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"
