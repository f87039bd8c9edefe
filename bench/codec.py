"""The local client's codec against `mqtt5` (the Rust MQTT 5 codec under aiomqtt 3), same
run: what the bridge does per publication on the local link, encoding a batch of retained
QoS 1 PUBLISH packets (MQTT 5) and reading the broker's PUBACKs from the byte stream.

    python -m bench.codec [--batch 1000] [--repeat 200]

Prints the best of `--repeat` runs per publication, in microseconds (the decision it fed:
docs/decisions/0002-local-link-mqtt5-codec.md)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from importlib.metadata import version

from bridge.mqtt import codec


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    import mqtt5

    n = args.batch
    pubs = [(f"flespi/{5_000_000 + i}/state",
             b'{"battery":87,"voltage":4.02,"charging":false,"signal":75,"locked":true,'
             b'"latitude":52.520008,"longitude":13.404954,"speed":0.0,"last_seen":'
             b'"2026-12-07T22:00:00Z"}', True) for i in range(n)]
    mids = list(range(1, n + 1))
    ours = codec.publish311_many(pubs, 1, mids, True)

    def encode_mqtt5() -> bytes:
        qos = mqtt5.QoS.AT_LEAST_ONCE
        return b"".join(mqtt5.PublishPacket(t, p, qos=qos, retain=r, packet_id=m).write()
                        for (t, p, r), m in zip(pubs, mids, strict=True))

    assert encode_mqtt5() == ours, "the two codecs disagree"
    acks = b"".join(codec.puback(m) for m in mids)
    acks_with_reason = b"".join(codec.packet(codec.PUBACK, m.to_bytes(2, "big") + b"\x10")
                                for m in mids)

    def decode_ours(stream: bytes) -> list[int]:
        return codec.PacketReader().split(stream).acks

    def decode_mqtt5(stream: bytes) -> list[int]:
        view, pos, got = memoryview(stream), 0, []
        while pos < len(stream):
            packet, size = mqtt5.read(view[pos:])
            pos += size
            assert isinstance(packet, mqtt5.PubAckPacket)
            got.append(packet.packet_id)
        return got

    assert decode_ours(acks) == decode_mqtt5(acks) == decode_ours(acks_with_reason) == mids
    rows = [
        ("encode a retained QoS 1 PUBLISH (MQTT 5, batch)",
         lambda: codec.publish311_many(pubs, 1, mids, True), encode_mqtt5),
        ("read a PUBACK (4 bytes) from the stream", lambda: decode_ours(acks),
         lambda: decode_mqtt5(acks)),
        ("read an MQTT 5 PUBACK with reason 0x10", lambda: decode_ours(acks_with_reason),
         lambda: decode_mqtt5(acks_with_reason)),
    ]
    print(f"per publication, best of {args.repeat} runs of {n}, microseconds")
    print(f"| step | bridge.mqtt.codec | mqtt5 {version('mqtt5')} | ratio |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        ta, tb = best(a, args.repeat) / n * 1e6, best(b, args.repeat) / n * 1e6
        print(f"| {name} | {ta:.3f} | {tb:.3f} | {tb / ta:.1f}x |")


if __name__ == "__main__":
    main()
