"""`flespi-bridge track --format html`: the map is one file that works with no network (a map
opened on a laptop in a van, or attached to a ticket), loaded in headless Chromium offline."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.toolbox_helpers import Api, cli, hours_ago, start_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(tmp_path):
        yield a


async def test_the_html_map_shows_its_trips_with_the_network_off(api: Api) -> None:
    from playwright.async_api import Route, async_playwright

    start = int(hours_ago(3))
    run = await cli(api, "track", str(api.device), "--from", str(start),
                    "--to", str(start + 2 * 3600), "--format", "html", "-o", "map.html")
    assert run.code == 0, run.err
    page_file = api.tmp / "map.html"
    requested: list[str] = []
    errors: list[str] = []

    async def refuse(route: Route) -> None:  # nothing but the file itself may load
        if route.request.url.startswith(("file:", "data:")):
            await route.continue_()
        else:
            requested.append(route.request.url)
            await route.abort("internetdisconnected")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            context = await browser.new_context(offline=True)
            await context.route("**/*", refuse)
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(page_file.as_uri(), wait_until="load")
            overlays = page.locator(".leaflet-control-layers-overlays label")
            await overlays.first.wait_for(timeout=10_000)
            layers = [text.strip() for text in await overlays.all_inner_texts()]
            drawn = await page.locator("path.leaflet-interactive").count()
        finally:
            await browser.close()
    assert errors == []
    assert layers == ["Trip 1", "Trip 2"]  # the simulator rides once an hour
    assert drawn == 2 * 3  # each trip's path and its start and end markers, drawn as SVG
    assert all("tile.openstreetmap.org" in url for url in requested), requested  # tiles only
