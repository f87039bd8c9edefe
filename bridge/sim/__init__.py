"""A stand-in for flespi on a real MQTT broker: a simulated fleet, a REST responder, the
fleet's REST API over HTTP, flespi's HTTP stream pushed to the bridge, and throwaway
Mosquitto brokers (`brokers.py`) for the demo, the tests and the benchmarks.

Development and demo code: the running bridge never imports it (import-linter holds that).
May import: `bridge.flespi.topics`, `bridge.http.server`, `bridge.normalize`, the shared leaves.
"""

from bridge.sim.fleet import Fleet, SimDevice
from bridge.sim.responder import Responder
from bridge.sim.simulator import Simulator

__all__ = ["Fleet", "Responder", "SimDevice", "Simulator"]
