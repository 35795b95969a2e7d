"""Test-side access to each broker, with the same client library the connector uses.

A kit names fresh streams, builds the connector URL for them, publishes input the way an
outside producer would, and reads what a sink wrote the way an outside consumer would.
Readers survive a broker that goes away and comes back (they retry on the next poll).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Any

from baton.streams.base import open_source

Item = tuple[str | None, bytes]


def suffix() -> str:
    return uuid.uuid4().hex[:10]


class Reader:
    """Everything written to one stream so far, collected incrementally by ``poll``."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    async def start(self) -> None:
        return None

    async def poll(self) -> list[Item]:
        try:
            new = await self._poll()
        except Exception:  # the broker is away: try again on the next poll
            new = []
        self.items.extend(new)
        return self.items

    async def _poll(self) -> list[Item]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class Kit:
    """One broker at ``port``; subclasses implement publish and reader."""

    scheme = ""
    name = ""
    default_port = 0

    def __init__(self, port: int | None = None) -> None:
        self.port = port or self.default_port

    def fresh(self) -> str:
        return f"baton-test-{suffix()}"

    def url(self, stream: str, port: int | None = None) -> str:
        return f"{self.scheme}://127.0.0.1:{port or self.port}/{stream}"

    async def prepare(self, url: str, group: str) -> None:
        """Make the stream exist for ``group`` before anything is published to it."""

    async def publish(self, stream: str, items: list[Item]) -> None:
        raise NotImplementedError

    def reader(self, stream: str) -> Reader:
        raise NotImplementedError

    async def cleanup(self) -> None:
        return None


# -- file ----------------------------------------------------------------------------------

class FileKit(Kit):
    """Keys travel inside the JSON value (``?key=key``): a file line has nowhere else."""

    scheme = name = "file"

    def __init__(self, root: Path) -> None:
        super().__init__(0)
        self.root = root

    def fresh(self) -> str:
        """An empty file: a file source refuses one that does not exist (a typo, not data)."""
        stream = super().fresh()
        (self.root / f"{stream}.jsonl").touch()
        return stream

    def url(self, stream: str, port: int | None = None) -> str:
        return f"file://{self.root / stream}.jsonl?key=key"

    def down_url(self) -> tuple[str, str, str]:
        """(source URL, sink URL, what the error must name) for an unreachable stream."""
        missing = self.root / "missing" / "nothing.jsonl"
        blocked = self.root / "a-file"
        blocked.write_text("")
        return f"file://{missing}", f"file://{blocked}/out.jsonl", str(self.root)

    async def publish(self, stream: str, items: list[Item]) -> None:
        with (self.root / f"{stream}.jsonl").open("ab") as f:
            for _key, value in items:
                f.write(value + b"\n")

    def reader(self, stream: str) -> Reader:
        return _FileReader(self.root / f"{stream}.jsonl")


class _FileReader(Reader):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.pos = path, 0

    async def _poll(self) -> list[Item]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.pos)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.pos += len(complete)
        return [(json.loads(line).get("key"), line) for line in complete.splitlines() if line]


# -- Redis ---------------------------------------------------------------------------------

class RedisKit(Kit):
    scheme = name = "redis"
    default_port = 6379

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.streams: list[str] = []

    def fresh(self) -> str:
        stream = super().fresh()
        self.streams.append(stream)
        return stream

    def client(self) -> Any:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2,
                           retry=Retry(NoBackoff(), 0))

    async def publish(self, stream: str, items: list[Item]) -> None:
        client = self.client()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.xadd(stream, {"key": key or "", "value": value})
                await pipe.execute()
        finally:
            await client.aclose()

    def reader(self, stream: str) -> Reader:
        return _RedisReader(self, stream)

    async def pending(self, stream: str, group: str) -> int:
        client = self.client()
        try:
            return int((await client.xpending(stream, group))["pending"])
        finally:
            await client.aclose()

    async def cleanup(self) -> None:
        if self.streams:
            client = self.client()
            try:
                await client.delete(*self.streams)
            finally:
                await client.aclose()


class _RedisReader(Reader):
    def __init__(self, kit: RedisKit, stream: str) -> None:
        super().__init__()
        self.kit, self.stream, self.last = kit, stream, "-"

    async def _poll(self) -> list[Item]:
        client = self.kit.client()
        try:
            entries = await client.xrange(self.stream, self.last, "+", count=5000)
        finally:
            await client.aclose()
        if entries:
            self.last = "(" + entries[-1][0].decode()
        return [(f[b"key"].decode() or None, f[b"value"]) for _, f in entries]


