"""The bridge's own asyncio MQTT client for the local broker (`client.py`: I/O and state;
`flight.py`: outgoing publications within the broker's limits; `inbox.py`: incoming
messages with back-pressure; `options.py`: how to connect and the errors) and the project's
one MQTT wire format (`codec.py`: every packet the project encodes or decodes, and
`PacketReader`, which splits a byte stream into packets; also used by the flespi side's
PUBLISH parser and by the benchmarks; `v5.py`: MQTT 5 reason codes and properties), with the
TCP options it sets (`tcp.py`). Why our own client:
`docs/decisions/0001-own-local-mqtt-client.md`; why our own MQTT 5 codec:
`docs/decisions/0002-local-link-mqtt5-codec.md`.

Owns: framing, packet ids, keepalive.
May import: the shared leaves (`bridge.exceptions`, `bridge.logs`) only: it knows nothing of
flespi or of devices.
"""
