"""Publishing to the local broker: the renderer (device state to payloads and discovery),
the publisher (batches, the in-flight bound, requeue on loss; the hot path), the
republisher (full republishes on reconnect and Home Assistant's `online`), the cleanup of
retained topics of gone devices, and the connection to the local broker
(`local_broker.py`, on `bridge.mqtt`: it hands each message to the part that routed its
topic, and says `LocalConnected` on the event hub). The republisher and the cleanup react to
events (`bridge.core.events`), never to calls from parts built after them.

Owns: what is retained on the local broker and when it is cleared.
May import: `bridge.core`, `bridge.homeassistant`, `bridge.config`, `bridge.normalize`,
`bridge.mqtt`, the shared leaves. Never the flespi side.
"""
