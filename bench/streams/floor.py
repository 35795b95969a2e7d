"""The floor: a minimal hand-written consume -> predict -> produce -> acknowledge loop.

    .venv/bin/python bench/streams/floor.py --model MODEL.joblib --input URL --output URL

One broker per process, with the same client library that Baton's connector for that URL
scheme uses (redis-py, nats-py, aio-pika, paho-mqtt, confluent-kafka), the same
micro-batching (take what the client has, up to ``--max-batch`` records, one
``predict_proba`` on a DataFrame built from the JSON records), and at-least-once delivery:
a batch is acknowledged (XACK, JetStream ack, AMQP ack, MQTT PUBACK, Kafka commit) only
after every output of that batch was published and confirmed by the broker. No contract
checks, no dead letters, no worker process, no HTTP server: the model runs in this process.
It runs until it is stopped (SIGTERM or SIGINT).

The URLs are the ones given to ``baton serve`` (see bench/streams/run.py): the path names
the stream, subject, queue or topic; ``?group=`` the consumer group / durable name,
``?client_id=`` the MQTT client id, ``?stream=`` the JetStream stream.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import joblib
import numpy as np
import orjson
import pandas as pd

COLUMNS = [f"f{i}" for i in range(20)]


class Stages:
    """Wall-clock seconds per step of the loop (about a microsecond per step); written to
    ``$BENCH_STAGE_TIMES`` at exit when that is set (profile.py --stages)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.first = self.last = 0.0

    def read(self, t0: float, n: int) -> None:
        """A read that started at ``t0`` returned ``n`` records (0: idle, not counted in the
        batches' time)."""
        now = time.perf_counter()
        name = "read input (connector)" if n else "read input, empty (idle)"
        self.seconds[name] += now - t0
        self.calls[name] += 1
        if n:
            self.first = self.first or t0
            self.seconds["records"] += n

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[name] += now - t0
        self.calls[name] += 1
        self.last = now
        return now

    def dump(self) -> None:
        path = os.environ.get("BENCH_STAGE_TIMES")
        if path:
            with open(path, "w") as f:
                json.dump({"seconds": dict(self.seconds), "calls": dict(self.calls),
                           "first_batch_to_last_s": self.last - self.first}, f, indent=2)


SCORE, WRITE, ACK = ("score (decode + predict_proba + encode)", "write output (connector)",
                     "acknowledge input (connector)")
T = Stages()


class Scorer:
    """JSON records in, JSON outputs out: one ``predict_proba`` per micro-batch."""

    def __init__(self, path: str) -> None:
        self.model = joblib.load(path)
        self.classes = self.model.classes_

    def __call__(self, keys: Sequence[str | None], values: Sequence[bytes]) -> list[bytes]:
        records = orjson.loads(b"[" + b",".join(values) + b"]")
        x = np.array([[r[c] for c in COLUMNS] for r in records], dtype=np.float64)
        proba = self.model.predict_proba(pd.DataFrame(x, columns=COLUMNS))
        pred = self.classes[proba.argmax(axis=1)].tolist()
        return [orjson.dumps({"key": k, "output": {"prediction": p, "proba_0": a,
                                                   "proba_1": b}})
                for k, p, a, b in zip(keys, pred, proba[:, 0].tolist(), proba[:, 1].tolist(),
                                      strict=True)]


class Url:
    def __init__(self, raw: str) -> None:
        parts = urlsplit(raw)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.user = parts.username
        self.password = parts.password
        self.name = parts.path.lstrip("/")
        self.options = {k: v[-1] for k, v in parse_qs(parts.query).items()}


# -- Redis Streams (redis-py) -----------------------------------------------------------

