"""``baton`` with wall-clock timers around each step of the stream pipeline (diagnostics).

    BENCH_STAGE_TIMES=out.json .venv/bin/python bench/streams/stage_timer.py serve BUNDLE ...

Runs Baton's own CLI in this process after wrapping, in memory only, the steps of
``baton.streams.pipeline.StreamPipeline``: reading the input, decoding and checking the
records, the prediction (engine -> worker -> engine), building the output records, the
prediction log, writing the outputs, acknowledging the inputs. At exit it writes the total
seconds and calls of each step to ``$BENCH_STAGE_TIMES`` (JSON). Nothing in src/ changes;
the timers cost about a microsecond per call. Used by profile.py --stages.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import os
import sys
import time
from typing import Any

TOTALS: dict[str, float] = collections.defaultdict(float)
CALLS: dict[str, int] = collections.defaultdict(int)
FIRST_LAST: list[float] = []


def _timed_async(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            TOTALS[name] += time.perf_counter() - t0
            CALLS[name] += 1
    return wrapper


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[name] += time.perf_counter() - t0
            CALLS[name] += 1
    return wrapper


def install() -> None:
    from baton.serving import service
    from baton.streams import pipeline

    P = pipeline.StreamPipeline
    P._predict = _timed_async("predict (engine -> worker -> engine)", P._predict)
    pipeline.decode_messages = _timed("decode + contract checks", pipeline.decode_messages)
    pipeline.output_record = _timed("output records (orjson)", pipeline.output_record)
    if hasattr(pipeline, "output_records"):  # since a1ec83e: a whole batch at a time
        pipeline.output_records = _timed("output records (orjson)", pipeline.output_records)
    service.ModelService.log_predictions = _timed("prediction log (enqueue)",
                                                  service.ModelService.log_predictions)
    original_retry = P._retry
    labels = {"read input": "read input (connector)", "write output": "write output (connector)",
              "acknowledge input": "acknowledge input (connector)"}

    async def retry(self: Any, what: str, step: Any) -> Any:
        label = labels.get(what)
        if label is None:
            return await original_retry(self, what, step)
        t0 = time.perf_counter()
        result = await original_retry(self, what, step)
        if what == "read input" and not result:
            label = "read input, empty (idle)"  # no input: not part of the batches' time
        TOTALS[label] += time.perf_counter() - t0
        CALLS[label] += 1
        return result

    P._retry = retry
    _time_kafka_thread()
    original_deliver = P._deliver

    async def deliver(self: Any, messages: Any, *args: Any) -> None:
        # Batches overlap (read, score, write): per-step times no longer add up to the
        # batch's; the span from the first delivery to the last gives the throughput.
        t0 = time.perf_counter()
        if not FIRST_LAST:
            FIRST_LAST.append(t0)
        await original_deliver(self, messages, *args)
        TOTALS["deliver (write outputs, dead letters, ack)"] += time.perf_counter() - t0
        CALLS["deliver (write outputs, dead letters, ack)"] += 1
        TOTALS["records"] += len(messages)
        if len(FIRST_LAST) > 1:
            FIRST_LAST.pop()
        FIRST_LAST.append(time.perf_counter())

    P._deliver = deliver


def _time_kafka_thread() -> None:
    """The Kafka connector runs each client call on a thread of its own: split the time of
    a call into waiting for that thread, running there, and getting back onto the loop."""
    try:
        from baton.streams.connectors._kafka_client import KafkaClient
    except ImportError:
        return
    original_call = KafkaClient.call

    async def call(self: Any, fn: Any, *args: Any, lane: str = "main") -> Any:
        marks: list[float] = []

        def timed() -> Any:
            marks.append(time.perf_counter())
            try:
                return fn(*args)
            finally:
                marks.append(time.perf_counter())

        submitted = time.perf_counter()
        result = await original_call(self, timed, lane=lane)
        back = time.perf_counter()
        name = getattr(fn, "__name__", "call")
        if len(marks) == 2:
            for label, v in (("kafka thread: waiting to start", marks[0] - submitted),
                             (f"kafka thread: running {name}", marks[1] - marks[0]),
                             ("kafka thread: result back on the loop", back - marks[1])):
                TOTALS[label] += v
                CALLS[label] += 1
        return result

    KafkaClient.call = call  # type: ignore[method-assign]


def dump() -> None:
    path = os.environ.get("BENCH_STAGE_TIMES")
    if not path:
        return
    span = FIRST_LAST[-1] - FIRST_LAST[0] if len(FIRST_LAST) > 1 else 0.0
    with open(path, "w") as f:
        json.dump({"seconds": dict(TOTALS), "calls": dict(CALLS),
                   "first_batch_to_last_s": span}, f, indent=2)


if __name__ == "__main__":
    install()
    atexit.register(dump)
    from baton.cli.main import main

    sys.argv[0] = "baton"
    main()
