"""An amqtt broker (Python, MQTT 3.1.1 only) on a free loopback port, as a child process
stopped by its PID: a broker that is not Mosquitto and does not speak MQTT 5."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.sim.brokers import free_port


@contextlib.contextmanager
def amqtt_broker(workdir: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of a running amqtt broker that takes anonymous clients."""
    host, port = "127.0.0.1", free_port()
    conf = workdir / "amqtt.yaml"
    conf.write_text(f"""listeners:
  default:
    type: tcp
    bind: {host}:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
""")
    binary = shutil.which("amqtt") or str(Path(sys.executable).with_name("amqtt"))
    with (workdir / "amqtt.log").open("ab") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                break
            assert proc.poll() is None, (workdir / "amqtt.log").read_text()
            assert time.monotonic() < deadline, "amqtt did not start within 20 s"
            time.sleep(0.05)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
