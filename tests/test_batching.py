"""Batching is invisible: a record's answer is the same alone, inside any batch and merged
with concurrent requests, and it is the answer the model gives in the notebook.

Four models packaged with ``baton.package`` (one-hot pipeline, gradient boosting reading
``category`` columns natively, an encoder reading raw strings, a regressor on nullable
integers and booleans) are served by one real ``baton serve``; Hypothesis generates records
from each contract, with nulls, edge values and every category.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server
from tests.differential import Packaged, coverage, package_all, records, same

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Packaged]:
    return package_all(tmp_path_factory.mktemp("differential"))


@pytest.fixture(scope="module")
def server(packaged: dict[str, Packaged], baton_env: dict[str, str]) -> Iterator[Server]:
    srv = Server([p.path for p in packaged.values()], baton_env, [])
    try:
        srv.wait_ready(timeout=600)
        yield srv
    finally:
        srv.stop()


def predict(client: httpx.Client, name: str, batch: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    r = client.post(f"/v1/models/{name}/predict", json=batch)
    assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:2000]} for {batch}"
    return list(r.json()["predictions"])


def answers_every_way(server: Server, name: str, batch: list[dict[str, Any]],
                      cuts: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The records' answers alone, as one batch, and as concurrent requests cut at ``cuts``."""
    client = server.client
    alone = [predict(client, name, [r])[0] for r in batch]
    whole = predict(client, name, batch)
    bounds = [0, *sorted({c % len(batch) for c in cuts} - {0}), len(batch)]
    parts = [batch[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    with ThreadPoolExecutor(len(parts) + 2) as pool:
        # Singles race beside the parts so that the engine merges requests of both sizes.
        singles = [pool.submit(predict, client, name, [r]) for r in batch[:2]]
        merged = [pool.submit(predict, client, name, p) for p in parts]
        concurrent = [a for f in merged for a in f.result()]
        for f, r in zip(singles, batch, strict=False):
            assert same(f.result(), [alone[batch.index(r)]])
    return {"alone": alone, "batch": whole, "concurrent": concurrent}


@pytest.mark.parametrize("name", ["onehot", "native", "strings", "regression"])
def test_coverage_records_answer_alike_alone_in_batch_and_in_the_notebook(
        packaged: dict[str, Packaged], server: Server, name: str) -> None:
    """Every category once and every nullable field null: the all-null record alone is the
    case that failed (an all-null text column reached the model as float NaN)."""
    p = packaged[name]
    batch = coverage(p.fields)
    got = answers_every_way(server, name, batch, [1, 3])
    want = p.notebook(batch)
    for way, answers in got.items():
        assert same(answers, want), f"{name}, {way}: {answers} != notebook {want}"


@pytest.mark.parametrize("name", ["onehot", "native", "strings", "regression"])
def test_generated_records_answer_alike_every_way(packaged: dict[str, Packaged],
                                                  server: Server, name: str) -> None:
    p = packaged[name]

    @SETTINGS
    @given(batch=records(p.fields), cuts=st.lists(st.integers(1, 7), max_size=3))
    def check(batch: list[dict[str, Any]], cuts: list[int]) -> None:
        got = answers_every_way(server, name, batch, cuts)
        want = p.notebook(batch)
        for way, answers in got.items():
            assert same(answers, want), f"{name}, {way}: {answers} != notebook {want}"

    check()
