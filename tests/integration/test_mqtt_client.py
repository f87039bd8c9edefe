"""The bridge's own MQTT client (`bridge.mqtt.client.MqttClient`) against a real Mosquitto:
what the local side relies on, through the client's public interface only.

Connection loss is provoked by the broker's PID (the fixture's `Broker`): SIGSTOP freezes it
so that a PUBACK or SUBACK never comes, SIGKILL drops the connection."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import aiomqtt
import pytest
from support.helpers import Brokers

from bridge.exceptions import LocalUnavailableError
from bridge.mqtt.client import MAX_QUEUED_MESSAGES, MqttClient
from bridge.mqtt.options import (
    Options,
    ProtocolRefusedError,
    PublishRefusedError,
    SessionTakenOverError,
    Will,
)
from bridge.sim.brokers import Broker

QUICK = Options(timeout=5)


@asynccontextmanager
async def connected(broker: Broker, client_id: str, options: Options = QUICK
                    ) -> AsyncIterator[MqttClient]:
    client = MqttClient(broker.host, broker.port, client_id=client_id, options=options)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()
        client.abort()


@contextmanager
def frozen(broker: Broker) -> Iterator[None]:
    """The broker stopped (SIGSTOP by its PID): connections stay open, nothing answers."""
    pid = broker.pid
    if pid is None:
        pytest.skip("the broker runs in a container: no PID to signal")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):  # unless the test killed it meanwhile
            os.kill(pid, signal.SIGCONT)


class Counter:
    """A `Waiter` that counts PUBACKs and wakes the test once `expected` have come; it
    keeps the refusals, (topic, reason code)."""

    def __init__(self, expected: int) -> None:
        self.count, self.expected = 0, expected
        self.done = asyncio.Event()
        self.refusals: list[tuple[str, int]] = []

    def refused(self, publication: tuple[str, bytes, bool], code: int) -> None:
        self.refusals.append((publication[0], code))

    def set(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


async def next_message(client: MqttClient) -> tuple[str, bytes, bool]:
    return await asyncio.wait_for(client.message(), 10)


async def test_a_retained_qos1_publication_round_trips(brokers: Brokers) -> None:
    broker = brokers()
    async with connected(broker, "publisher") as publisher:
        await publisher.publish("fleet/1/state", b'{"on": true}', qos=1, retain=True,
                                timeout=5)  # returns once the broker sent its PUBACK
        async with connected(broker, "subscriber") as subscriber:
            await subscriber.subscribe("fleet/#", qos=1)
            assert await next_message(subscriber) == ("fleet/1/state", b'{"on": true}', True)
            await publisher.publish("fleet/2/state", b"live", qos=1, retain=False, timeout=5)
            assert await next_message(subscriber) == ("fleet/2/state", b"live", False)


async def test_a_batch_is_acknowledged_once_per_publication(brokers: Brokers) -> None:
    broker = brokers()
    big = b"x" * 20_000  # a three-byte remaining length
    batch = [(f"fleet/{i}/state", big if i % 50 == 0 else b"%d" % i, True) for i in range(500)]
    async with connected(broker, "publisher") as publisher, \
            connected(broker, "subscriber") as subscriber:
        await subscriber.subscribe("fleet/#", qos=1)
        counter = Counter(len(batch))
        assert publisher.publish_many(batch, 1, counter) == len(batch)
        await asyncio.wait_for(counter.done.wait(), 10)
        # more than Mosquitto's 20 in flight: the subscriber acknowledges what it receives
        got = [await next_message(subscriber) for _ in batch]
        assert got == [(topic, payload, False) for topic, payload, _ in batch]
        assert counter.count == len(batch)
        assert publisher.publish_many(batch[:3], 0, Counter(0)) == 0  # QoS 0: nothing due


async def test_connection_loss_fails_every_waiter_and_calls_handlers_once(
        brokers: Brokers) -> None:
    broker = brokers()
    client = MqttClient(broker.host, broker.port, client_id="doomed",
                        options=Options(timeout=5))
    await client.connect()
    calls: list[str] = []
    client.on_lost(lambda: calls.append("lost"))
    removed: Callable[[], None] = lambda: calls.append("removed")  # noqa: E731
    client.on_lost(removed)
    client.remove_on_lost(removed)
    with frozen(broker):
        publish = asyncio.create_task(client.publish("t/a", b"1", qos=1, timeout=None))
        subscribe = asyncio.create_task(client.subscribe("t/#"))
        message = asyncio.create_task(client.message())
        batch = Counter(2)
        assert client.publish_many([("t/b", b"2", True), ("t/c", b"3", True)], 1, batch) == 2
        await asyncio.sleep(0)  # one loop turn: the three tasks run up to their waits
        assert not any(task.done() for task in (publish, subscribe, message))
        broker.kill()  # by its PID: the socket closes under the client
    for task in (publish, subscribe, message):
        with pytest.raises(LocalUnavailableError, match="lost"):
            await asyncio.wait_for(task, 10)
    with pytest.raises(LocalUnavailableError, match="lost"):
        await asyncio.wait_for(asyncio.shield(client.closed), 10)
    assert batch.count == 0  # a batch's waiter is never told of PUBACKs that did not come
    assert not client.connected
    client.abort()
    await client.disconnect()
    assert calls == ["lost"]
    client.on_lost(lambda: calls.append("late"))  # registered after the loss: called at once
    assert calls == ["lost", "late"]
    with pytest.raises(LocalUnavailableError, match="not connected"):
        client.publish_many([("t/d", b"4", True)], 1, Counter(1))


async def test_an_idle_connection_is_kept_alive_by_pings(brokers: Brokers) -> None:
    broker = brokers()
    async with connected(broker, "idle", Options(keepalive=1, timeout=5)) as client:
        # Mosquitto drops a client silent for 1.5 keepalives; three pass without a drop
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(client.closed), 3.0)
        assert client.connected
        await client.publish("t/alive", b"1", qos=1, timeout=5)


async def test_a_silent_broker_is_given_up_after_one_and_a_half_keepalives(
        brokers: Brokers) -> None:
    broker = brokers()
    client = MqttClient(broker.host, broker.port, client_id="watchful",
                        options=Options(keepalive=1, timeout=5))
    await client.connect()
    lost = asyncio.Event()
    client.on_lost(lost.set)
    with frozen(broker):
        await asyncio.wait_for(lost.wait(), 5)  # no PINGRESP: the client closes the connection
    assert not client.connected
    with pytest.raises(LocalUnavailableError):
        client.closed.result()


async def test_the_will_is_published_on_abort_and_not_on_disconnect(brokers: Brokers) -> None:
    broker = brokers()
    will = Will("bridge/status", b"offline", qos=1, retain=False)
    async with connected(broker, "watcher") as watcher:
        await watcher.subscribe("bridge/status")
        async with connected(broker, "polite", Options(will=will, timeout=5)):
            pass  # DISCONNECT: the broker drops the will
        async with connected(broker, "marker") as marker:
            await marker.publish("bridge/status", b"marker", qos=1, timeout=5)
        assert await next_message(watcher) == ("bridge/status", b"marker", False)
        rude = MqttClient(broker.host, broker.port, client_id="rude",
                          options=Options(will=will, timeout=5))
        await rude.connect()
        rude.abort()
        assert await next_message(watcher) == ("bridge/status", b"offline", False)


@pytest.mark.parametrize(("config", "client_id", "protocol", "reason"), [
    (("allow_anonymous false",), "anonymous", 4, "not authorized"),
    (("allow_zero_length_clientid false",), "", 4, "identifier rejected"),
    (("allow_anonymous false",), "anonymous", 5, "not authorized"),  # MQTT 5 reason 0x87
    (("allow_zero_length_clientid false",), "", 5, "unspecified error"),  # Mosquitto's 0x80
])
async def test_a_refused_connack_says_why(brokers: Brokers, config: tuple[str, ...],
                                          client_id: str, protocol: int, reason: str) -> None:
    broker = brokers(extra_config=config)
    client = MqttClient(broker.host, broker.port, client_id=client_id,
                        options=Options(timeout=5, protocol=protocol))
    with pytest.raises(LocalUnavailableError, match=f"connection refused: {reason}"):
        await client.connect()
    with pytest.raises(LocalUnavailableError):  # and the connection is dropped
        await asyncio.wait_for(asyncio.shield(client.closed), 5)
    assert not client.connected


async def test_nothing_listening_is_an_unavailable_broker(brokers: Brokers) -> None:
    broker = brokers()
    broker.kill()
    client = MqttClient(broker.host, broker.port, client_id="early",
                        options=Options(timeout=5))
    with pytest.raises(LocalUnavailableError):
        await client.connect()
    assert not client.connected


# -- the broker's limits (MQTT 5): a refusal is not a loss -------------------------------------


async def test_the_brokers_receive_maximum_holds_publications_back_not_the_connection(
        brokers: Brokers) -> None:
    broker = brokers(extra_config=("max_inflight_messages 5",))  # CONNACK Receive Maximum 5
    batch = [(f"fleet/{i}/state", b"%d" % i, True) for i in range(300)]
    async with connected(broker, "publisher") as publisher, \
            connected(broker, "subscriber") as subscriber:
        await subscriber.subscribe("fleet/#", qos=1)
        counter = Counter(len(batch))
        assert publisher.publish_many(batch, 1, counter) == len(batch)
        assert publisher.waiting == len(batch) - 5  # five on the wire, the rest held back
        await asyncio.wait_for(counter.done.wait(), 10)
        assert publisher.waiting == 0
        assert counter.refusals == []
        got = [await next_message(subscriber) for _ in batch]
        assert got == [(topic, payload, False) for topic, payload, _ in batch]


async def test_a_publication_over_the_maximum_packet_size_is_refused_and_the_rest_go_on(
        brokers: Brokers) -> None:
    broker = brokers(extra_config=("max_packet_size 65536",))
    big = ("fleet/1/state", b'{"vehicle.vin": "' + b"V" * 100_000 + b'"}', True)
    batch = [("fleet/0/state", b"before", True), big, ("fleet/2/state", b"after", True)]
    async with connected(broker, "publisher") as publisher, \
            connected(broker, "subscriber") as subscriber:
        assert publisher.max_packet_size == 65536
        await subscriber.subscribe("fleet/#", qos=1)
        counter = Counter(2)
        assert publisher.publish_many(batch, 1, counter) == 2
        assert counter.refusals == [("fleet/1/state", 0x95)]  # at once: never written
        await asyncio.wait_for(counter.done.wait(), 10)
        assert [await next_message(subscriber) for _ in range(2)] == [
            ("fleet/0/state", b"before", False), ("fleet/2/state", b"after", False)]
        assert publisher.connected
        with pytest.raises(PublishRefusedError, match="packet too large"):
            await publisher.publish(big[0], big[1], qos=1, retain=True, timeout=5)
        await publisher.publish("fleet/3/state", b"still here", qos=1, timeout=5)


@pytest.mark.parametrize("protocol", [5, 4])
async def test_message_size_limit_is_a_refusal_over_mqtt5_and_unknowable_over_311(
        brokers: Brokers, protocol: int) -> None:
    """Mosquitto's `message_size_limit` acknowledges an oversized publication and drops it.
    MQTT 5's PUBACK says so (0x95); MQTT 3.1.1's PUBACK has no room to: the client cannot
    know, which is why the bridge limits strings itself (`local.max_string_length`)."""
    broker = brokers(extra_config=("message_size_limit 1000",))
    async with connected(broker, "publisher", Options(timeout=5, protocol=protocol)) as pub, \
            connected(broker, "subscriber") as subscriber:
        await subscriber.subscribe("fleet/#", qos=1)
        counter = Counter(2)
        pub.publish_many([("fleet/1/state", b"x" * 2000, True), ("fleet/2/state", b"ok", True)],
                         1, counter)
        await asyncio.wait_for(counter.done.wait(), 10)
        assert counter.refusals == ([("fleet/1/state", 0x95)] if protocol == 5 else [])
        assert await next_message(subscriber) == ("fleet/2/state", b"ok", False)
        assert pub.connected


async def test_a_session_taken_over_says_so() -> None:
    """MQTT 5's DISCONNECT 0x8E (newer Mosquitto, EMQX, HiveMQ; Debian's Mosquitto 2.0.11
    just closes the connection, which the bridge's backoff covers): a scripted peer on
    loopback sends what such a broker sends, encoded by the independent `mqtt5` codec."""
    mqtt5 = pytest.importorskip("mqtt5")
    taken_over = mqtt5.DisconnectPacket(
        reason_code=mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER,
        reason_str="another client connected with this id").write()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(mqtt5.ConnAckPacket().write())
        await writer.drain()
        writer.write(taken_over)
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = MqttClient("127.0.0.1", port, client_id="twin", options=QUICK)
        await client.connect()
        with pytest.raises(SessionTakenOverError,
                           match=r"session taken over \(another client connected with this id\)"):
            await asyncio.wait_for(asyncio.shield(client.closed), 10)
        client.abort()


async def test_a_broker_that_does_not_speak_mqtt5_is_told_from_a_lost_one(
        brokers: Brokers) -> None:
    amqtt = brokers(foreign=True)
    host, port = amqtt.host, amqtt.port
    client = MqttClient(host, port, client_id="modern", options=Options(timeout=3))
    with pytest.raises(ProtocolRefusedError, match="MQTT 5"):
        await client.connect()
    client = MqttClient(host, port, client_id="classic", options=Options(timeout=5, protocol=4))
    await client.connect()
    await client.subscribe("fleet/#")
    await client.publish("fleet/1/state", b"on", qos=1, timeout=5)
    assert await next_message(client) == ("fleet/1/state", b"on", False)
    await client.disconnect()


# -- what the broker sends: acknowledged when taken, never dropped ------------------------------


async def test_a_flood_past_the_queue_limit_is_held_back_not_dropped(brokers: Brokers) -> None:
    """Issue 21: past 10,000 queued, messages were acknowledged and dropped."""
    broker = brokers(extra_config=("max_queued_messages 0", "max_inflight_messages 0"))
    flood = 3 * MAX_QUEUED_MESSAGES
    async with connected(broker, "slow-reader", Options(timeout=5, protocol=4)) as reader, \
            connected(broker, "flooder") as flooder:
        await reader.subscribe("cmd/#", qos=1)
        counter = Counter(flood)
        flooder.publish_many([(f"cmd/{i}", b"%d" % i, False) for i in range(flood)], 1, counter)
        await asyncio.wait_for(counter.done.wait(), 30)  # all with the broker, none read yet
        got = [await next_message(reader) for _ in range(flood)]
        assert [payload for _, payload, _ in got] == [b"%d" % i for i in range(flood)]
        assert reader.connected


async def test_a_qos2_message_is_answered_as_qos2(brokers: Brokers) -> None:
    """One QoS 2 message in flight at a time: the next comes only once the previous one's
    PUBREC/PUBREL/PUBCOMP exchange is complete (a PUBACK would leave it open forever)."""
    broker = brokers(extra_config=("max_inflight_messages 1",))
    for protocol in (5, 4):
        async with connected(broker, f"reader{protocol}",
                             Options(timeout=5, protocol=protocol)) as reader:
            await reader.subscribe("qos2/#", qos=2)
            async with aiomqtt.Client(broker.host, broker.port) as sender:
                for i in range(3):
                    await sender.publish(f"qos2/{i}", b"%d" % i, qos=2)
            assert [await next_message(reader) for _ in range(3)] == [
                (f"qos2/{i}", b"%d" % i, False) for i in range(3)]


async def test_a_broker_that_is_down_leaves_no_unretrieved_failure(brokers: Brokers) -> None:
    """Reconnect attempts to a broker that is down (refused, or lost right away) log one
    line each, from the bridge: asyncio's "Future exception was never retrieved" for the
    client's own futures must never appear (it did at every attempt)."""
    import gc

    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context["message"]))
    try:
        broker = brokers()
        broker.stop()  # nothing listens on its port now
        for attempt in range(3):
            client = MqttClient(broker.host, broker.port, client_id=f"down-{attempt}")
            with pytest.raises(LocalUnavailableError):
                await client.connect()
            del client
            gc.collect()
        assert unretrieved == []
    finally:
        loop.set_exception_handler(previous)
