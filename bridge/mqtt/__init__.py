"""The bridge's own asyncio MQTT client for the local broker (`client.py`) and the MQTT
wire format (`codec.py`: varints, fixed headers, CONNECT, the PUBLISH parser also used on
the flespi side and by the benchmarks), with the TCP options it sets (`tcp.py`).
Why our own client: `docs/decisions/0001-own-local-mqtt-client.md`.

Owns: framing, packet ids, keepalive.
May import: the shared leaves (`bridge.exceptions`, `bridge.logs`) only: it knows nothing of
flespi or of devices.
"""
