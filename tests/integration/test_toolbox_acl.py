"""`token create --least-privilege`: the ACL covers everything a running bridge does upstream
(checked against a real bridge, its brokers and the simulator) and nothing more, in flespi's
ACL format (MQTT entries only for the bridge's own topics; `flespi/` topics and REST over MQTT
follow the REST rights)."""

from __future__ import annotations

import asyncio
from typing import Any

from support.helpers import BridgeFactory, Recorder, make_settings

from bridge.config import settings as config
from bridge.sim import Responder, Simulator
from bridge.sim import brokers as mosquitto
from bridge.sim.fleet import DEVICE_TYPE_ID, SCOOTER_PROFILE
from bridge.toolbox.acl import acl, mqtt_allows, rest_allows

PROFILES = {str(DEVICE_TYPE_ID): SCOOTER_PROFILE}


async def test_the_acl_covers_all_a_running_bridge_does(
        upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
        responder: Responder, bridge_factory: BridgeFactory) -> None:
    ids = list(sim.devices)
    settings = make_settings(upstream, local, flespi={"devices": ids, "messages": True},
                             commands={"profiles": PROFILES, "timeout": 1})
    async with Recorder(local, ["flespi/+/last_command"]) as rec:
        bridge = await bridge_factory(settings)
        await asyncio.wait_for(bridge.loaded.wait(), 10)
        # a command and a setting's change: the REST calls over MQTT a bridge makes
        await rec.publish(f"flespi/{ids[0]}/lock/set", "LOCK", qos=1)
        await rec.publish(f"flespi/{ids[1]}/upload_interval/set", "60", qos=1)
        await rec.wait_for(lambda: len(rec.messages) >= 2 or None, what="two results")
        await rec.wait_for(lambda: any(r.uri.startswith("gw/channel-protocols/all")
                                       for r in responder.requests) or None,
                           what="the device type look-up")
    granted = acl(settings)
    subscribed = bridge.session.subscriptions()
    assert any("/settings/" in t for t in subscribed)
    assert any(t.startswith("flespi/message/") for t in subscribed)
    for topic in subscribed:
        assert mqtt_allows(granted, "subscribe", topic), topic
    calls = [(r.method, r.uri) for r in responder.requests]
    assert {m for m, _ in calls} == {"get", "post"}
    for method, uri in calls:
        assert mqtt_allows(granted, "publish", f"flespi/rest/{method}/{uri}"), uri
        assert rest_allows(granted, method, uri), uri
    assert mqtt_allows(granted, "publish", f"{bridge.session.reply_prefix}sync/0123")
    # and nothing more: no MQTT entry under flespi/ (flespi refuses those), no other device,
    # no changes to the devices themselves, no other client's topics
    assert not any(e["uri"] == "mqtt" and e["topic"].startswith("flespi/") for e in granted)
    other = max(ids) + 1
    refused: list[tuple[str, str]] = [
        ("subscribe", f"flespi/state/gw/devices/{other}/telemetry/+"),
        ("subscribe", "flespi/state/gw/devices/+"),
        ("subscribe", "flespi/state/gw/channels/+"),
        ("subscribe", "#"),
        ("publish", f"flespi/rest/post/gw/devices/{other}/commands"),
        ("publish", "flespi/rest/post/gw/devices"),
        ("publish", f"flespi/rest/delete/gw/devices/{ids[0]}"),
        ("publish", f"flespi/rest/put/gw/devices/{ids[0]}/settings/upload_interval"),
        ("publish", "flespi/rest/post/platform/tokens"),
        ("publish", "flespi-bridge/another-bridge/sync/1"),
    ]
    for action, topic in refused:
        assert not mqtt_allows(granted, action, topic), topic


def _allowed(**sections: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    base: dict[str, dict[str, Any]] = {"flespi": {"token": "t", "devices": [11, 12]}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return acl(config.load(overrides=base)), 11


def test_a_read_only_bridge_without_discovery_reads_its_devices_only() -> None:
    granted, dev = _allowed(commands={"profiles": PROFILES, "read_only": True},
                            homeassistant={"discovery": False})
    assert mqtt_allows(granted, "subscribe", f"flespi/state/gw/devices/{dev}/telemetry/+")
    assert not rest_allows(granted, "POST", f"gw/devices/{dev}/commands")
    assert not rest_allows(granted, "GET", "gw/channel-protocols/all/device-types/1272")
    assert not mqtt_allows(granted, "subscribe", f"flespi/message/gw/devices/{dev}")
    assert granted[0] == {"uri": "gw/devices", "methods": ["GET"], "ids": [11, 12],
                          "submodules": [{"name": "telemetry", "methods": ["GET"]},
                                         {"name": "connections", "methods": ["GET"]},
                                         {"name": "settings", "methods": ["GET"]}]}


def test_a_bridge_of_all_devices_gets_them_all() -> None:
    granted, _ = _allowed(flespi={"devices": "all", "telemetry": False, "messages": True})
    assert mqtt_allows(granted, "subscribe", "flespi/message/gw/devices/+")
    assert mqtt_allows(granted, "subscribe", "flespi/state/gw/devices/+/connections/+")
    assert not mqtt_allows(granted, "subscribe", "flespi/state/gw/devices/+/telemetry/+")
    assert not rest_allows(granted, "POST", "gw/devices/5/commands")  # no profiles