def run_redis(src: Url, dst: Url, score: Scorer, max_batch: int) -> None:
    import redis
    from redis.exceptions import ResponseError

    r = redis.Redis(host=src.host, port=src.port or 6379)
    out = redis.Redis(host=dst.host, port=dst.port or 6379)
    group = src.options.get("group", "floor")
    try:
        r.xgroup_create(src.name, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    while True:
        t0 = time.perf_counter()
        got = r.xreadgroup(group, "floor-1", {src.name: ">"}, count=max_batch, block=200)
        entries = got[0][1] if got else []
        T.read(t0, len(entries))
        if not entries:
            continue
        t0 = time.perf_counter()
        keys = [f[b"key"].decode() for _, f in entries]
        outputs = score(keys, [f[b"value"] for _, f in entries])
        t0 = T.add(SCORE, t0)
        pipe = out.pipeline(transaction=False)
        for k, v in zip(keys, outputs, strict=True):
            pipe.xadd(dst.name, {"key": k, "value": v})
        pipe.execute()  # every XADD answered: the outputs are in the stream
        t0 = T.add(WRITE, t0)
        r.xack(src.name, group, *[i for i, _ in entries])
        T.add(ACK, t0)


async def run_redis_asyncio(src: Url, dst: Url, score: Scorer, max_batch: int) -> None:
    """The same loop with redis-py's asyncio client, which Baton's connector uses."""
    import redis.asyncio as redis
    from redis.exceptions import ResponseError

    r = redis.Redis(host=src.host, port=src.port or 6379)
    out = redis.Redis(host=dst.host, port=dst.port or 6379)
    group = src.options.get("group", "floor")
    try:
        await r.xgroup_create(src.name, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    while True:
        t0 = time.perf_counter()
        got = await r.xreadgroup(group, "floor-1", {src.name: ">"}, count=max_batch,
                                 block=200)
        entries = got[0][1] if got else []
        T.read(t0, len(entries))
        if not entries:
            continue
        t0 = time.perf_counter()
        keys = [f[b"key"].decode() for _, f in entries]
        outputs = score(keys, [f[b"value"] for _, f in entries])
        t0 = T.add(SCORE, t0)
        async with out.pipeline(transaction=False) as pipe:
            for k, v in zip(keys, outputs, strict=True):
                pipe.xadd(dst.name, {"key": k, "value": v})
            await pipe.execute()
        t0 = T.add(WRITE, t0)
        await r.xack(src.name, group, *[i for i, _ in entries])
        T.add(ACK, t0)


# -- NATS JetStream (nats-py) -----------------------------------------------------------

async def run_nats(src: Url, dst: Url, score: Scorer, max_batch: int) -> None:
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(servers=[f"nats://{src.host}:{src.port or 4222}"])
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        src.name, durable=src.options.get("group", "floor"), stream=src.options.get("stream"),
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL))
    while True:
        t0 = time.perf_counter()
        try:
            msgs = await sub.fetch(max_batch, timeout=0.2)
        except nats.errors.TimeoutError:
            msgs = []
        T.read(t0, len(msgs))
        if not msgs:
            continue
        t0 = time.perf_counter()
        keys = [(m.headers or {}).get("key") for m in msgs]
        outputs = score(keys, [m.data for m in msgs])
        t0 = T.add(SCORE, t0)
        # js.publish waits for the stream's PubAck: the outputs are stored.
        await asyncio.gather(*(js.publish(dst.name, v, headers={"key": k} if k else None)
                               for k, v in zip(keys, outputs, strict=True)))
        t0 = T.add(WRITE, t0)
        for m in msgs:
            await m.ack()
        T.add(ACK, t0)


# -- RabbitMQ (aio-pika) ----------------------------------------------------------------

