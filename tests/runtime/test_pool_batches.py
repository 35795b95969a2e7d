"""Greedy batching's bounds: what queues while the worker is busy goes as one batch of at
most ``max_batch_rows`` rows and ``max_batch_bytes`` of arrays; a request larger than the
bytes bound goes alone, and every request gets its own rows back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from baton.runtime.pool import WorkerPool
from tests.runtime.test_runner_conformance import batch, run, same, ys
from tests.runtime.test_template import make_spec


@pytest.mark.parametrize(("max_batch_bytes", "expected"), [
    pytest.param(8 << 20, [1, 250, 90], id="rows-bound"),  # 25 requests of 10 rows, then 5 + 40
    pytest.param(200, [1, *[20] * 15, 40], id="bytes-bound"),  # 2 x 80 bytes; 320 bytes alone
])
def test_queued_requests_merge_up_to_the_rows_and_bytes_bounds(
        tmp_path: Path, max_batch_bytes: int, expected: list[int]) -> None:
    spec = make_spec(tmp_path)

    async def body() -> None:
        pool = WorkerPool(spec, workers=1, timeout=30, max_batch_rows=256,
                          max_batch_bytes=max_batch_bytes)
        await pool.start()
        try:
            sizes: list[int] = []
            pool.on_batch = sizes.append
            requests = [[1.0]] + [[float(i * 10 + j) for j in range(10)] for i in range(30)]
            requests.append([float(k) for k in range(40)])
            # All start in one turn of the loop: the first finds the worker idle, the rest
            # queue behind it until its answer comes.
            answers = await asyncio.gather(*(pool.predict(batch(r)) for r in requests))
            assert sizes == expected
            for values, answer in zip(requests, answers, strict=True):
                assert same(ys(answer), [2 * v + 1 for v in values])
        finally:
            await pool.close(5)
    run(body())
