"""Each pinned Home Assistant release (`homeassistant_harness.RELEASES`) for the real-HA
tests: a test taking `homeassistant` runs once per release."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.homeassistant_harness import RELEASES, HomeAssistant, Runtime, ensure, running


@pytest.fixture(scope="session", params=RELEASES, ids=lambda r: f"ha{r.version}")
def ha_runtime(request: pytest.FixtureRequest) -> Runtime:
    """The release installed (cached; built on first use). A failure fails the test."""
    return ensure(request.param)


@pytest.fixture
def homeassistant(ha_runtime: Runtime, tmp_path: Path) -> Iterator[HomeAssistant]:
    with running(ha_runtime, tmp_path / "ha") as ha:
        yield ha
