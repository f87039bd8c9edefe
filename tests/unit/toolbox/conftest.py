"""The toolbox's fixtures: the simulator's REST API over HTTP on loopback (no broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.toolbox_helpers import Api, start_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a