# -- NATS JetStream ------------------------------------------------------------------------

class NatsKit(Kit):
    """One JetStream stream per test stream; ``ack_wait=2`` so a crash redelivers soon."""

    scheme = name = "nats"
    default_port = 4222

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.streams: list[str] = []

    def fresh(self) -> str:
        stream = f"baton.test.{suffix()}"
        self.streams.append(stream)
        return stream

    def stream_name(self, subject: str) -> str:
        return "BT_" + subject.rsplit(".", 1)[-1]

    def url(self, stream: str, port: int | None = None) -> str:
        return (f"nats://127.0.0.1:{port or self.port}/{stream}"
                f"?stream={self.stream_name(stream)}&ack_wait=2")

    async def connect(self, patient: bool = True) -> Any:
        """``patient``: reconnect forever (a reader across a restart); else give up soon."""
        import nats

        return await nats.connect(f"nats://127.0.0.1:{self.port}", connect_timeout=2,
                                  max_reconnect_attempts=-1 if patient else 1,
                                  reconnect_time_wait=0.3)

    async def publish(self, stream: str, items: list[Item]) -> None:
        from nats.js.errors import NotFoundError

        nc = await self.connect()
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(self.stream_name(stream))
            except NotFoundError:
                await js.add_stream(name=self.stream_name(stream), subjects=[stream])
            await asyncio.gather(*(js.publish(stream, value, headers={"key": key} if key
                                              else None) for key, value in items))
        finally:
            await nc.close()

    def reader(self, stream: str) -> Reader:
        return _NatsReader(self, stream)

    async def cleanup(self) -> None:
        from nats.js.errors import NotFoundError

        nc = await self.connect(patient=False)
        try:
            js = nc.jetstream()
            for stream in self.streams:
                try:
                    await js.delete_stream(self.stream_name(stream))
                except NotFoundError:
                    pass
        finally:
            await nc.close()


class _NatsReader(Reader):
    def __init__(self, kit: NatsKit, subject: str) -> None:
        super().__init__()
        self.kit, self.subject, self.nc, self.sub = kit, subject, None, None

    async def start(self) -> None:
        from nats.js.errors import NotFoundError

        self.nc = await self.kit.connect()
        js = self.nc.jetstream()
        name = self.kit.stream_name(self.subject)
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(name=name, subjects=[self.subject])
        self.sub = await js.pull_subscribe(self.subject, durable=f"reader-{suffix()}",
                                           stream=name)

    async def _poll(self) -> list[Item]:
        import nats.errors

        try:
            msgs = await self.sub.fetch(1000, timeout=0.2)
        except nats.errors.TimeoutError:
            return []
        for m in msgs:
            await m.ack()
        return [((m.headers or {}).get("key"), m.data) for m in msgs]

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


# -- RabbitMQ ------------------------------------------------------------------------------

