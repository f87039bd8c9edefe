"""Security (issue 7, point 6) on real brokers with certificates made by the test (trustme):
TLS with a client certificate and a password to the local broker, verified TLS to flespi,
and the token out of every log line, at DEBUG level and in TLS failures too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trustme
from support.helpers import (
    PYTHON,
    TOKEN,
    BridgeFactory,
    Recorder,
    bridge_env,
    expected_state,
    make_settings,
    wait_until,
)

from bridge.app.bridge import Bridge
from bridge.config import settings as config
from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

BASE = "flespi"
USER = "flespi-bridge"
PASSWORD = "LocalBrokerPassw0rd-7f3a9c"
WRONG_PASSWORD = "NotThePassw0rd-51d2e8"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@dataclass
class Pki:
    """A test CA, a server certificate for 127.0.0.1, one for another host, and a client
    certificate; files in a directory the broker can read even after dropping root."""

    directory: Path
    ca: trustme.CA

    def __post_init__(self) -> None:
        d = self.directory
        self.ca.cert_pem.write_to_path(str(d / "ca.pem"))
        for name, identity in (("server", "127.0.0.1"), ("elsewhere", "flespi.example.org"),
                               ("client", "flespi-bridge@test")):
            cert = self.ca.issue_cert(identity)
            cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
            cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
        subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(d / "passwd"), USER, PASSWORD],
                       check=True, capture_output=True)
        for path in d.iterdir():
            path.chmod(0o644)

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def tls_lines(self, server: str = "server") -> tuple[str, ...]:
        """Per-listener TLS settings (they follow a `listener` line)."""
        return (f"cafile {self.path('ca.pem')}", f"certfile {self.path(server + '.pem')}",
                f"keyfile {self.path(server + '.key')}")

    def client_context(self, *, certificate: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.path("ca.pem"))
        if certificate:
            ctx.load_cert_chain(self.path("client.pem"), self.path("client.key"))
        return ctx

    def local_tls(self, **overrides: Any) -> dict[str, Any]:
        """The bridge's `[local]` settings for the TLS broker."""
        return {"tls": True, "ca_file": self.path("ca.pem"), "cert_file": self.path("client.pem"),
                "key_file": self.path("client.key"), "username": USER, "password": PASSWORD,
                **overrides}


@pytest.fixture
def pki() -> Iterator[Pki]:
    directory = Path(tempfile.mkdtemp(prefix="flespi-bridge-pki-"))
    directory.chmod(0o755)  # mosquitto started as root reads these as its own user
    try:
        yield Pki(directory, trustme.CA())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@pytest.fixture
def tls_local(brokers: Callable[..., mosquitto.Broker], pki: Pki) -> mosquitto.Broker:
    """A local broker that takes only TLS with a client certificate and a password."""
    return brokers(extra_config=(
        *pki.tls_lines(),
        "require_certificate true",
        f"password_file {pki.path('passwd')}",
        "allow_anonymous false",  # overrides the default broker's `allow_anonymous true`
    ))


@dataclass
class TlsUpstream:
    broker: mosquitto.Broker  # its own port is plain: the simulator publishes there
    tls_port: int  # TLS with the certificate for 127.0.0.1
    elsewhere_port: int  # TLS with a valid certificate for another host name


@pytest.fixture
async def tls_upstream(brokers: Callable[..., mosquitto.Broker], pki: Pki) -> TlsUpstream:
    tls_port, elsewhere_port = mosquitto.free_port(), mosquitto.free_port()
    broker = brokers(extra_config=(
        *mosquitto.FLESPI_LIKE,
        f"listener {tls_port} 127.0.0.1", *pki.tls_lines("server"),
        f"listener {elsewhere_port} 127.0.0.1", *pki.tls_lines("elsewhere"),
    ))
    await wait_until(lambda: port_open(tls_port) and port_open(elsewhere_port),
                     what="the TLS listeners")
    return TlsUpstream(broker, tls_port, elsewhere_port)


@pytest.fixture
async def tls_sim(tls_upstream: TlsUpstream) -> AsyncIterator[Simulator]:
    simulator = Simulator(tls_upstream.broker.host, tls_upstream.broker.port, devices=3, seed=7)
    await simulator.start()
    yield simulator
    await simulator.stop()


def secrets_in(records: list[logging.LogRecord]) -> list[str]:
    found = []
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        if record.exc_info and not record.exc_text:
            text += logging.Formatter().formatException(record.exc_info)
        found += [s for s in (TOKEN, PASSWORD, WRONG_PASSWORD) if s in text]
    return found


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(reply.split()[1])


