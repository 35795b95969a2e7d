"""What the first batches wait for: a timeline of one run, floor and Baton (diagnostics).

    .venv/bin/python bench/streams/first_batches.py [--only kafka] [--records 20000]

Pre-loads the input like run.py, starts the floor and then ``baton serve`` (the same
command lines as run.py, each wrapped in memory by this file's ``child`` mode: nothing in
src/ or floor.py changes) and watches the output as run.py does (every 5 ms). Each consumer
notes, with wall-clock timestamps: when its process started, when its input was open and
(Kafka) when its partitions were assigned, every read that returned records (how many, how
long the read waited), every batch scored, written and acknowledged. It prints, per
system: launch -> input open -> assigned -> first record read -> first output written ->
first output seen, the first batches one by one (``--batches``), the median (mean) ms of
each step over the run (Kafka: also the producer's produce() calls and flush, and each
client call split into waiting for the connector's thread, running there, and getting back
onto the event loop), run.py's records/s and records/s in windows of 100 ms from the
first output seen. Raw events: build/bench-streams/first-batches-BROKER-SYSTEM.json.

A/B in one run: ``--against DIR`` adds a system ``baton-against`` run from another copy of
src/ (its PYTHONPATH), alternating with the others round by round; ``--against -
--against-env BENCH_IN_FLIGHT=6`` runs it from this tree with another in-flight window;
``--env NAME=VALUE`` sets Baton's environment (``BATON_WORKERS=1``). The last lines give
run.py's figure per round and per system, and each round's ratio to the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVENTS: list[tuple[float, str, Any]] = []
STARTED = time.time()


def note(what: str, value: Any = None) -> None:
    EVENTS.append((time.time(), what, value))


def dump() -> None:
    path = os.environ.get("BENCH_FIRST_BATCHES")
    if path:
        with open(path, "w") as f:
            json.dump({"started": STARTED, "events": EVENTS}, f)


# -- inside the consumer (child mode) ---------------------------------------------------

def wrap_baton() -> None:
    from baton.streams import pipeline

    P = pipeline.StreamPipeline
    connect, read, score, deliver = P._connect, P._read, P._score, P._deliver

    async def _connect(self: Any) -> Any:
        note("pipeline run")
        ends = await connect(self)
        note("input open")
        return ends

    async def _read(self: Any, source: Any) -> Any:
        t0 = time.time()
        got = await read(self, source)
        note("read", [len(got), round(time.time() - t0, 4)])
        return got

    async def _score(self: Any, messages: Any) -> Any:
        t0 = time.time()
        out = await score(self, messages)
        note("scored", [len(messages), round(time.time() - t0, 4)])
        return out

    async def _deliver(self: Any, ends: Any, messages: Any, *args: Any) -> Any:
        t0 = time.time()
        out = await deliver(self, ends, messages, *args)
        note("written+acked", [len(messages), round(time.time() - t0, 4)])
        return out

    predict, decode = P._predict, pipeline.decode_messages

    async def _predict(self: Any, svc: Any, batch: Any) -> Any:
        t0 = time.time()
        out = await predict(self, svc, batch)
        note("predict (worker)", [batch.rows, round(time.time() - t0, 4)])
        return out

    def _decode(messages: Any, *args: Any) -> Any:
        t0 = time.time()
        out = decode(messages, *args)
        note("decode + checks", [len(messages), round(time.time() - t0, 4)])
        return out

    P._connect, P._read, P._score, P._deliver = _connect, _read, _score, _deliver
    P._predict, pipeline.decode_messages = _predict, _decode
    if os.environ.get("BENCH_IN_FLIGHT"):  # diagnostics: another in-flight window
        import dataclasses

        init = P.__init__

        def __init__(self: Any, binding: Any, *args: Any) -> None:
            init(self, dataclasses.replace(
                binding, in_flight=int(os.environ["BENCH_IN_FLIGHT"])), *args)

        P.__init__ = __init__
    try:
        from baton.streams.connectors import kafka
    except ImportError:
        return
    on_assign = kafka.KafkaSource._on_assign

    @functools.wraps(on_assign)
    def _on_assign(self: Any, consumer: Any, partitions: Any) -> None:
        note("assigned", [tp.partition for tp in partitions])
        on_assign(self, consumer, partitions)

    kafka.KafkaSource._on_assign = _on_assign
    produce = kafka.KafkaSink._produce

    def _produce(self: Any, records: Any) -> Any:
        t0 = time.time()
        out = produce(self, records)
        note("produced", [len(records), round(time.time() - t0, 4)])
        return out

    kafka.KafkaSink._produce = _produce
    sink_open = kafka.KafkaSink.open

    async def _sink_open(self: Any) -> None:
        await sink_open(self)
        self.producer = _TimedProducer(self.producer)

    kafka.KafkaSink.open = _sink_open
    from baton.streams.connectors import _kafka_client

    call = _kafka_client.KafkaClient.call

    async def _call(self: Any, fn: Any, *args: Any, lane: str = "main") -> Any:
        marks: list[float] = []

        def timed(*a: Any) -> Any:
            marks.append(time.time())
            try:
                return fn(*a)
            finally:
                marks.append(time.time())

        submitted = time.time()
        out = await call(self, timed, *args, lane=lane)
        name = getattr(fn, "__name__", "call")
        if len(marks) == 2 and name in ("_produce", "_poll", "_lag"):
            note(f"thread {name}", [None, [round(marks[0] - submitted, 4),
                                           round(marks[1] - marks[0], 4),
                                           round(time.time() - marks[1], 4)]])
        return out

    _kafka_client.KafkaClient.call = _call


class _TimedProducer:
    """The sink's producer, with the time of its produce() calls (per batch) and flushes."""

    def __init__(self, producer: Any) -> None:
        self._producer, self._first = producer, 0.0

    def produce(self, *args: Any, **kwargs: Any) -> Any:
        if not self._first:
            self._first = time.time()
        return self._producer.produce(*args, **kwargs)

    def flush(self, *args: Any) -> Any:
        t0 = time.time()
        if self._first:
            note("produce() x N", [None, round(t0 - self._first, 4)])
            self._first = 0.0
        left = self._producer.flush(*args)
        note("flush", [None, round(time.time() - t0, 4)])
        return left

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def wrap_floor() -> Any:
    sys.path.insert(0, str(HERE))
    import floor

    class Timeline(floor.Stages):
        def read(self, t0: float, n: int) -> None:
            if n:
                note("read", [n, round(time.perf_counter() - t0, 4)])
            super().read(t0, n)

        def add(self, name: str, t0: float) -> float:
            label = {floor.SCORE: "scored", floor.WRITE: "produced",
                     floor.ACK: "written+acked"}.get(name, name)
            note(label, round(time.perf_counter() - t0, 4))
            return super().add(name, t0)

    floor.T = Timeline()
    return floor


