"""What a local client can start through the command topics is bounded: at most
`commands.max_in_flight` requests at once (past it `busy`, nothing sent), exactly one result
each, and a request for an id the bridge does not follow leaves nothing retained."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
from support.helpers import BridgeFactory, Recorder, commands_sent, make_settings, retained

from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"
CAP = 3


async def test_a_flood_past_the_cap_is_refused_busy_one_result_each(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    commands = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}, "timeout": 1,
                "max_in_flight": CAP, "device_burst": 100, "global_burst": 100}
    bridge = await bridge_factory(make_settings(upstream, local, commands=commands))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    responder.silent = True  # every command waits for flespi until its timeout
    flood = 40
    async with Recorder(local, [f"{BASE}/+/result"]) as rec:
        device = next(iter(sim.devices))
        for n in range(flood):
            await rec.publish(f"{BASE}/{device}/set",
                              orjson.dumps({"command": "restart", "transaction": n}), qos=1)
        await rec.wait_for(lambda: len(rec.messages) >= flood, what="a result for each")
        # the ones that went to flespi time out (1 s + 1 s): by then any extra result is in
        await rec.wait_for(lambda: Counter(m.json()["code"] for m in rec.messages)["timeout"]
                           >= CAP, what="the commands in flight to time out")
    results = [m.json() for m in rec.messages]
    assert sorted(r["transaction"] for r in results) == list(range(flood))  # one each
    codes = Counter(r["code"] for r in results)
    assert codes == {"timeout": CAP, "busy": flood - CAP}
    assert len(commands_sent(responder.requests)) == CAP
    assert bridge.stats.commands["busy"] == flood - CAP


async def test_a_request_for_an_unknown_id_publishes_one_result_and_retains_nothing(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(make_settings(upstream, local))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    async with Recorder(local, [f"{BASE}/#"]) as rec:
        for made_up in (4242, 4243, 4244):
            await rec.publish(f"{BASE}/{made_up}/set", b'{"command": "restart"}', qos=1)
        known = next(iter(sim.devices))
        await rec.publish(f"{BASE}/{known}/set", b'{"command": "nope"}', qos=1)
        await rec.wait_for(lambda: f"{BASE}/{known}/last_command" in rec.latest,
                           what="the known device's last command")
    made_up_topics = sorted(m.topic for m in rec.messages
                            if m.topic.split("/")[1].startswith("424"))
    assert made_up_topics == sorted(f"{BASE}/{i}/{leaf}" for i in (4242, 4243, 4244)
                                    for leaf in ("set", "result"))
    found = await retained(local, [f"{BASE}/{i}/last_command" for i in (4242, 4243, 4244)])
    assert found == {}