async def records_matching(caplog: pytest.LogCaptureFixture, prefix: str, *needles: str,
                           count: int = 1, timeout: float = 30) -> list[logging.LogRecord]:
    """Wait for `count` records of loggers under `prefix` that contain every needle."""
    def found() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith(prefix)
                and all(n.lower() in r.getMessage().lower() for n in needles)]

    await wait_until(lambda: len(found()) >= count, timeout=timeout,
                     what=f"{count} {prefix} log line(s) with {needles}")
    return found()


# -- TLS to the local broker ------------------------------------------------------------------

async def test_the_local_broker_refuses_what_the_bridge_must_not_do(tls_local: mosquitto.Broker,
                                                                    pki: Pki) -> None:
    """The broker under test really enforces TLS, the client certificate and the password
    (otherwise the tests below would prove nothing)."""
    attempts: list[dict[str, Any]] = [
        {},  # plain MQTT on the TLS port
        {"tls_context": pki.client_context(certificate=False), "username": USER,
         "password": PASSWORD},
        {"tls_context": pki.client_context(), "username": USER, "password": WRONG_PASSWORD},
        {"tls_context": pki.client_context()},  # anonymous
    ]
    for kwargs in attempts:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(tls_local.host, tls_local.port, timeout=3, **kwargs):
                pass
    async with aiomqtt.Client(tls_local.host, tls_local.port, tls_context=pki.client_context(),
                              username=USER, password=PASSWORD, timeout=10):
        pass


