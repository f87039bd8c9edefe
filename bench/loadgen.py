"""The load generator: writes a pre-encoded stream of MQTT 5 PUBLISH packets to a broker.

Runs in its own process (`python -m bench.loadgen ...`) so that it never shares a core's
event loop with what it measures. The stream is encoded before the clock starts (see
`bench.workload`), so sending is only `sendall` of slices of one buffer on a plain blocking
socket, while a second thread reads the PUBACKs:

- `blast`: as fast as the broker takes it, pipelined up to the broker's Receive Maximum
  (QoS 1 packet ids in flight stay unique because the broker acknowledges in order);
- `paced`: packet i is written at `start + i / rate`; the time each packet was written
  is saved (CLOCK_MONOTONIC, which every process on the machine shares) for latency.

Its own rate, N / (last PUBACK - first write), is part of every result.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path

from bridge.mqtt import codec as wire
from bridge.mqtt.v5 import connack_receive_maximum

CHUNK = 512  # packets per write in blast mode
ACK_TIMEOUT = 120.0


@dataclass
class Stream:
    data: bytes
    offsets: array[int]  # n + 1 offsets into data

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    def save(self, path: Path) -> None:
        path.write_bytes(self.data)
        with path.with_suffix(".idx").open("wb") as fh:
            self.offsets.tofile(fh)

    @classmethod
    def load(cls, path: Path) -> Stream:
        data = path.read_bytes()
        offsets = array("Q")
        idx = path.with_suffix(".idx")
        with idx.open("rb") as fh:
            offsets.fromfile(fh, idx.stat().st_size // offsets.itemsize)
        return cls(data, offsets)


@dataclass
class Result:
    count: int
    mode: str
    start: float  # monotonic time of the first write
    written: float  # monotonic time the last packet was written
    acked: float  # monotonic time the last PUBACK arrived
    receive_maximum: int
    errors: int  # PUBACKs with a failure reason code

    @property
    def rate(self) -> float:
        elapsed = self.acked - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "rate": round(self.rate, 1)}


class _Acks(threading.Thread):
    """Reads the broker's packets, counts PUBACKs, wakes the writer."""

    def __init__(self, sock: socket.socket, expected: int) -> None:
        super().__init__(daemon=True, name="acks")
        self.sock = sock
        self.expected = expected
        self.acked = 0
        self.errors = 0
        self.last = 0.0
        self.cond = threading.Condition()
        self.failed: BaseException | None = None

    def run(self) -> None:
        reader = wire.PacketReader()
        try:
            while self.acked < self.expected:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("broker closed the connection")
                frames = reader.split(data)
                n = len(frames.acks)  # PUBACKs of four bytes: success
                for first, body in frames.packets:
                    if first & 0xF0 == wire.PUBACK:
                        n += 1
                        if len(body) > 2 and body[2] >= 0x80:
                            self.errors += 1
                    elif first & 0xF0 == wire.DISCONNECT:
                        raise ConnectionError(f"broker sent DISCONNECT {body[:1].hex()}")
                if frames.malformed:
                    raise wire.MalformedPacketError("the broker's byte stream is not MQTT")
                if n:
                    with self.cond:
                        self.acked += n
                        if self.acked >= self.expected:
                            self.last = time.monotonic()
                        self.cond.notify_all()
        except BaseException as exc:  # reported by the writer
            self.failed = exc
            with self.cond:
                self.cond.notify_all()


def _connect(host: str, port: int, client_id: str) -> tuple[socket.socket, int]:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.sendall(wire.connect5(client_id))
    reader = wire.PacketReader()
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("no CONNACK")
        for first, body in reader.split(data).packets:
            if first & 0xF0 == wire.CONNACK:
                if wire.connack_code(body) != 0:
                    raise ConnectionError(f"CONNACK reason {wire.connack_code(body)}")
                sock.settimeout(None)
                return sock, connack_receive_maximum(body) or 65535


def send(host: str, port: int, stream: Stream, *, mode: str = "blast", rate: float = 0.0,
         start_at: float | None = None, send_times: Path | None = None,
         client_id: str = "bench-loadgen") -> Result:
    n = stream.count
    sock, receive_max = _connect(host, port, client_id)
    window = min(receive_max, 60_000)
    acks = _Acks(sock, n)
    acks.start()
    data = memoryview(stream.data)
    offsets = stream.offsets
    times = array("d")
    try:
        if mode == "blast":
            start = time.monotonic()
            i = 0
            while i < n:
                allowed = acks.acked + window - i
                if allowed <= 0:
                    with acks.cond:
                        while acks.acked + window - i <= 0 and acks.failed is None:
                            acks.cond.wait(1.0)
                    if acks.failed is not None:
                        raise acks.failed
                    continue
                j = min(n, i + min(allowed, CHUNK))
                sock.sendall(data[offsets[i]:offsets[j]])
                i = j
        else:
            if rate <= 0:
                raise ValueError("paced mode needs a rate")
            start = start_at if start_at is not None else time.monotonic() + 0.05
            i = 0
            while i < n:
                now = time.monotonic()
                due = min(n, int((now - start) * rate) + 1) if now >= start else 0
                if due > i:
                    if due - i > window - (i - acks.acked):
                        raise RuntimeError("the broker stopped acknowledging (window full)")
                    sock.sendall(data[offsets[i]:offsets[due]])
                    written = time.monotonic()
                    times.extend([written] * (due - i))
                    i = due
                else:
                    time.sleep(max(0.0, min(0.01, start + i / rate - now)))
        written = time.monotonic()
        with acks.cond:
            deadline = written + ACK_TIMEOUT
            while acks.acked < n and acks.failed is None and time.monotonic() < deadline:
                acks.cond.wait(1.0)
        if acks.failed is not None:
            raise acks.failed
        if acks.acked < n:
            raise TimeoutError(f"only {acks.acked} of {n} PUBACKs in {ACK_TIMEOUT}s")
        sock.sendall(wire.DISCONNECT_PACKET)
    finally:
        sock.close()
    if send_times is not None:
        with send_times.open("wb") as fh:
            times.tofile(fh)
    return Result(n, mode, start, written, acks.last, receive_max, acks.errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stream", type=Path, required=True, help="file written by Stream.save")
    p.add_argument("--mode", choices=("blast", "paced"), default="blast")
    p.add_argument("--rate", type=float, default=0.0, help="packets/s in paced mode")
    p.add_argument("--start-at", type=float, default=None, help="CLOCK_MONOTONIC start time")
    p.add_argument("--send-times", type=Path, default=None)
    p.add_argument("--client-id", default="bench-loadgen")
    args = p.parse_args(argv)
    stream = Stream.load(args.stream)
    try:
        result = send(args.host, args.port, stream, mode=args.mode, rate=args.rate,
                      start_at=args.start_at, send_times=args.send_times,
                      client_id=args.client_id)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}),
              flush=True)
        return 1
    print(json.dumps({"event": "done", **result.as_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
