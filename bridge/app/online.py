"""`flespi-bridge check-config --online`: "does my token connect, and what does it see?",
asked before running the bridge. One line per check, `ok` or `FAIL`:

- flespi: connects over MQTT with the token (as the bridge will, under a client id of its own
  so a running bridge's session is left alone), or says why not;
- ACL: subscribes to every topic filter the bridge will, and names each one flespi refuses
  (its SUBACK reason code), and its own reply prefix;
- devices: the devices the token sees (their ids and names, from flespi's retained state,
  complete once a marker published to the reply prefix comes back);
- local broker: connects, or says why not.

The token never appears in any line: errors are scrubbed of it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from bridge import logs
from bridge.config import settings as config
from bridge.config.tls import flespi_tls_context, local_tls_context
from bridge.flespi import topics
from bridge.toolbox.acl import reply_prefix, subscriptions

TIMEOUT = 15.0
SHOWN_DEVICES = 20


@dataclass
class Check:
    ok: bool
    text: str


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("[code:").split("] ", 1)[-1] if text.startswith("[code:") else text


async def _flespi(settings: config.Settings) -> list[Check]:
    f = settings.flespi
    url = f"{'mqtts' if f.tls else 'mqtt'}://{f.host}:{f.port}"
    marker = f"{reply_prefix(settings)}check/{uuid.uuid4().hex}"
    names: dict[int, str] = {}
    checks: list[Check] = []
    try:
        async with asyncio.timeout(TIMEOUT), aiomqtt.Client(
                f.host, f.port, username=f.token.get_secret_value(),
                identifier=f"{f.client_id}-check-{uuid.uuid4().hex[:6]}",
                protocol=aiomqtt.ProtocolVersion.V5, tls_context=flespi_tls_context(f),
                clean_start=True) as client:
            checks.append(Check(True, f"flespi: connected to {url} with the token"))
            wanted = [*subscriptions(settings), reply_prefix(settings) + "#"]
            refused = []
            for filter_ in wanted:
                granted = await client.subscribe(filter_, qos=1)
                codes = [c for c in granted if isinstance(c, ReasonCode) and c.is_failure]
                if codes or not granted:
                    refused.append(f"{filter_} ({codes[0] if codes else 'refused'})")
            checks.extend(Check(False, f"ACL: the token may not subscribe to {r}")
                          for r in refused)
            if not refused:
                checks.append(Check(True, f"ACL: all {len(wanted)} subscriptions granted"))
            await client.publish(marker, b"1", qos=1)
            async for message in client.messages:
                topic = message.topic.value
                if topic == marker:
                    break
                if topic.startswith(topics.STATE_PREFIX) and topic.endswith("/name"):
                    device = topic[len(topics.STATE_PREFIX):].split("/")[0]
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    if device.isdigit():
                        names[int(device)] = payload.decode(errors="replace").strip('"')
    except TimeoutError:
        checks.append(Check(False, f"flespi: no answer from {url} in {TIMEOUT:.0f}s"))
        return checks
    except (aiomqtt.MqttError, OSError) as exc:
        checks.append(Check(False, f"flespi: cannot connect to {url}: {_reason(exc)}"))
        return checks
    if names:
        listed = ", ".join(f"{i} {n}" for i, n in sorted(names.items())[:SHOWN_DEVICES])
        more = f" and {len(names) - SHOWN_DEVICES} more" if len(names) > SHOWN_DEVICES else ""
        checks.append(Check(True, f"devices: {len(names)} seen: {listed}{more}"))
    else:
        checks.append(Check(False, "devices: the token sees no device (flespi.devices, or "
                                   "the token's ACL)"))
    return checks


async def _local(settings: config.Settings) -> Check:
    loc = settings.local
    url = f"{'mqtts' if loc.tls else 'mqtt'}://{loc.host}:{loc.port}"
    password = loc.password.get_secret_value() if loc.password else None
    try:
        async with asyncio.timeout(TIMEOUT), aiomqtt.Client(
                loc.host, loc.port, username=loc.username, password=password,
                identifier=f"{loc.client_id}-check-{uuid.uuid4().hex[:6]}",
                tls_context=local_tls_context(loc)):
            return Check(True, f"local broker: connected to {url}")
    except TimeoutError:
        return Check(False, f"local broker: no answer from {url} in {TIMEOUT:.0f}s")
    except (aiomqtt.MqttError, OSError) as exc:
        return Check(False, f"local broker: cannot connect to {url}: {_reason(exc)}")


async def run(settings: config.Settings) -> int:
    """Print each check's line; 0 when all pass, 1 otherwise."""
    scrub = logs.RedactingFilter([settings.flespi.token.get_secret_value()]).scrub
    flespi, local = await asyncio.gather(_flespi(settings), _local(settings))
    checks = [*flespi, local]
    for check in checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'} {scrub(check.text)}", flush=True)
    return 0 if all(c.ok for c in checks) else 1
