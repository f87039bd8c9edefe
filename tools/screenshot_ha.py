"""A screenshot of one simulated flespi device's page in a real Home Assistant:
docs/images/ha-device.png, the README's picture of a device in Home Assistant (entities
grouped as Controls, Sensors, Events, Configuration and Diagnostic).

Everything runs on 127.0.0.1 and is stopped at the end (child processes by their PID): two
throwaway Mosquitto brokers (the simulated flespi and the local broker), the simulator with
its REST responder and the bridge (in this process), the oldest pinned Home Assistant of
the system tests (tests/support/homeassistant_harness.py; `--release newest` for the other,
whose frontend does not get past "Loading..." in headless Chromium yet) with the MQTT
integration, and headless Chromium driven by Playwright.

For the oldest release, an overlay venv next to the harness's venv (`<cache>-frontend`) sees
the cached venv's packages through a .pth file and adds only the requirements of the default
TOTP auth module, so the cache itself is left as the tests built it. Home Assistant never
installs packages (the harness starts it with --skip-pip; UV_OFFLINE as well): the
integrations onboarding sets up (met, radio browser, ...) fail to load instead of being
fetched.

    python tools/screenshot_ha.py [--output docs/images/ha-device.png] [--release newest]

Needs: mosquitto, the harness's requirements (root and debootstrap for the newest release, a
Python 3.13 or those for the oldest), Chromium (`/usr/bin/chromium` or --chromium) and the
playwright package (`pip install playwright`; no browser download).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from PIL import Image
from playwright.async_api import async_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

# tests/ is on mypy's path when it checks the whole project, not when it checks this file
# alone: then these are Any.
from support.helpers import make_settings, retained  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from support.homeassistant_harness import (  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
    HA_VERSION,
    NEWEST,
    REQUIREMENTS_SCRIPT,
    HarnessError,
    HomeAssistant,
    Runtime,
    add_mqtt,
    cache_dir,
    ensure,
    ensure_venv,
    find_python,
    run_logged,
    running,
    wait_api,
)

from bridge.app.bridge import Bridge  # noqa: E402
from bridge.exceptions import BrokerUnavailableError  # noqa: E402
from bridge.sim import Responder, Simulator  # noqa: E402
from bridge.sim import brokers as mosquitto  # noqa: E402
from bridge.sim.fleet import DEVICE_TYPE_ID, DEVICE_TYPES, SCOOTER_PROFILE, SimDevice  # noqa: E402

OUTPUT = REPO / "docs" / "images" / "ha-device.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}  # at least: taller if the cards need it
MAX_HEIGHT = 1600
MAX_BYTES = 300_000
MODEL = DEVICE_TYPES[DEVICE_TYPE_ID]["title"]  # the device's model once flespi's names are in
SITE_PACKAGES = "import json, site; print(json.dumps(site.getsitepackages()))"
# Home Assistant loads its default multi-factor module (TOTP) at start-up, whose requirements
# are not in the harness's venv either.
AUTH_REQUIREMENTS = ("import json; from homeassistant.auth.mfa_modules import totp; "
                     "print(json.dumps(totp.REQUIREMENTS))")
OWNER = {"name": "Fleet Manager", "username": "fleet", "password": "flespi-bridge-screenshot",
         "language": "en"}


STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


# -- Home Assistant with its frontend --------------------------------------------------------

def ensure_frontend_venv() -> Path:
    """The overlay venv's Python: the harness's cached venv plus the frontend's requirements."""
    base_python = Path(ensure_venv())
    base = Path(cache_dir())
    overlay = base.with_name(base.name + "-frontend")
    python = overlay / "venv" / "bin" / "python"
    overlay.mkdir(parents=True, exist_ok=True)
    with (overlay / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        site = orjson.loads(_capture([str(base_python), "-c", SITE_PACKAGES]))
        reqs: list[str] = sorted(
            set(orjson.loads(_capture([str(base_python), "-c", REQUIREMENTS_SCRIPT, "frontend"])))
            | set(orjson.loads(_capture([str(base_python), "-c", AUTH_REQUIREMENTS]))))
        stamp = json.dumps({"homeassistant": HA_VERSION, "base": str(base_python),
                            "requirements": reqs})
        stamp_file = overlay / "complete"
        if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
            return python
        log(f"building the frontend overlay venv in {overlay} ({', '.join(reqs)})")
        stamp_file.unlink(missing_ok=True)
        shutil.rmtree(overlay / "venv", ignore_errors=True)
        install_log = overlay / "install.log"
        install_log.write_text("")
        run_logged([str(find_python()), "-m", "venv", str(overlay / "venv")], install_log)
        own_site = orjson.loads(_capture([str(python), "-c", SITE_PACKAGES]))
        Path(own_site[0], "_homeassistant_cache.pth").write_text("\n".join(site) + "\n")
        # pip sees the cached venv's packages through the .pth: it installs only what is missing
        run_logged([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                    "--no-input", "--constraint", str(base / "package_constraints.txt"), *reqs],
                   install_log)
        stamp_file.write_text(stamp)
        return python


def _capture(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout


async def onboard(ha: HomeAssistant) -> dict[str, Any]:
    """Every onboarding step through the HTTP API, as the onboarding pages do; returns the
    tokens as the frontend keeps them (localStorage `hassTokens`)."""
    client_id = f"{ha.url}/"
    async with httpx.AsyncClient(timeout=60, base_url=ha.url) as http:
        response = await http.post("/api/onboarding/users",
                                   json={**OWNER, "client_id": client_id})
        response.raise_for_status()
        response = await http.post("/auth/token", data={
            "grant_type": "authorization_code", "code": response.json()["auth_code"],
            "client_id": client_id})
        response.raise_for_status()
        tokens: dict[str, Any] = response.json()
        ha.token = tokens["access_token"]
        headers = {"Authorization": f"Bearer {ha.token}"}
        for step, body in [("core_config", None), ("analytics", None),
                           ("integration", {"client_id": client_id,
                                            "redirect_uri": f"{client_id}?auth_callback=1"})]:
            response = await http.post(f"/api/onboarding/{step}", json=body, headers=headers)
            response.raise_for_status()
        done = (await http.get("/api/onboarding")).json()
        if not all(step["done"] for step in done):
            raise HarnessError(f"onboarding not complete: {done}")
    return {**tokens, "hassUrl": ha.url, "clientId": client_id,
            "expires": int(time.time() * 1000) + tokens["expires_in"] * 1000}


class Ws:
    """Home Assistant's websocket API, authenticated."""

    def __init__(self, ha: HomeAssistant) -> None:
        self.ha = ha
        self.next_id = 1
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Ws:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"{self.ha.url}/api/websocket")
        assert (await self.ws.receive_json())["type"] == "auth_required"
        await self.ws.send_json({"type": "auth", "access_token": self.ha.token})
        answer = await self.ws.receive_json()
        if answer["type"] != "auth_ok":
            raise HarnessError(f"websocket authentication: {answer}")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    async def call(self, kind: str, **data: Any) -> Any:
        assert self.ws is not None
        ident, self.next_id = self.next_id, self.next_id + 1
        await self.ws.send_json({"id": ident, "type": kind, **data})
        while True:
            answer = await self.ws.receive_json()
            if answer.get("id") == ident:
                if not answer.get("success"):
                    raise HarnessError(f"{kind}: {answer}")
                return answer["result"]


async def wanted_unique_ids(local: mosquitto.Broker, dev: SimDevice) -> set[str]:
    """The unique ids of the device's entities, from the bridge's retained discovery config."""
    topic = f"homeassistant/device/flespi/flespi_{dev.id}/config"
    found = await retained(local, [topic])
    if topic not in found:
        return set()
    cmps = orjson.loads(found[topic]).get("cmps", {})
    return {str(c.get("unique_id") or c.get("uniq_id")) for c in cmps.values()
            if c.get("unique_id") or c.get("uniq_id")}


async def wait_device(ha: HomeAssistant, local: mosquitto.Broker, dev: SimDevice,
                      timeout: float = 180) -> tuple[str, list[str]]:
    """Until Home Assistant has the device (with flespi's model name) and every entity of it,
    each with a state; returns the device id and its entity ids."""
    deadline = time.monotonic() + timeout
    last: Any = None
    async with Ws(ha) as ws, httpx.AsyncClient(base_url=ha.url, timeout=30, headers={
            "Authorization": f"Bearer {ha.token}"}) as http:
        while time.monotonic() < deadline:
            wanted = await wanted_unique_ids(local, dev)
            devices = await ws.call("config/device_registry/list")
            device = next((d for d in devices
                           if ["mqtt", f"flespi_{dev.id}"] in d["identifiers"]), None)
            if device is not None and wanted:
                entities = [e for e in await ws.call("config/entity_registry/list")
                            if e["device_id"] == device["id"]]
                have = {e["unique_id"] for e in entities}
                states = {s["entity_id"]: s["state"] for s in
                          (await http.get("/api/states")).json()}
                pending = [e["entity_id"] for e in entities
                           if states.get(e["entity_id"], "unavailable") == "unavailable"]
                last = {"model": device["model"], "missing": sorted(wanted - have),
                        "unavailable": pending}
                if device["model"] == MODEL and wanted <= have and not pending:
                    return device["id"], [e["entity_id"] for e in entities]
            await asyncio.sleep(1)
    raise HarnessError(f"the device's entities did not appear within {timeout}s: {last}")


# -- the screenshot --------------------------------------------------------------------------

async def screenshot(ha: HomeAssistant, tokens: dict[str, Any], device_id: str,
                     chromium: str) -> bytes:
    """The device page, logged in as the owner, as a (possibly quantized) PNG."""
    url = f"{ha.url}/config/devices/device/{device_id}"
    init = f"window.localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))});"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                   args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(viewport={"width": VIEWPORT["width"],
                                                          "height": VIEWPORT["height"]},
                                                device_scale_factor=1, locale="en-US",
                                                color_scheme="light")
            await context.add_init_script(init)
            page = await context.new_page()
            log(f"opening {url}")
            await page.goto(url, wait_until="load")
            # Playwright's CSS selectors pierce the frontend's (open) shadow roots
            try:
                await page.locator("ha-device-entities-card").first.wait_for(timeout=90_000)
            except Exception:
                shown = Path(tempfile.gettempdir()) / "ha-screenshot-failed.png"
                await page.screenshot(path=str(shown))
                log(f"what the browser showed instead: {shown}")
                raise
            await page.locator("ha-device-entities-card state-badge").first.wait_for(
                timeout=30_000)
            await page.wait_for_load_state("networkidle")
            await asyncio.sleep(3)  # icons, fonts and the history of the state badges
            # The page scrolls inside its own container: grow the viewport to the bottom of
            # the lowest card, so the Diagnostic group below Controls and Sensors shows too.
            bottom = 0.0
            for card in await page.locator("ha-config-device-page ha-card").all():
                box = await card.bounding_box()
                if box is not None:
                    bottom = max(bottom, box["y"] + box["height"])
            height = max(VIEWPORT["height"], min(int(bottom) + 24, MAX_HEIGHT))
            if height != VIEWPORT["height"]:
                await page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
                await asyncio.sleep(1)
            png = await page.screenshot(type="png")
        finally:
            await browser.close()
    return shrink(png)


def shrink(png: bytes) -> bytes:
    """The PNG re-encoded with a 256-colour palette if it is too big as it is."""
    if len(png) <= MAX_BYTES:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out.getvalue()


# -- everything together ---------------------------------------------------------------------

async def run(python: Path | Runtime, chromium: str) -> bytes:
    os.environ["UV_OFFLINE"] = "1"  # Home Assistant's own package installs: none
    upstream = mosquitto.start(extra_config=mosquitto.FLESPI_LIKE)
    local = mosquitto.start()
    with upstream, local, tempfile.TemporaryDirectory(prefix="ha-screenshot-") as tmp, \
            running(python, Path(tmp) / "ha") as ha:
        log(f"brokers on {upstream.port} (flespi) and {local.port} (local)")
        sim = Simulator(upstream.host, upstream.port, devices=1, seed=7)
        await sim.start()
        responder = Responder(sim)
        await responder.attach()
        bridge: Bridge | None = None
        try:
            with (ha.config / "configuration.yaml").open("a") as config:
                config.write("frontend:\n")
            ha.start()
            assert ha.proc is not None
            log(f"Home Assistant (pid {ha.proc.pid}) starting on {ha.url}")
            await wait_api(ha)
            tokens = await onboard(ha)
            await add_mqtt(ha, local.host, local.port)
            log("onboarded, MQTT set up")
            bridge = Bridge(make_settings(upstream, local, commands={
                "profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}))
            await bridge.start()
            await asyncio.wait_for(bridge.loaded.wait(), 60)
            dev = next(iter(sim.devices.values()))
            device_id, entities = await wait_device(ha, local, dev)
            log(f"device {dev.name!r} is {device_id} with {len(entities)} entities")
            return await screenshot(ha, tokens, device_id, chromium)
        except BaseException:
            print(ha.log()[-4000:], file=sys.stderr)
            raise
        finally:
            if bridge is not None:
                await bridge.stop()
            await responder.close()
            await sim.stop()
            ha.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--release", choices=["newest", "oldest"], default="oldest",
                        help="the tests' oldest release (with the frontend overlay venv; "
                        "default) or the newest (whose frontend stays at \"Loading...\" in "
                        "headless Chromium for now)")
    args = parser.parse_args()
    try:
        runtime = ensure(NEWEST) if args.release == "newest" else ensure_frontend_venv()
        png = asyncio.run(run(runtime, args.chromium))
    except (HarnessError, BrokerUnavailableError) as error:
        sys.exit(f"screenshot failed: {error}")
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(png)
    log(f"saved {output} ({len(png)} bytes)")


if __name__ == "__main__":
    main()
