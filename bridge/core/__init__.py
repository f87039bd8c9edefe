"""The core between the two brokers: the state store (`store.py`: each device's latest
attributes, what is dirty), the ack ledger (`ledger.py`: what flespi may be told is done),
the outbox (publications that are not device state: results, messages, cleanup), the
counters (`stats.py`), the local topic names (`topics.py`), the seam to the local broker
(`transport.py`: publishing, and routing its messages to the parts that take them), and what
every part shares to be wired without knowing the others: the event hub of the cold path
(`events.py`) and the start/stop protocol with the shutdown's grace window (`lifecycle.py`).

Owns: the no-loss rule (an upstream message is acknowledged only once what it changed is
published locally), last-value-wins per attribute.
May import: `bridge.normalize` and the shared leaves only. No I/O. Every other package may
import it (the hub and the lifecycle are how parts meet).
"""
