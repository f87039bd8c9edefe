"""Device events as the renderer publishes them: once per reported event value, never what
flespi replays from before the bridge started, never again after a local reconnect."""

from __future__ import annotations

import time

import orjson

from bridge.core.store import ALL, STATE, Store
from bridge.homeassistant.events import event_payload
from bridge.publish.renderer import Renderer
from unit.homeassistant.test_templates import ATTRS, settings


def events(renderer: Renderer, store: Store) -> list[dict[str, object]]:
    return [orjson.loads(p.payload) for dev in store.take_dirty()
            for p in renderer.render(dev, STATE) if p.topic.endswith("/event")]


def test_an_event_is_published_once_and_not_after_a_reconnect() -> None:
    store = Store()
    store.apply_values(1, {"panic_button": True}, time.time() - 3600)  # flespi's replay
    renderer = Renderer(settings(), ATTRS)
    assert events(renderer, store) == []
    store.apply_values(1, {"panic_button": False}, time.time())
    assert events(renderer, store) == []  # released: no event
    store.apply_values(1, {"panic_button": True}, time.time() + 0.001)
    (pressed,) = events(renderer, store)
    assert (pressed["event_type"], pressed["value"]) == ("pressed", True)
    store.mark_all(ALL)  # a local reconnect: every state is published again
    assert events(renderer, store) == []


def test_only_the_values_listed_are_events() -> None:
    attr = ATTRS["ignition"]
    assert orjson.loads(event_payload(attr, False, 0.0) or b"{}")["event_type"] == "off"
    assert event_payload(attr, 1, 0.0) is None  # 1 is not True: no guessing
