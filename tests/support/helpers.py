"""Test helpers: settings for brokers under test, and a recording subscriber that tests
wait on (conditions with timeouts, never sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
import orjson
import tomli_w
import trustme
from prometheus_client.parser import text_string_to_metric_families

from bridge.app.bridge import Bridge
from bridge.config import settings as config
from bridge.core.store import iso
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto
from support import REPO

T = TypeVar("T")
TOKEN = "FlespiTestToken0123456789abcdefSECRET"
PYTHON = sys.executable

# The conftest fixtures' types.
Brokers = Callable[..., mosquitto.Broker]  # `brokers`: keyword options as mosquitto.start
BridgeFactory = Callable[[config.Settings], Awaitable[Bridge]]  # `bridge_factory`


def make_settings(upstream_broker: mosquitto.Broker, local_broker: mosquitto.Broker,
                  **sections: dict[str, Any]) -> config.Settings:
    base: dict[str, Any] = {
        "flespi": {"token": TOKEN, "host": upstream_broker.host, "port": upstream_broker.port,
                   "tls": False},
        "local": {"host": local_broker.host, "port": local_broker.port, "coalesce_window": 0.05},
        "reconnect": {"min_delay": 0.05, "max_delay": 0.5},
        "metrics": {"port": 0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config.load(overrides=base)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int = 1

    def json(self) -> Any:
        return orjson.loads(self.payload)


class Recorder:
    """Subscribes on a broker and keeps every message; `wait_for` blocks on a condition."""

    def __init__(self, broker: mosquitto.Broker, topics: list[str], **client_kwargs: Any) -> None:
        self.broker = broker
        self.topics = topics
        self.client_kwargs = client_kwargs  # e.g. tls_context, username, password
        self.messages: list[Received] = []
        self.latest: dict[str, Received] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task

    async def _run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port,
                                  **self.client_kwargs) as client:
            self.client = client
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                item = Received(message.topic.value, payload, bool(message.retain),
                                message.qos)
                async with self._changed:
                    self.messages.append(item)
                    if payload or item.topic not in self.latest:
                        self.latest[item.topic] = item
                    else:
                        self.latest.pop(item.topic, None)  # an empty retained payload clears
                    self._changed.notify_all()

    async def publish(self, topic: str, payload: bytes | str, **kwargs: Any) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, **kwargs)

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0,
                       what: str = "condition") -> T:
        """The predicate's first truthy result (so never None)."""
        async def check() -> T:
            async with self._changed:
                while True:
                    result = predicate()
                    if result:
                        return result
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def state(self, base: str, device_id: int) -> dict[str, Any] | None:
        item = self.latest.get(f"{base}/{device_id}/state")
        return item.json() if item else None

    def seen_state(self, base: str, device_id: int) -> dict[str, Any]:
        """`state` of a device whose state has arrived already."""
        state = self.state(base, device_id)
        assert state is not None, f"no state of {device_id} yet"
        return state


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """For conditions with no event to wait on (process state); polls every 20 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def commands_sent(requests: list[Any]) -> list[Any]:
    """The command requests among a simulated flespi's REST requests (`Responder.requests`:
    besides commands, the bridge looks up device type and protocol names)."""
    return [r for r in requests if r.uri.endswith("/commands")]


async def names_looked_up(requests: list[Any], timeout: float = 10.0) -> None:
    """Until the bridge has asked a simulated flespi for its device type and protocol names
    (so a failure a test injects next hits the command it means)."""
    await wait_until(lambda: sum(r.uri.startswith("gw/channel-protocols/")
                                 for r in requests) >= 2,
                     timeout, what="the device type and protocol look-ups")


def bridge_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLESPI_BRIDGE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env



class BridgeProcess:
    """`python -m bridge run` as a child process, stopped (by PID) when the test ends."""

    def __init__(self, tmp: Path, upstream_broker: mosquitto.Broker,
                 local_broker: mosquitto.Broker, **sections: dict[str, Any]) -> None:
        conf: dict[str, dict[str, Any]] = {
            "flespi": {"token": TOKEN, "host": upstream_broker.host,
                       "port": upstream_broker.port, "tls": False,
                       "client_id": "bridge-under-test"},
            "local": {"host": local_broker.host, "port": local_broker.port,
                      "coalesce_window": 0.05},
            "reconnect": {"min_delay": 0.05, "max_delay": 0.5},
            "metrics": {"enabled": False},
            "log": {"level": "DEBUG"},
        }
        for name, values in sections.items():
            conf[name] = {**conf.get(name, {}), **values}
        self.config = tmp / "bridge.toml"
        self.config.write_text(tomli_w.dumps(conf))
        self.log_path = tmp / "bridge.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "bridge", "run", "--config", str(self.config)],
                stdout=log_file, stderr=subprocess.STDOUT, env=bridge_env())
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Foreground:
    """`python -m bridge ARGS` as a terminal runs a command: in a process group of its own
    (the test's to signal, as Ctrl-C signals the terminal's foreground group), its output read
    line by line; killed (by PID) if it still runs when the `with` block ends."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bridge", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=bridge_env(), start_new_session=True)

    def __enter__(self) -> Foreground:
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def read_until(self, marker: str) -> list[str]:
        """The lines printed up to the first holding `marker` (blocks until then)."""
        assert self.proc.stdout is not None
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if marker in line:
                return lines
        raise AssertionError(f"exited before printing {marker!r}: {lines}")

    def ctrl_c(self, timeout: float = 30) -> tuple[str, str]:
        """SIGINT to the whole group, then the rest of stdout and all of stderr."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.communicate(timeout=timeout)


Procs = Callable[[BridgeProcess], BridgeProcess]  # the `procs` fixture: tracks one, returns it


async def retained(broker: mosquitto.Broker, filters: list[str], *, per_page: int = 1,
                   **client_kwargs: Any) -> dict[str, bytes]:
    """Every retained message under `filters`: what a subscriber arriving now would find.
    Subscribed `per_page` filters at a time at QoS 1, each page ended by a marker; a page
    must match fewer than 1,020 retained messages (a stock Mosquitto queues no more for a
    QoS 1 subscriber and drops the rest of a replay): narrow filters, e.g. one per device,
    for a broker holding more."""
    marker = f"test-marker/{os.urandom(6).hex()}"
    found: dict[str, bytes] = {}
    async with asyncio.timeout(120), aiomqtt.Client(broker.host, broker.port,
                                                    **client_kwargs) as client:
        await client.subscribe(marker, qos=1)
        messages = aiter(client.messages)
        for number, start in enumerate(range(0, len(filters), per_page)):
            await client.subscribe([(f, 1) for f in filters[start:start + per_page]])
            await client.publish(marker, str(number).encode(), qos=1)
            while True:
                message = await anext(messages)
                if message.topic.value == marker:
                    if message.payload == str(number).encode():
                        break
                elif message.retain and isinstance(message.payload, bytes) and message.payload:
                    found[message.topic.value] = message.payload
    return found


async def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample of the bridge's /metrics on 127.0.0.1:`port` (None if absent or the
    endpoint does not answer)."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def poll(fetch: Callable[[], Awaitable[T]], predicate: Callable[[T], Any],
               timeout: float, what: Callable[[T], str], interval: float = 0.05) -> T:
    """Fetch until `predicate` holds of what was fetched, and return it; on timeout an
    AssertionError says `what(last fetched)`. For state with no event to wait on (another
    process, a broker's retained topics)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await fetch()
        if predicate(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what(value)}")
        await asyncio.sleep(interval)


async def wait_metric(port: int, name: str, predicate: Callable[[float], bool],
                      timeout: float = 10.0, **labels: str) -> float:
    """Poll /metrics until the sample satisfies `predicate`."""
    value = await poll(lambda: metric(port, name, **labels),
                       lambda v: v is not None and predicate(v), timeout,
                       lambda v: f"{name}{labels} (last: {v})")
    assert value is not None
    return value


def expected_state(sim: Simulator, device_id: int) -> dict[str, Any]:
    """What the local state must say, computed from the simulator's own telemetry."""
    dev = sim.devices[device_id]
    pos = dev.value("position")
    newest = max(ts for _, ts in dev.telemetry.values())
    return {
        "battery": dev.value("battery.level"),
        "voltage": dev.value("battery.voltage"),
        "charging": dev.value("battery.charging.status"),
        "signal": dev.value("gsm.signal.level"),
        "locked": dev.value("lock.status"),
        "latitude": pos["latitude"],
        "longitude": pos["longitude"],
        "altitude": pos["altitude"],
        "satellites": pos["satellites"],
        "hdop": pos["hdop"],
        "speed": pos["speed"],
        "direction": pos["direction"],
        "position_valid": pos["valid"],
        "last_seen": iso(newest),
    }


def server_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[trustme.CA, Path, Path]:
    """A private CA and a certificate for `host` it signed: (the CA, the chain's file, the
    key's file), for a listener's built-in TLS (`stream.cert_file`, `stream.key_file`)."""
    ca = trustme.CA()
    cert = ca.issue_cert(host)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca, cert_file, key_file


async def every_device_state(rec: Recorder, sim: Simulator, timeout: float = 30) -> None:
    """Until each simulated device's normalized state is on the recorder's broker (under
    `flespi/`), with the battery the simulator reports."""
    for device_id, device in sim.devices.items():
        state = await rec.wait_for(functools.partial(rec.state, "flespi", device_id),
                                   timeout=timeout, what=f"state of device {device_id}")
        assert state["battery"] == device.value("battery.level"), state
