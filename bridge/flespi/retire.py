"""Ending the flespi session of a replica whose shard no longer exists (a split fleet shrunk).

Each replica's persistent session (`<client_id>-<k>`) outlives the replica: after a resize
from 4 to 3 shards nobody connects as `-3` again, and flespi would queue that session's
devices' traffic for `session_expiry` (7 days by default), up to 1 GB. When shard 0 clears a
retired replica's local topics (`bridge.publish.cleanup`: its shard is out of range and it is
offline) it says `ReplicaRetired`, and this part connects once as that replica with a clean
start and no session expiry, clears the replica's retained shard record, and disconnects:
flespi drops the session. Nothing is lost by it: what the session queued concerns devices
that other replicas own now and took from flespi's retained state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from bridge.core.events import EventHub, ReplicaRetired
from bridge.exceptions import UpstreamError
from bridge.flespi.session import UpstreamSession

log = logging.getLogger(__name__)


class Retirement:
    def __init__(self, session: UpstreamSession, events: EventHub) -> None:
        self.session = session
        self.events = events
        self.tasks: set[asyncio.Task[None]] = set()
        self.ended: list[str] = []  # the client ids whose sessions were ended

    async def start(self) -> None:
        self.events.subscribe(ReplicaRetired, lambda event: self.retire(event.shard))

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def client_id(self, shard: int) -> str:
        """The retired replica's client id: ours with its shard instead of 0."""
        own = self.session.connect_options().client_id
        return f"{own.rsplit('-', 1)[0]}-{shard}"

    def retire(self, shard: int) -> None:
        task = asyncio.create_task(self._end(self.client_id(shard)), name=f"retire-{shard}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _end(self, client_id: str) -> None:
        options = dataclasses.replace(self.session.connect_options(client_id),
                                      clean_start=True, session_expiry=0)
        up = self.session.link.factory(options, lambda *_: None)
        try:
            await up.connect()
            # the replica's record of what its session subscribed (`shard_subscriptions`)
            up.publish(f"flespi-bridge/{client_id}/shards", b"", qos=1, retain=True)
        except UpstreamError as exc:
            log.warning("could not end the flespi session %s of a retired replica: %s "
                        "(flespi drops it after flespi.session_expiry)", client_id, exc)
            return
        finally:
            await up.disconnect()
        self.ended.append(client_id)
        log.info("ended the flespi session %s: its shard no longer exists", client_id)