async def test_bridge_publishes_over_tls_with_certificate_and_password(
        upstream: mosquitto.Broker, sim: Simulator, tls_local: mosquitto.Broker, pki: Pki,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(upstream, tls_local, local=pki.local_tls())
    async with Recorder(tls_local, [f"{BASE}/#"], tls_context=pki.client_context(),
                        username=USER, password=PASSWORD) as rec:
        bridge = await bridge_factory(settings)
        for device_id in sim.devices:
            def arrived(d: int = device_id) -> bool:
                return rec.state(BASE, d) == expected_state(sim, d)
            await rec.wait_for(arrived, timeout=20, what=f"the state of {device_id} over TLS")
        assert rec.latest[f"{BASE}/bridge/state"].payload == b"online"
        assert bridge.ready()
        assert bridge.stats.up == {"upstream": True, "local": True}
        assert bridge.health is not None
        assert await http_status(bridge.health.port, "/readyz") == 200
    assert secrets_in(caplog.records) == []


@pytest.mark.parametrize(("problem", "needles"), [
    ("wrong_password", ("local broker 127.0.0.1:", "not authorized")),
    # TLS 1.3: the broker's alert arrives after the handshake; paho logs it (through the
    # bridge's `bridge.publish.local_broker.mqtt` logger), aiomqtt itself only times out
    ("no_client_certificate", ("certificate required",)),
    ("unknown_ca", ("local broker 127.0.0.1:", "certificate verify failed")),
])
async def test_bridge_refused_by_the_local_broker(
        problem: str, needles: tuple[str, ...], upstream: mosquitto.Broker, sim: Simulator,
        tls_local: mosquitto.Broker, pki: Pki, bridge_factory: BridgeFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    local_settings = {
        "wrong_password": pki.local_tls(password=WRONG_PASSWORD),
        "no_client_certificate": pki.local_tls(cert_file=None, key_file=None),
        "unknown_ca": pki.local_tls(ca_file=None),  # the system store knows no test CA
    }[problem]
    bridge = await bridge_factory(make_settings(upstream, tls_local, local=local_settings))
    await asyncio.wait_for(bridge.loaded.wait(), 20)  # flespi is fine, the local side is not
    # it keeps trying, with backoff (without a client certificate each try first waits for
    # aiomqtt's 10 s connect timeout, so one line is enough there)
    await records_matching(caplog, "bridge.publish.local_broker", *needles,
                           count=1 if problem == "no_client_certificate" else 2)
    assert not bridge.local.connected.is_set()
    assert bridge.stats.up["local"] is False
    assert not bridge.ready()
    assert bridge.health is not None
    assert await http_status(bridge.health.port, "/readyz") == 503
    assert bridge.stats.up["upstream"] is True
    assert secrets_in(caplog.records) == []


# -- TLS to flespi ----------------------------------------------------------------------------

async def test_flespi_certificate_is_verified_by_default(
        tls_upstream: TlsUpstream, tls_sim: Simulator, local: mosquitto.Broker, pki: Pki,
        caplog: pytest.LogCaptureFixture) -> None:
    """`flespi.tls` without `ca_file` uses the system store: a certificate from an unknown CA
    is refused; with the CA, a certificate for another host is refused too."""
    defaults = config.load(overrides={"flespi": {"token": TOKEN}}).flespi
    assert defaults.tls
    assert defaults.ca_file is None
    caplog.set_level(logging.DEBUG)
    for port, ca_file, why in [(tls_upstream.tls_port, None, ""),
                               (tls_upstream.elsewhere_port, pki.path("ca.pem"), "mismatch")]:
        caplog.clear()
        flespi: dict[str, Any] = {"tls": True, "port": port}
        if ca_file:
            flespi["ca_file"] = ca_file
        bridge = Bridge(make_settings(tls_upstream.broker, local, flespi=flespi))
        await bridge.start()
        try:
            # twice: after a backoff the bridge tries again, it neither gives up nor crashes
            records = await records_matching(
                caplog, "bridge.flespi.session", f"flespi: cannot connect to 127.0.0.1:{port}",
                "certificate verify failed", why, count=2)
            assert records[0].levelno == logging.WARNING
            assert bridge.stats.up["upstream"] is False
            assert not bridge.ready()
            assert bridge.store.devices == {}
        finally:
            await bridge.stop()
        assert secrets_in(caplog.records) == []


async def test_flespi_over_tls_with_the_ca_loads_the_fleet(
        tls_upstream: TlsUpstream, tls_sim: Simulator, local: mosquitto.Broker, pki: Pki,
        bridge_factory: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tls_upstream.broker, local, flespi={
        "tls": True, "port": tls_upstream.tls_port, "ca_file": pki.path("ca.pem")})
    assert settings.flespi.tls
    async with Recorder(local, [f"{BASE}/+/state"]) as rec:
        bridge = await bridge_factory(settings)
        for device_id in tls_sim.devices:
            def arrived(d: int = device_id) -> bool:
                return rec.state(BASE, d) == expected_state(tls_sim, d)
            await rec.wait_for(arrived, timeout=20,
                               what=f"the state of {device_id} from flespi over TLS")
        assert set(bridge.store.devices) == set(tls_sim.devices)
        # live updates flow too
        device_id = next(iter(tls_sim.devices))
        await tls_sim.set_values(device_id, {"battery.level": 21})
        await rec.wait_for(lambda: rec.seen_state(BASE, device_id)["battery"] == 21,
                           what="a live update over TLS")
        assert bridge.ready()
    assert any("connected to flespi" in r.getMessage() for r in caplog.records)
    assert secrets_in(caplog.records) == []


# -- the token in the logs of the real process ------------------------------------------------

def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, options in sections.items():
        lines.append(f"[{name}]")
        for key, value in options.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("outcome", ["refused", "connected"])
async def test_secrets_never_in_the_debug_log_of_the_process(
        outcome: str, tls_upstream: TlsUpstream, tls_sim: Simulator, tls_local: mosquitto.Broker,
        pki: Pki, tmp_path: Path) -> None:
    """`python -m bridge run` at DEBUG: every library narrates, TLS fails or succeeds on both
    sides, and neither the token nor the broker password shows up anywhere. The token comes
    from a secrets directory (refused) or a token file (connected)."""
    refused = outcome == "refused"
    flespi: dict[str, Any] = {"host": "127.0.0.1", "port": tls_upstream.tls_port, "tls": True,
                              "client_id": "bridge-under-test"}
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    if refused:
        (secrets / "flespi__token").write_text(TOKEN + "\n")
    else:
        (tmp_path / "token").write_text(TOKEN + "\n")
        flespi["token_file"] = str(tmp_path / "token")
        flespi["ca_file"] = pki.path("ca.pem")
    local = {"host": "127.0.0.1", "port": tls_local.port, "coalesce_window": 0.05,
             **{k: v for k, v in pki.local_tls().items() if v is not None}}
    if refused:
        local["password"] = WRONG_PASSWORD
    cfg = write_config(tmp_path / "bridge.toml", {
        "flespi": flespi, "local": local, "reconnect": {"min_delay": 0.05, "max_delay": 0.5},
        "metrics": {"enabled": False}, "log": {"level": "DEBUG"}})
    log_path = tmp_path / "bridge.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([PYTHON, "-m", "bridge", "run", "--config", str(cfg),
                                 "--secrets-dir", str(secrets)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=bridge_env())

    def log_has(*needles: str) -> bool:
        text = log_path.read_text(errors="replace").lower()
        return all(n.lower() in text for n in needles)

    try:
        if refused:
            await wait_until(lambda: log_has("certificate verify failed", "not authorized"),
                             timeout=30, what="both refusals in the log")
        else:
            async with Recorder(tls_local, [f"{BASE}/+/state"], tls_context=pki.client_context(),
                                username=USER, password=PASSWORD) as rec:
                await rec.wait_for(lambda: all(rec.state(BASE, d) for d in tls_sim.devices),
                                   timeout=30, what="states from the bridge process")
            assert log_has("connected to flespi", "connected to local broker")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, timeout=30, what="exit")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    if not refused:
        assert " DEBUG " in text  # the level really was DEBUG: libraries narrate
    assert TOKEN not in text
    assert PASSWORD not in text
    assert WRONG_PASSWORD not in text