async def run_amqp(src: Url, dst: Url, score: Scorer, max_batch: int) -> None:
    import aio_pika

    conn = await aio_pika.connect(host=src.host, port=src.port or 5672,
                                  login=src.user or "guest", password=src.password or "guest")
    inbound = await conn.channel()
    await inbound.set_qos(prefetch_count=max_batch)
    queue = await inbound.declare_queue(src.name, durable=True)
    outbound = await conn.channel(publisher_confirms=True)
    await outbound.declare_queue(dst.name, durable=True)
    exchange = outbound.default_exchange
    inbox: collections.deque[Any] = collections.deque()
    ready = asyncio.Event()

    async def deliver(message: Any) -> None:
        inbox.append(message)
        ready.set()

    await queue.consume(deliver, no_ack=False)
    while True:
        t0 = time.perf_counter()
        if not inbox:
            ready.clear()
            try:
                await asyncio.wait_for(ready.wait(), 0.2)
            except TimeoutError:
                T.read(t0, 0)
                continue
        msgs = [inbox.popleft() for _ in range(min(max_batch, len(inbox)))]
        T.read(t0, len(msgs))
        t0 = time.perf_counter()
        keys = [(m.headers or {}).get("key") for m in msgs]
        keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
        outputs = score(keys, [m.body for m in msgs])
        t0 = T.add(SCORE, t0)
        # With publisher confirms, each publish returns once the broker confirmed it.
        await asyncio.gather(*(exchange.publish(
            aio_pika.Message(v, headers={"key": k} if k else None,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=dst.name) for k, v in zip(keys, outputs, strict=True)))
        t0 = T.add(WRITE, t0)
        await msgs[-1].ack(multiple=True)  # this delivery and every earlier one
        T.add(ACK, t0)


# -- MQTT 5 (paho-mqtt) -----------------------------------------------------------------

def run_mqtt(src: Url, dst: Url, score: Scorer, max_batch: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    inbox: collections.deque[Any] = collections.deque()
    cond = threading.Condition()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with cond:
            inbox.append(msg)
            cond.notify()

    def on_connect(c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            print(f"floor: MQTT connect refused: {rc}", file=sys.stderr, flush=True)
            return
        c.subscribe(src.name, options=SubscribeOptions(qos=1))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=src.options.get("client_id", "floor"),
                         protocol=mqtt.MQTTv5, manual_ack=True)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(src.host, src.port or 1883, 30, clean_start=False, properties=props)
    client.loop_start()
    subscribed.wait(10)
    # Outputs go out on a connection of their own (as Baton's sink does): the input
    # connection's network thread is busy receiving the backlog.
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                      client_id=src.options.get("client_id", "floor") + "-out")
    pub.connect(dst.host, dst.port or 1883, 30)
    pub.loop_start()
    while True:
        t0 = time.perf_counter()
        with cond:
            if not inbox:
                cond.wait(0.2)
            msgs = [inbox.popleft() for _ in range(min(max_batch, len(inbox)))]
        T.read(t0, len(msgs))
        if not msgs:
            continue
        t0 = time.perf_counter()
        keys = [dict(getattr(m.properties, "UserProperty", None) or []).get("key")
                for m in msgs]
        outputs = score(keys, [m.payload for m in msgs])
        t0 = T.add(SCORE, t0)
        infos = []
        for k, v in zip(keys, outputs, strict=True):
            props = Properties(PacketTypes.PUBLISH)
            if k is not None:
                props.UserProperty = [("key", k)]
            infos.append(pub.publish(dst.name, v, qos=1, properties=props))
        for info in infos:  # PUBACK from the broker for every output
            info.wait_for_publish(30)
            if not info.is_published():
                raise RuntimeError("an output was not acknowledged by the broker")
        t0 = T.add(WRITE, t0)
        for m in msgs:
            client.ack(m.mid, m.qos)
        T.add(ACK, t0)


# -- Kafka (confluent-kafka) ------------------------------------------------------------

def run_kafka(src: Url, dst: Url, score: Scorer, max_batch: int) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    servers = f"{src.host}:{src.port or 9092}"
    consumer = Consumer({"bootstrap.servers": servers,
                         "group.id": src.options.get("group", "floor"),
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    meta = consumer.list_topics(src.name, timeout=10).topics[src.name]
    consumer.assign([TopicPartition(src.name, p) for p in sorted(meta.partitions)])
    producer = Producer({"bootstrap.servers": f"{dst.host}:{dst.port or 9092}", "acks": "all",
                         "linger.ms": 2})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    while True:
        t0 = time.perf_counter()
        first = consumer.poll(0.2)
        msgs = [] if first is None else [
            m for m in [first, *consumer.consume(max_batch - 1, 0)] if m.error() is None]
        T.read(t0, len(msgs))
        if not msgs:
            continue
        t0 = time.perf_counter()
        keys = [m.key().decode() if m.key() is not None else None for m in msgs]
        outputs = score(keys, [m.value() for m in msgs])
        t0 = T.add(SCORE, t0)
        for k, v in zip(keys, outputs, strict=True):
            producer.produce(dst.name, v, k.encode() if k is not None else None,
                             on_delivery=delivered)
        if producer.flush(30) or failures:  # every output acknowledged (acks=all)
            raise RuntimeError(f"outputs not delivered: {failures[:1]}")
        t0 = T.add(WRITE, t0)
        upto: dict[int, int] = {}
        for m in msgs:
            upto[m.partition()] = max(upto.get(m.partition(), -1), m.offset() + 1)
        consumer.commit(offsets=[TopicPartition(src.name, p, o) for p, o in upto.items()],
                        asynchronous=False)
        T.add(ACK, t0)


RUNNERS = {"redis": run_redis, "nats": run_nats, "amqp": run_amqp, "mqtt": run_mqtt,
           "kafka": run_kafka}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a joblib file holding the fitted model")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--asyncio", action="store_true",
                    help="redis only: use redis-py's asyncio client instead of the sync one")
    args = ap.parse_args(argv)
    src, dst = Url(args.input), Url(args.output)
    if src.scheme != dst.scheme or src.scheme not in RUNNERS:
        ap.error(f"input and output must share one of {', '.join(RUNNERS)}")
    score = Scorer(args.model)
    score(["warm-up"], [orjson.dumps(dict.fromkeys(COLUMNS, 0.0))])  # first call is slower
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    atexit.register(T.dump)
    print(f"floor: consuming {args.input}", flush=True)
    runner = run_redis_asyncio if args.asyncio and src.scheme == "redis" else RUNNERS[src.scheme]
    try:
        if asyncio.iscoroutinefunction(runner):
            import uvloop

            uvloop.run(runner(src, dst, score, args.max_batch))
        else:
            runner(src, dst, score, args.max_batch)
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
