"""Shared test support: real brokers and bridge processes (`helpers`), the in-memory local
transport, the Home Assistant harness, the add-on schema checks and the toolbox's REST
stand-in. Imported as `support.<module>` (pytest puts `tests/` on the path)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
