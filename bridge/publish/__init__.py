"""Publishing to the local broker: the renderer (device state to payloads and discovery),
the publisher (batches, the in-flight bound, requeue on loss; the hot path), the
republisher (full republishes on reconnect and Home Assistant's `online`), the cleanup of
retained topics of gone devices, and the connection to the local broker
(`local_broker.py`, on `bridge.mqtt`).

Owns: what is retained on the local broker and when it is cleared.
May import: `bridge.core`, `bridge.homeassistant`, `bridge.config`, `bridge.normalize`,
`bridge.mqtt`, the shared leaves. Never the flespi side.
"""
