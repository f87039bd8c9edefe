"""A stand-in for flespi on a real MQTT broker: a simulated fleet and a REST responder."""

from bridge.sim.fleet import Fleet, SimDevice
from bridge.sim.responder import Responder
from bridge.sim.simulator import Simulator

__all__ = ["Fleet", "Responder", "SimDevice", "Simulator"]
