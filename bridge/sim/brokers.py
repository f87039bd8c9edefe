"""Throwaway brokers on loopback, for the demo, the tests and the benchmarks.

The `mosquitto` binary is used when it is installed; otherwise, when a Docker engine
answers, testcontainers runs the `eclipse-mosquitto` image. Brokers bind 127.0.0.1 only.

Named Mosquitto configurations say which broker a test or a benchmark runs against:
`STOCK` (Mosquitto's defaults, which Home Assistant's Mosquitto add-on keeps: at most 20
QoS 1 messages in flight and 1,000 queued per client), `LIMITED` (a stock broker protected by
a packet size limit), `TUNED` (no per-client queue limits, Nagle off) and `FLESPI_LIKE` (the
simulated flespi). `start(foreign=True)` starts amqtt instead, a broker that is not Mosquitto
and speaks only MQTT 3.1.1 (the `amqtt` package, a test dependency), run as a child process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.exceptions import BrokerUnavailableError

IMAGE = "eclipse-mosquitto:2.0"
# A simulated flespi keeps what an offline persistent session missed without limit, as
# flespi does (up to 1 GB); Mosquitto's default would drop QoS 1 messages past 1000.
FLESPI_LIKE = ("max_queued_messages 0", "max_inflight_messages 0")
STOCK: tuple[str, ...] = ()
# Bytes: a broker protecting itself from large packets (Mosquitto drops the connection
# of a client that sends a larger one).
PACKET_LIMIT = 65536
LIMITED = (f"max_packet_size {PACKET_LIMIT}",)
TUNED = (*FLESPI_LIKE, "set_tcp_nodelay true")
CONFIGURATIONS = {"stock": STOCK, "limited": LIMITED, "tuned": TUNED}


def find_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _wait_port(host: str, port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if alive is not None and not alive():
            raise BrokerUnavailableError(f"the broker on port {port} exited during start-up")
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"the broker on port {port} did not start in {timeout}s")
        time.sleep(0.02)


@dataclass
class Broker:
    """A running broker. `stop`/`start` keep the port, so clients can reconnect to it."""

    port: int
    host: str = "127.0.0.1"
    extra_config: tuple[str, ...] = ()
    persistence: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mosquitto-")))
    _process: subprocess.Popen[bytes] | None = None
    _container: Any = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def config_text(self, listen_host: str) -> str:
        lines = [
            f"listener {self.port} {listen_host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/" if self.persistence else "",
            # Started as root, mosquitto would switch to the `mosquitto` user, which cannot
            # read or write our private temporary directories (persistence, an ACL file).
            f"user {_user()}" if os.geteuid() == 0 else "",
            "log_type error",
            "log_type warning",
            *self.extra_config,
        ]
        return "\n".join(line for line in lines if line) + "\n"

    def start(self, timeout: float = 10.0) -> Broker:
        binary = find_binary()
        if binary:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(self.config_text(self.host))
            log = (self.workdir / "mosquitto.log").open("ab")
            self._process = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: the terminal's Ctrl-C (SIGINT to the foreground group)
                # must reach only the program that started it, which stops it in order.
                process_group=0,
            )
            log.close()
            process = self._process
            _wait_port(self.host, self.port, timeout, alive=lambda: process.poll() is None)
        elif _docker_available():
            self._start_container(timeout)
        else:
            raise BrokerUnavailableError(
                "no Mosquitto broker available: install the `mosquitto` binary "
                "(Debian/Ubuntu: apt-get install mosquitto) or start a Docker engine"
            )
        return self

    def _start_container(self, timeout: float) -> None:
        from testcontainers.core.container import DockerContainer

        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text("0.0.0.0").replace(str(self.workdir), "/mosquitto/data"))
        container = (
            DockerContainer(IMAGE)
            # docker-py takes (host ip, port) to publish on loopback only
            .with_bind_ports(self.port, (self.host, self.port))  # type: ignore[arg-type]
            .with_volume_mapping(str(conf), "/mosquitto/config/mosquitto.conf", "ro")
        )
        self._container = container.start()
        _wait_port(self.host, self.port, timeout)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM); a persistent broker saves its state."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._container is not None:
            self._container.stop()
            self._container = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): nothing is saved, clients see the connection drop."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        if self._container is not None:
            self._container.stop()
            self._container = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Amqtt(Broker):
    """amqtt (a Python broker, MQTT 3.1.1 only) in a child process: stopped by its PID,
    restarted on the same port. It keeps retained messages in memory only."""

    def config_text(self, listen_host: str) -> str:
        return "\n".join([
            "listeners:", "  default:", "    type: tcp", f"    bind: {listen_host}:{self.port}",
            "plugins:", "  amqtt.plugins.authentication.AnonymousAuthPlugin:",
            "    allow_anonymous: true", ""])

    def start(self, timeout: float = 20.0) -> Broker:
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(self.config_text(self.host))
        log = (self.workdir / "amqtt.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        process = self._process
        _wait_port(self.host, self.port, timeout, alive=lambda: process.poll() is None)
        return self


def start(
    *, port: int | None = None, extra_config: tuple[str, ...] = (), persistence: bool = False,
    attempts: int = 3, foreign: bool = False,
) -> Broker:
    """Start a broker on a free loopback port (retrying if another process takes the port):
    Mosquitto with `extra_config`, or amqtt when `foreign`."""
    last: BrokerUnavailableError | None = None
    kind = Amqtt if foreign else Broker
    for _ in range(attempts):
        broker = kind(port=port or free_port(), extra_config=extra_config,
                      persistence=persistence)
        try:
            return broker.start()
        except BrokerUnavailableError as exc:
            broker.stop()
            last = exc
            if port is not None or "no Mosquitto broker available" in str(exc):
                break
    assert last is not None
    raise last
