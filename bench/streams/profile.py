"""Where Baton's stream binding spends its time: py-spy, or timers around each step.

    .venv/bin/python bench/streams/profile.py [--only kafka,redis] [--records 100000]
    .venv/bin/python bench/streams/profile.py --only kafka --stages [--systems baton,baton-nolog]

For each broker it pre-loads the input like run.py does (more records, for a longer
window) and starts ``baton serve`` with the same arguments. By default, from the first output
to the last it records the engine and the worker with ``py-spy record --format raw --threads
--nonblocking -r 200`` (py-spy is installed into a throwaway environment,
build/bench-streams/envs/tools); the raw folded stacks go to
build/bench-streams/profile-BROKER-SYSTEM-{engine,worker}.txt and it prints the share of
samples per thread, per stage of the pipeline and per self (leaf) function (shares of the
samples taken while a thread was running; py-spy's overhead included; ``--idle`` samples
waiting stacks too). With ``--stages`` it runs the floor and then each system with their own
wall-clock timers (floor.py's Stages; stage_timer.py for Baton) and prints milliseconds per
batch for each step of the loop (build/bench-streams/stages-BROKER-SYSTEM.json).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # bench/benchlib.py
import brokers as brokers_mod  # noqa: E402
import run  # noqa: E402 - the benchmark's own helpers
from benchlib import ensure_py_spy  # noqa: E402

TOOLS = run.WORK / "envs" / "tools"

#: Stages of the stream pipeline, by the first matching frame (the list order wins).
STAGES = [
    ("worker: predict_proba (scikit-learn)", ("predict_proba (sklearn",)),
    ("worker: DataFrame, frames in/out, waiting", ("baton/runtime/runner.py",)),
    ("engine: prediction log (SQLite, to_records)", ("baton/monitor/predlog/",)),
    ("engine: metrics", ("baton/monitor/metrics.py",)),
    ("engine: source read (connector)", ("read (baton/streams/connectors", "_poll (baton",
                                         "take (baton/streams")),
    ("engine: sink write (connector)", ("write (baton/streams/connectors",
                                        "_produce (baton")),
    ("engine: acknowledge (connector)", ("ack (baton/streams/connectors",)),
    ("engine: decode + contract checks (records.py)", ("decode_messages",)),
    ("engine: output records (orjson)", ("output_record", "to_records")),
    ("engine: pool, batching, IPC to worker", ("WorkerPool.", "Worker.", "_Pipes.",
                                               "encode_predict", "decode_columns",
                                               "concat_batches", "split_batch")),
    ("engine: pipeline loop", ("baton/streams/pipeline.py",)),
    ("engine: client library (nats-py, aio-pika, paho, redis-py, confluent-kafka)",
     ("(nats/", "(aio_pika/", "(aiormq/", "(pamqp/", "(paho/", "(redis/",
      "(confluent_kafka/")),
    ("engine: HTTP server (uvicorn protocols, ASGI app)", ("uvicorn/protocols", "BatonApp.")),
    ("engine: idle thread-pool threads (waiting for work)", ("_worker (concurrent/futures",)),
    ("engine: asyncio tasks and futures", ("(asyncio/tasks.py", "(asyncio/futures.py",
                                           "(asyncio/streams.py", "(asyncio/locks.py")),
]


def summarize(path: Path, top: int = 14) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    stage: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        threads[frames[1] if len(frames) > 1 and frames[1].startswith("thread")
                else frames[0]] += count
        leaf[frames[-1]] += count
        for name, needles in STAGES:
            if any(any(nd in f for nd in needles) for f in frames):
                stage[name] += count
                break
        else:
            stage["other (the event loop's own C code, GC, ...)"] += count
    if not total:
        return f"{path.name}: no samples"
    out = [f"{path.name}: {total} samples"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(6)]
    out.append("  stages:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in stage.most_common()]
    out.append("  top self functions:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    return "\n".join(out)


async def profile_one(broker: brokers_mod.Broker, py_spy: Path, paths: dict[str, Path],
                      records: list[tuple[str, bytes]], rate: int, system: str,
                      idle: bool) -> str:
    names = broker.names(uuid.uuid4().hex[:10])
    urls = broker.urls(names, system)
    run.forget_predictions()
    consumer = run.make_consumer(system, urls, paths)
    spies: list[tuple[Path, subprocess.Popen[bytes]]] = []
    try:
        await broker.prepare(names, "baton", records)
        consumer.start()
        while True:  # until the first output: start-up is not what we look at
            out, dead = await broker.counts(names)
            if out + dead:
                break
            if consumer.proc is None or consumer.proc.poll() is not None:
                raise RuntimeError(f"baton exited; see {consumer.log_path}")
            await asyncio.sleep(0.005)
        procs = consumer.tree()
        t0, first = time.perf_counter(), out + dead
        for role, proc in (("engine", procs[0]), ("worker", procs[1])):
            path = run.WORK / f"profile-{broker.name}-{system}-{role}.txt"
            spies.append((path, subprocess.Popen(
                [str(py_spy), "record", "-p", str(proc.pid), "-r", str(rate), "--nonblocking",
                 "--threads", "--format", "raw", "-o", str(path), *(["--idle"] if idle else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        while out + dead < len(records):
            await asyncio.sleep(0.01)
            out, dead = await broker.counts(names)
        secs = time.perf_counter() - t0
    finally:
        for _, spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for _, spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        consumer.stop()
        run.forget_predictions()
        await broker.cleanup(names)
    head = (f"=== {broker.name} {system}: {len(records) - first:,} records in {secs:.2f}s = "
            f"{(len(records) - first) / secs:,.0f} records/s under py-spy ===")
    return "\n".join([head, *(summarize(path) for path, _ in spies)])


async def stages_one(broker: brokers_mod.Broker, paths: dict[str, Path],
                     records: list[tuple[str, bytes]], system: str) -> dict[str, Any]:
    """Wall-clock time per pipeline step, from the consumer's own timers (stage_timer.py for
    Baton, the Stages class in floor.py)."""
    names = broker.names(uuid.uuid4().hex[:10])
    consumer = run.make_consumer(system, broker.urls(names, system), paths)
    out_path = run.WORK / f"stages-{broker.name}-{system}.json"
    out_path.unlink(missing_ok=True)
    consumer.env = {**consumer.env, "BENCH_STAGE_TIMES": str(out_path)}
    if system.startswith("baton"):  # the same command line, run through the timers
        consumer.cmd = [sys.executable, str(run.HERE / "stage_timer.py"), *consumer.cmd[1:]]
    run.forget_predictions()
    try:
        await broker.prepare(names, system, records)
        consumer.start()
        while sum(await broker.counts(names)) < len(records):
            if consumer.proc is None or consumer.proc.poll() is not None:
                raise RuntimeError(f"{system} exited; see {consumer.log_path}")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the last acknowledgement
    finally:
        consumer.stop()
        run.forget_predictions()
        await broker.cleanup(names)
    return json.loads(out_path.read_text())


def render_stages(broker: str, timings: dict[str, dict[str, Any]]) -> str:
    lines = [f"=== {broker}: wall-clock ms per batch of each step (share of the time from "
             "the first batch to the last) ==="]
    for system, t in timings.items():
        secs, calls = t["seconds"], t["calls"]
        batches = calls.get("batches (whole handle())") or calls.get(
            "deliver (write outputs, dead letters, ack)") or calls.get(
            "acknowledge input (connector)") or 1
        span = t["first_batch_to_last_s"] or 1.0
        recs = secs.get("records", 0)
        lines.append(f"{system}: {batches} batches, {recs / batches:.0f} records each, "
                     f"{recs / span:,.0f} records/s over {span:.2f}s, "
                     f"{1000 * span / batches:.2f} ms per batch")
        for name, v in sorted(secs.items(), key=lambda kv: -kv[1]):
            if name in ("records", "batches (whole handle())") or "idle" in name:
                continue
            lines.append(f"  {1000 * v / batches:7.3f} ms  {100 * v / span:5.1f}%  {name}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, py_spy: Path, paths: dict[str, Path],
                     records: list[tuple[str, bytes]]) -> None:
    for name in args.only.split(","):
        broker = brokers_mod.make(name, run.WORK, mqtt_inflight=args.mqtt_inflight)
        broker.start(run.NICE)
        try:
            if args.stages:
                timings = {system: await stages_one(broker, paths, records, system)
                           for system in ["floor", *args.systems.split(",")]}
                print(render_stages(name, timings), flush=True)
                continue
            for system in args.systems.split(","):
                print(await profile_one(broker, py_spy, paths, records, args.rate, system,
                                        args.idle), flush=True)
        finally:
            await broker.close()
            broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="kafka")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    ap.add_argument("--mqtt-inflight", type=int, default=20)
    ap.add_argument("--systems", default="baton",
                    help="baton and/or its variants (see run.py --systems), comma-separated")
    ap.add_argument("--stages", action="store_true",
                    help="instead of py-spy: wall-clock time per pipeline step, floor and "
                         "Baton (their own timers; see stage_timer.py)")
    ap.add_argument("--idle", action="store_true",
                    help="also sample idle (waiting) stacks: wall-clock shares")
    args = ap.parse_args()
    (run.WORK / "logs").mkdir(parents=True, exist_ok=True)
    py_spy = ensure_py_spy(TOOLS) if not args.stages else Path("py-spy")
    model, frame = run.make_model()
    paths = run.package(model, frame)
    run.ensure_baton_env(paths["bundle"])
    records, _ = run.make_records(frame, model, args.records)
    asyncio.run(main_async(args, py_spy, paths, records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
