"""`log.format = "json"`: one JSON object per line with level, logger and message; secrets
scrubbed from messages, arguments and tracebacks."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.helpers import TOKEN, BridgeProcess, wait_until

from bridge import logs
from bridge.sim import brokers as mosquitto


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line is one complete JSON object
        assert isinstance(doc, dict), line
        docs.append(doc)
    return docs


def test_json_lines_with_the_token_scrubbed(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "json", [TOKEN, "broker-password"])
    log = logging.getLogger("bridge.test")
    log.debug("below the level: %s", TOKEN)
    log.info("connecting with token %s", TOKEN)
    log.warning("two lines\nand a password: broker-password, ünïcode")
    try:
        raise RuntimeError(f"refused: {TOKEN}")
    except RuntimeError:
        logging.getLogger("gmqtt.mqtt.handler").exception("connection failed")

    err = capsys.readouterr().err
    assert TOKEN not in err
    assert "broker-password" not in err
    docs = json_lines(err)
    assert [(d["level"], d["logger"]) for d in docs] == [
        ("INFO", "bridge.test"), ("WARNING", "bridge.test"), ("ERROR", "gmqtt.mqtt.handler")]
    assert docs[0]["message"] == f"connecting with token {logs.REDACTED}"
    assert docs[1]["message"] == f"two lines\nand a password: {logs.REDACTED}, ünïcode"
    assert docs[2]["message"] == "connection failed"
    assert f"RuntimeError: refused: {logs.REDACTED}" in docs[2]["exception"]
    assert all(isinstance(d["ts"], float) for d in docs)


def test_text_format_is_not_json(restore_logging: None,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "text", [TOKEN])
    logging.getLogger("bridge.test").info("token %s", TOKEN)
    err = capsys.readouterr().err
    assert err.rstrip().endswith(f"INFO    bridge.test: token {logs.REDACTED}")
    assert TOKEN not in err


async def test_the_bridge_logs_json_lines(
        tmp_path: Path, upstream: mosquitto.Broker, local: mosquitto.Broker,
        procs: Callable[[BridgeProcess], BridgeProcess]) -> None:
    """`run` with `log.format = "json"` at DEBUG (the MQTT libraries narrate packets):
    every line is JSON. The token, pasted by mistake where the bridge logs what it was
    given (an unknown metrics.fleet_parameters entry), comes out scrubbed."""
    proc = procs(BridgeProcess(tmp_path, upstream, local,
                               metrics={"fleet_parameters": ["voltage", TOKEN]},
                               log={"format": "json", "level": "DEBUG"}).start())
    await wait_until(lambda: "connected to flespi" in proc.log(), 30, "the flespi connection")
    proc.signal(signal.SIGTERM)
    assert proc.proc is not None
    await wait_until(lambda: proc.proc is not None and proc.proc.poll() is not None, 30,
                     "the bridge to stop")
    assert proc.proc.returncode == 0, proc.log()
    text = proc.log()
    assert TOKEN not in text
    docs = json_lines(text)
    assert {"level", "logger", "message", "ts"} <= set().union(*docs)
    assert all({"level", "logger", "message"} <= d.keys() for d in docs)
    assert any(d["level"] == "DEBUG" for d in docs)
    assert any(d["message"].startswith("connected to flespi 127.0.0.1:") for d in docs)
    assert any(d["level"] == "WARNING" and d["logger"] == "bridge.app.bridge"
               and d["message"].startswith(f"metrics.fleet_parameters: no such attribute "
                                           f"{logs.REDACTED} ") for d in docs), text


async def test_the_bridge_at_info_logs_no_library_chatter(
        tmp_path: Path, upstream: mosquitto.Broker, local: mosquitto.Broker,
        procs: Callable[[BridgeProcess], BridgeProcess]) -> None:
    """At the default level the log says what the bridge does, not what gmqtt does with
    each packet ([CONNECTION MADE], [SEND SUB], SUBACK): those only at DEBUG."""
    proc = procs(BridgeProcess(tmp_path, upstream, local, log={"level": "INFO"}).start())
    await wait_until(lambda: "connected to flespi" in proc.log(), 30, "the flespi connection")
    await wait_until(lambda: "connected to local broker" in proc.log(), 30,
                     "the local connection")
    proc.signal(signal.SIGTERM)
    await wait_until(lambda: proc.proc is not None and proc.proc.poll() is not None, 30,
                     "the bridge to stop")
    text = proc.log()
    for chatter in ("[CONNECTION MADE]", "[SEND SUB]", "SUBACK", "[CMD 0x"):
        assert chatter not in text, text
    assert "connected to flespi" in text
