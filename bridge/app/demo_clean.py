"""`flespi-bridge demo --home-assistant HOST:PORT --clean`: remove the demo from a user's own
broker, and so from their Home Assistant.

Every retained topic under the demo's base topic goes, and every discovery config that points
into it (its state, command or availability topics are the demo's); nothing else is touched,
a real bridge's `flespi/...` topics and other integrations' configs included. The configs are
cleared first, so Home Assistant removes the entities before their state topics empty."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt

from bridge.app.demo import DEMO_BASE, LocalBroker


async def demo_topics(local: LocalBroker, prefix: str) -> list[str]:
    """The demo's retained topics on `local`: discovery configs first, then the rest."""
    marker = f"{DEMO_BASE}/clean-marker/{uuid.uuid4().hex}"
    configs: list[str] = []
    others: list[str] = []
    async with asyncio.timeout(30), aiomqtt.Client(local.host, local.port,
                                                   **local.client_args()) as client:
        await client.subscribe(f"{DEMO_BASE}/#", qos=1)
        await client.subscribe(f"{prefix}/#", qos=1)
        await client.publish(marker, b"1", qos=1)  # arrives after every retained message
        async for message in client.messages:
            topic = message.topic.value
            if topic == marker:
                break
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if not message.retain or not payload:
                continue
            if topic.startswith(f"{DEMO_BASE}/"):
                others.append(topic)
            elif f'"{DEMO_BASE}/'.encode() in payload or f'"~":"{DEMO_BASE}'.encode() in payload:
                configs.append(topic)
    return configs + others


async def clean(local: LocalBroker, prefix: str = "homeassistant") -> int:
    """Clear the demo's retained topics on `local`; returns how many."""
    topics = await demo_topics(local, prefix)
    async with asyncio.timeout(30), aiomqtt.Client(local.host, local.port,
                                                   **local.client_args()) as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
    return len(topics)