def child(argv: list[str]) -> int:
    atexit.register(dump)
    note("process start")
    if argv[0] == "floor":
        return int(wrap_floor().main(argv[1:]))
    wrap_baton()
    from baton.cli.main import main

    sys.argv = ["baton", *argv[1:]]
    return int(main() or 0)


# -- the run ----------------------------------------------------------------------------

async def one(broker: Any, paths: dict[str, Path], records: list[tuple[str, bytes]],
              system: str, env: dict[str, str]) -> dict[str, Any]:
    import run

    names = broker.names(uuid.uuid4().hex[:10])
    consumer = run.make_consumer(system, broker.urls(names, system), paths)
    out_path = run.WORK / f"first-batches-{broker.name}-{system}.json"
    out_path.unlink(missing_ok=True)
    consumer.env = {**consumer.env, "BENCH_FIRST_BATCHES": str(out_path), **env}
    mode = "floor" if system == "floor" else "baton"
    consumer.cmd = [sys.executable, str(HERE / "first_batches.py"), "child", mode,
                    *consumer.cmd[2 if mode == "floor" else 1:]]
    seen: list[tuple[float, int]] = []
    run.forget_predictions()
    try:
        await broker.prepare(names, system, records)
        launched = time.time()
        consumer.start()
        while True:
            out, dead = await broker.counts(names)
            if not seen or out + dead != seen[-1][1]:
                seen.append((time.time(), out + dead))
            if out + dead >= len(records):
                break
            if consumer.proc is None or consumer.proc.poll() is not None:
                raise RuntimeError(f"{system} exited; see {consumer.log_path}")
            if len(seen) < 2:
                consumer.tree()  # renice Baton's worker as soon as it appears (run.py)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
    finally:
        consumer.stop()
        run.forget_predictions()
        await broker.cleanup(names)
    got = json.loads(out_path.read_text())
    got.update({"launched": launched, "seen": seen, "records": len(records)})
    out_path.write_text(json.dumps(got))
    return got