class AmqpKit(Kit):
    scheme = name = "amqp"
    default_port = 5672

    def __init__(self, port: int | None = None, cleanup_port: int | None = None) -> None:
        super().__init__(port)
        self.queues: list[str] = []
        self.cleanup_port = cleanup_port or self.port

    def fresh(self) -> str:
        queue = super().fresh()
        self.queues.append(queue)
        return queue

    def url(self, stream: str, port: int | None = None) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port or self.port}/{stream}"

    async def connect(self, port: int | None = None) -> Any:
        import aio_pika

        return await aio_pika.connect(host="127.0.0.1", port=port or self.port,
                                      login="guest", password="guest", timeout=5)

    async def publish(self, stream: str, items: list[Item]) -> None:
        import aio_pika

        conn = await self.connect()
        try:
            channel = await conn.channel(publisher_confirms=True)
            await channel.declare_queue(stream, durable=True)
            await asyncio.gather(*(channel.default_exchange.publish(aio_pika.Message(
                value, headers={"key": key} if key else {},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=stream)
                for key, value in items))
        finally:
            await conn.close()

    def reader(self, stream: str) -> Reader:
        return _AmqpReader(self, stream)

    async def cleanup(self) -> None:
        conn = await self.connect(self.cleanup_port)
        try:
            channel = await conn.channel()
            for queue in self.queues:
                await channel.queue_delete(queue)
        finally:
            await conn.close()


class _AmqpReader(Reader):
    def __init__(self, kit: AmqpKit, queue: str) -> None:
        super().__init__()
        self.kit, self.queue = kit, queue

    async def _poll(self) -> list[Item]:
        conn = await self.kit.connect()
        out: list[Item] = []
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(self.queue, durable=True)
            while (m := await queue.get(no_ack=True, fail=False)) is not None:
                key = (m.headers or {}).get("key")
                out.append((key.decode() if isinstance(key, bytes) else key, m.body))
        finally:
            await conn.close()
        return out


# -- MQTT ----------------------------------------------------------------------------------

class MqttKit(Kit):
    """Sessions expire 5 minutes after a test; readers are persistent subscribers."""

    scheme = name = "mqtt"
    default_port = 1883

    def fresh(self) -> str:
        return f"baton-test/{suffix()}"

    def url(self, stream: str, port: int | None = None) -> str:
        return f"mqtt://127.0.0.1:{port or self.port}/{stream}?session_expiry=300"

    async def prepare(self, url: str, group: str) -> None:
        """An MQTT session gets only what is published after it subscribed: subscribe."""
        source = open_source(url, group=group)
        await source.open()
        await source.close()

    def client(self, client_id: str = "") -> Any:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.reconnect_delay_set(0.2, 1)
        return client

    async def publish(self, stream: str, items: list[Item]) -> None:
        await asyncio.to_thread(self._publish, stream, items)

    def _publish(self, stream: str, items: list[Item]) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = self.client()
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            infos = []
            for key, value in items:
                props = Properties(PacketTypes.PUBLISH)
                if key is not None:
                    props.UserProperty = ("key", key)
                infos.append(client.publish(stream, value, qos=1, properties=props))
            for info in infos:
                info.wait_for_publish(30)
        finally:
            client.disconnect()
            client.loop_stop()

    def reader(self, stream: str) -> Reader:
        return _MqttReader(self, stream)


class _MqttReader(Reader):
    def __init__(self, kit: MqttKit, topic: str) -> None:
        super().__init__()
        self.kit, self.topic = kit, topic
        self.lock = threading.Lock()
        self.inbox: list[Item] = []
        self.client: Any = None

    async def start(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        subscribed = threading.Event()
        self.client = client = self.kit.client(f"reader-{suffix()}")
        client.on_message = self._on_message
        client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        await asyncio.to_thread(client.connect, "127.0.0.1", self.kit.port,
                                clean_start=False, properties=props)
        client.loop_start()
        assert await asyncio.to_thread(subscribed.wait, 10), "MQTT reader not subscribed"

    def _on_message(self, _c: Any, _ud: Any, m: Any) -> None:
        props = dict(getattr(m.properties, "UserProperty", None) or [])
        with self.lock:
            self.inbox.append((props.get("key"), bytes(m.payload)))

    async def _poll(self) -> list[Item]:
        with self.lock:
            new, self.inbox = self.inbox, []
        return new

    async def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)


# -- Kafka ---------------------------------------------------------------------------------

class KafkaKit(Kit):
    scheme = name = "kafka"

    def __init__(self, port: int) -> None:
        super().__init__(port)

    def config(self) -> dict[str, Any]:
        return {"bootstrap.servers": f"127.0.0.1:{self.port}", "log_level": 2}

    async def publish(self, stream: str, items: list[Item]) -> None:
        await asyncio.to_thread(self._publish, stream, items)

    def _publish(self, stream: str, items: list[Item]) -> None:
        from confluent_kafka import Producer

        producer = Producer({**self.config(), "acks": "all"})
        for key, value in items:
            producer.produce(stream, value, key.encode() if key is not None else None)
        assert producer.flush(30) == 0, "kafka test producer could not deliver"

    def reader(self, stream: str) -> Reader:
        return _KafkaReader(self, stream)


class _KafkaReader(Reader):
    def __init__(self, kit: KafkaKit, topic: str) -> None:
        super().__init__()
        self.kit, self.topic, self.consumer = kit, topic, None

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.kit.config())
        for future in admin.create_topics([NewTopic(self.topic, 1)]).values():
            future.result(10)
        self.consumer = Consumer({**self.kit.config(), "group.id": f"reader-{suffix()}",
                                  "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest"})
        self.consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])

    async def _poll(self) -> list[Item]:
        msgs = await asyncio.to_thread(self.consumer.consume, 5000, 0.02)
        return [(m.key().decode() if m.key() is not None else None, m.value())
                for m in msgs if m.error() is None]

    async def close(self) -> None:
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.close)
