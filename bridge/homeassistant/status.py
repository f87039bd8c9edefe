"""Home Assistant's birth message: `online` on `<discovery prefix>/status` when it starts.

Only built when discovery is on (nothing is subscribed otherwise). A retained `online` is
ignored: the broker replays it on every subscription, and the connect that caused the replay
republishes everything anyway. A fresh one becomes `HomeAssistantOnline` on the event hub
(the republisher answers it).
"""

from __future__ import annotations

from bridge.core.events import EventHub, HomeAssistantOnline
from bridge.core.transport import LocalLink


class StatusListener:
    def __init__(self, topic: str, local: LocalLink, events: EventHub) -> None:
        self.topic = topic
        self.local = local
        self.events = events

    async def start(self) -> None:
        self.local.route(self.topic, self.on_status)

    async def stop(self) -> None:
        """Nothing runs of its own."""

    def on_status(self, _topic: str, payload: bytes, retain: bool) -> None:
        if not retain and payload.strip().lower() == b"online":
            self.events.emit(HomeAssistantOnline())