def render(system: str, t: dict[str, Any], batches: int) -> str:
    t0, ev, seen = t["launched"], t["events"], t["seen"]
    first_of = {}
    for at, what, _ in ev:
        first_of.setdefault(what, at)
    first_read = next((at for at, what, v in ev if what == "read" and v[0]), None)
    first_seen = next(at for at, n in seen if n > 0)
    lines = [f"--- {system}: seconds after launch"]
    for label, at in (("process start", first_of.get("process start")),
                      ("pipeline run", first_of.get("pipeline run")),
                      ("input open", first_of.get("input open")),
                      ("partitions assigned", first_of.get("assigned")),
                      ("first records read", first_read),
                      ("first batch scored", first_of.get("scored")),
                      ("first batch written + acked", first_of.get("written+acked")),
                      ("first output seen (run.py starts its clock)", first_seen)):
        if at is not None:
            lines.append(f"  {at - t0:7.3f}  {label}")
    lines.append(f"  first {batches} batches after the first read (ms after it: what, "
                 "records, ms it took)")
    base = first_read or first_seen
    shown: dict[str, int] = {}
    for at, what, v in ev:
        if at < base or what in ("process start", "pipeline run", "input open"):
            continue
        shown[what] = shown.get(what, 0) + 1
        if shown[what] > batches:
            continue
        n, took = (v if isinstance(v, list) else [None, v]) if v is not None else [None, None]
        lines.append(f"    {1000 * (at - base):8.1f}  {what:14} {n if n is not None else '':>5}"
                     f"  {1000 * took if isinstance(took, float) else '':>8}")
    lines.append("  whole run, ms per call: median (mean) of each step")
    steps: dict[str, list[Any]] = {}
    for _, what, v in ev:
        if what in ("assigned", "process start", "pipeline run", "input open"):
            continue
        took = v[1] if isinstance(v, list) else v
        if what == "read" and v[0] == 0:
            what = "read (empty)"
        if took is not None:
            steps.setdefault(what, []).append(took)
    for what, values in steps.items():
        parts = [list(x) for x in zip(*values, strict=True)] if isinstance(
            values[0], list) else [values]
        lines.append(f"    {what:22} x{len(values):<4} " + " | ".join(
            f"{1000 * sorted(p)[len(p) // 2]:6.2f} ({1000 * sum(p) / len(p):6.2f})"
            for p in parts)
            + ("  (waiting for the thread | running there | back on the loop)"
               if len(parts) == 3 else ""))
    reads = [v[0] for _, what, v in ev if what == "read" and v[0]]
    lines.append(f"  reads: {len(reads)}, records per read: first 10 {reads[:10]}, median "
                 f"{sorted(reads)[len(reads) // 2] if reads else 0}")
    # Records/s as run.py counts them: from the first look that saw outputs to the N-th.
    n_first, total = next(n for _, n in seen if n > 0), t["records"]
    last = seen[-1][0]
    lines.append(f"  run.py's figure: {total - n_first:,} records in {last - first_seen:.3f}s "
                 f"= {(total - n_first) / max(last - first_seen, 1e-9):,.0f} records/s")
    windows, k = [], 0
    edge = first_seen + 0.1
    prev = n_first
    while edge < last + 0.1:
        while k < len(seen) and seen[k][0] <= edge:
            k += 1
        count = seen[k - 1][1] if k else 0
        windows.append(f"{(count - prev) * 10 / 1000:.0f}k")
        prev, edge = count, edge + 0.1
    lines.append(f"  records/s per 100 ms window from the first output seen: "
                 f"{' '.join(windows)}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, paths: dict[str, Path],
                     records: list[tuple[str, bytes]]) -> None:
    import brokers as brokers_mod
    import run

    systems = args.systems.split(",")
    if args.against:
        systems.append("baton-against")
    for name in args.only.split(","):
        broker = brokers_mod.make(name, run.WORK)
        broker.start(run.NICE)
        rates: dict[str, list[float]] = {system: [] for system in systems}
        try:
            for _ in range(args.repeat):
                for system in systems:
                    env = dict(kv.split("=", 1) for kv in args.env) \
                        if system != "floor" else {}
                    if system == "baton-against":
                        env.update(dict(kv.split("=", 1) for kv in args.against_env))
                        if args.against != "-":
                            env["PYTHONPATH"] = args.against
                    t = await one(broker, paths, records, system.split("-")[0], env)
                    print(render(system, t, args.batches), flush=True)
                    rates[system].append(run_py_rate(t))
        finally:
            await broker.close()
            broker.stop()
        print(f"=== {name}: run.py's records/s per round")
        for system, got in rates.items():
            ratios = [round(b / f, 2) for b, f in zip(got, rates.get("floor", []),
                                                       strict=False)] if system != "floor" else []
            print(f"  {system:14} median {sorted(got)[len(got) // 2]:>9,.0f}  rounds "
                  f"{[round(x) for x in got]}" + (f"  / floor {ratios}" if ratios else ""))


def run_py_rate(t: dict[str, Any]) -> float:
    """Records/s as run.py counts them: from the first look that saw outputs to the N-th."""
    first_seen, n_first = next((at, n) for at, n in t["seen"] if n > 0)
    return (t["records"] - n_first) / max(t["seen"][-1][0] - first_seen, 1e-9)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(sys.argv[2:])
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(HERE.parent))
    import run

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="kafka")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--systems", default="floor,baton")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--batches", type=int, default=12,
                    help="batches shown one by one (12)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of Baton's process (repeatable), e.g. BATON_WORKERS=1, "
                         "or BENCH_IN_FLIGHT=N: another in-flight window")
    ap.add_argument("--against", default="",
                    help="also run Baton from this source folder (PYTHONPATH, e.g. a copy of "
                         "src/ with another pipeline.py), as system baton-against")
    ap.add_argument("--against-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of baton-against only (repeatable); --against - runs "
                         "it from this tree")
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="niceness of everything, as run.py's --nice (-10 as root)")
    args = ap.parse_args()
    if args.nice:
        from benchlib import set_autogroup_nice

        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        set_autogroup_nice("self", args.nice)
        run.NICE = args.nice
    (run.WORK / "logs").mkdir(parents=True, exist_ok=True)
    model, frame = run.make_model()
    paths = run.package(model, frame)
    run.ensure_baton_env(paths["bundle"])
    records, _ = run.make_records(frame, model, args.records)
    asyncio.run(main_async(args, paths, records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
