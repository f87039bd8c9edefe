"""The flespi side: the topic grammar (`topics.py`), the upstream MQTT connection on gmqtt
(`upstream.py`) and the session around it (`session.py`: subscriptions, deferred
acknowledgements, reconnects, its own reply topics; `UpstreamLink`, the connection REST over
MQTT rides on), REST over MQTT or HTTPS (`rest.py`), device-type names
(`device_types.py`), and ingest (`ingest.py`: an upstream publication into the store).

Owns: what is subscribed upstream, when flespi is acknowledged (through `bridge.core.ledger`).
May import: `bridge.core`, `bridge.config`, `bridge.normalize`, `bridge.mqtt.codec`, the
shared leaves. Never the publishing side.
"""
