"""A broker ACL carving one device out of the command topics holds for every spelling of its
id: an alias (`05537000`, `0005537000`, fullwidth digits) is refused `bad_device_id` on the
alias's own result topic and nothing reaches flespi (docs/commands.md, docs/topics.md)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from support.helpers import BridgeFactory, Brokers, Recorder, commands_sent, make_settings

from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE

BASE = "flespi"
PROFILES = {"profiles": {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}}
USER, PASSWORD = "tablet", "tablet-password"


def acl_broker(brokers: Brokers, tmp_path: Path, denied: int) -> mosquitto.Broker:
    """Anonymous clients (the bridge) may do anything; the user `tablet` may command every
    device (`<base>/+/set`, `<base>/+/+/set`) but device `denied`, Mosquitto's documented
    way to carve one out, and read the rest of the base."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    password_file = tmp_path / "passwords"
    subprocess.run([passwd, "-b", "-c", str(password_file), USER, PASSWORD], check=True,
                   capture_output=True, timeout=30)
    acl_file = tmp_path / "acl"
    acl_file.write_text(
        "topic readwrite #\n"  # anonymous: the bridge
        f"user {USER}\n"
        f"topic write {BASE}/+/set\n"
        f"topic write {BASE}/+/+/set\n"
        f"topic read {BASE}/#\n"
        f"topic deny {BASE}/{denied}/#\n", encoding="utf-8")
    return brokers(extra_config=(f"password_file {password_file}", f"acl_file {acl_file}"))


async def test_aliases_of_a_denied_device_are_refused_and_never_sent(
        brokers: Brokers, upstream: mosquitto.Broker, sim: Simulator, responder: Responder,
        bridge_factory: BridgeFactory, tmp_path: Path) -> None:
    denied, allowed = list(sim.devices)[:2]
    local = acl_broker(brokers, tmp_path, denied)
    bridge = await bridge_factory(make_settings(upstream, local, commands=PROFILES))
    await asyncio.wait_for(bridge.loaded.wait(), 10)
    fullwidth = str(denied).translate({ord("0") + d: 0xFF10 + d for d in range(10)})
    aliases = [(f"0{denied}", "lock/set", b"UNLOCK"),
               (f"000{denied}", "set", b'{"lock": false, "transaction": "a-2"}'),
               (fullwidth, "set", b'{"lock": false}')]
    alias_results = [f"{BASE}/{level}/result" for level, _, _ in aliases]
    async with Recorder(local, [f"{BASE}/+/result", f"{BASE}/+/last_command"],
                        username=USER, password=PASSWORD) as tablet, \
            Recorder(local, [f"{BASE}/#"]) as watcher:
        # the canonical topic: the broker's ACL drops it (MQTT 3.1.1 says nothing back)
        await tablet.publish(f"{BASE}/{denied}/lock/set", "UNLOCK", qos=1)
        for level, leaf, payload in aliases:
            await tablet.publish(f"{BASE}/{level}/{leaf}", payload, qos=1)
        # a device the tablet may command: executed (the ACL does not refuse everything)
        await tablet.publish(f"{BASE}/{allowed}/restart/set", "PRESS", qos=1)
        ok = await tablet.wait_for(lambda: tablet.latest.get(f"{BASE}/{allowed}/result"),
                                   what="the allowed device's result")
        assert ok.json()["status"] == "ok"
        # nothing reached flespi for the denied device (the aliases went in before the
        # allowed command, whose answer is in): only the allowed device's command
        assert [r.uri for r in commands_sent(responder.requests)] == [
            f"gw/devices/{allowed}/commands"]
        await tablet.wait_for(lambda: all(t in tablet.latest for t in alias_results),
                              what="a result on each alias's result topic")
    refused = [m for m in tablet.messages if m.topic in alias_results]
    assert [m.topic for m in refused] == alias_results  # one each, in order
    assert [m.json()["code"] for m in refused] == ["bad_device_id"] * len(aliases)
    assert refused[1].json()["transaction"] == "a-2"
    # the denied device's topics carry no result or last command, and the aliases got one
    # result each and nothing retained
    leaves = {m.topic.rsplit("/", 1)[1] for m in watcher.messages
              if m.topic.startswith(f"{BASE}/{denied}/")}
    assert not leaves & {"result", "last_command"}
    assert sorted(m.topic for m in watcher.messages
                  if m.topic.split("/")[1] in {level for level, _, _ in aliases}
                  and not m.topic.endswith("/set")) == sorted(alias_results)
    assert bridge.stats.invalid["command", "bad_device_id"] == len(aliases)
