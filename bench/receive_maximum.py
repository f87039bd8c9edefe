"""What honouring the local broker's Receive Maximum costs the bridge's own client, same run:
40,000 retained QoS 1 publications in batches of 1,000 (at most five batches handed over at
once, as the publisher's pipeline does) to a stock Mosquitto over MQTT 5 (its CONNACK says
Receive Maximum 20), over MQTT 3.1.1 (no window), and over MQTT 5 to one with
`max_inflight_messages 0` (no window).

    python -m bench.receive_maximum [--rounds 3]

Prints publications a second and the client's CPU per publication."""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.stream_ingest import Acks
from bridge.mqtt.client import MqttClient
from bridge.mqtt.options import Options
from bridge.sim.brokers import Broker, free_port

N, BATCH, PAYLOAD = 40_000, 1_000, b'{"battery":87,"voltage":4.02,"charging":false}' * 4


async def publish_all(config: tuple[str, ...], protocol: int) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) to publish N and have every PUBACK."""
    broker = Broker(free_port(), extra_config=config).start()
    try:
        client = MqttClient(broker.host, broker.port, client_id="bench-window",
                            options=Options(protocol=protocol))
        await client.connect()
        batches = [[(f"flespi/{i}/state", PAYLOAD, True) for i in range(k, k + BATCH)]
                   for k in range(0, N, BATCH)]
        start, cpu = time.perf_counter(), time.process_time()
        done: list[asyncio.Future[None]] = []
        for batch in batches:
            acks = Acks(len(batch))
            done.append(acks.done)
            client.publish_many(batch, 1, acks)
            if len(done) >= 5:
                await done[-5]
        await asyncio.gather(*done)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await client.disconnect()
        return elapsed, cpu
    finally:
        broker.stop()


async def main(rounds: int) -> None:
    cases = [("stock Mosquitto, MQTT 5 (Receive Maximum 20)", (), 5),
             ("stock Mosquitto, MQTT 3.1.1", (), 4),
             ("max_inflight_messages 0, MQTT 5", ("max_inflight_messages 0",), 5)]
    print("| round | broker | publications/s | client CPU per publication |")
    print("|---|---|---|---|")
    for round_ in range(1, rounds + 1):
        for name, config, protocol in cases:
            elapsed, cpu = await publish_all(config, protocol)
            print(f"| {round_} | {name} | {N / elapsed:,.0f} | {cpu / N * 1e6:.1f} µs |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
