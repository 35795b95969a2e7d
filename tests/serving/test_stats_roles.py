"""/v1/stats lists every served version: the live one, and its canary and shadow candidates,
each with its role, its own workers and figures, and the traffic it takes part in."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server
from tests.serving.test_registry_serving import scorer, version_of, wait_for

pytestmark = pytest.mark.slow


def scorer_dir(root: Path, version: str, factor: float) -> Path:
    """A scorer bundle folder whose model answers ``x * factor`` and its own version."""
    scorer(root, version, factor)
    return root / f"scorer-{version}"


def stats(server: Server) -> list[dict[str, Any]]:
    return server.client.get("/v1/stats").json()["models"]  # type: ignore[no-any-return]


def by_role(server: Server) -> dict[str, dict[str, Any]]:
    return {m["role"]: m for m in stats(server)}


def assert_version_entry(m: dict[str, Any], version: str, role: str) -> None:
    """The fields every entry has, whatever its role; one ready worker sampled by the engine."""
    assert (m["name"], m["version"], m["role"], m["ready"]) == ("scorer", version, role, True)
    assert m["digest"].startswith("sha256:")
    assert m["queued_rows"] == 0 and m["in_flight"] == 0 and m["restarts"] == 0
    assert m["last_failure"] is None and m["drift"] is None and m["drift_alerts"] == []
    [worker] = m["workers"]
    assert worker["state"] == "ready" and worker["pid"] > 0
    assert worker["cpu_seconds"] >= 0 and worker["rss_bytes"] > 0
    assert m["metrics"]["errors"] == 0


def test_stats_lists_the_live_version_its_canary_and_its_shadow(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    live = scorer_dir(tmp_path, "1.0.0", 2.0)
    canary = scorer_dir(tmp_path, "2.0.0", 3.0)
    shadow = scorer_dir(tmp_path, "3.0.0", 5.0)
    server = serve([live], "--canary", f"{canary}=30", "--shadow", str(shadow))
    wait_for(lambda: len(stats(server)) == 3 and all(m["ready"] for m in stats(server)))

    answered = collections.Counter(version_of(server) for _ in range(60))
    assert set(answered) == {"1.0.0", "2.0.0"}  # the shadow never answers
    # Only the live version's batches are mirrored; the comparison ends after the answer.
    wait_for(lambda: by_role(server)["shadow"]["traffic"]["compared_rows"] == answered["1.0.0"])

    models = stats(server)
    assert [(m["version"], m["role"]) for m in models] == [
        ("1.0.0", "live"), ("2.0.0", "canary"), ("3.0.0", "shadow")]
    live_m, canary_m, shadow_m = models
    assert_version_entry(live_m, "1.0.0", "live")
    assert_version_entry(canary_m, "2.0.0", "canary")
    assert_version_entry(shadow_m, "3.0.0", "shadow")
    assert len({m["digest"] for m in models}) == 3
    assert len({m["workers"][0]["pid"] for m in models}) == 3  # each has its own worker

    # The live entry carries the canary split (the canary's own entry too) ...
    split = {"mode": "canary", "candidate": "2.0.0", "candidate_digest": canary_m["digest"],
             "candidate_ready": True, "weight": 0.3, "requests": 60,
             "to_candidate": answered["2.0.0"]}
    assert live_m["traffic"] == split and canary_m["traffic"] == split
    # ... and the shadow entry its comparison: every mirrored row differs (5x vs 2x).
    t = shadow_m["traffic"]
    assert t["mode"] == "shadow" and t["candidate"] == "3.0.0"
    assert t["candidate_digest"] == shadow_m["digest"] and t["candidate_ready"] is True
    assert t["requests"] == t["compared_rows"] == t["mismatched_rows"] == answered["1.0.0"]
    assert t["candidate_errors"] == 0 and t["skipped"] == 0 and t["max_abs_diff"] == 3.0

    # Each version counts what it answered; mirrored copies are not requests.
    assert live_m["metrics"]["requests"] == live_m["metrics"]["records"] == answered["1.0.0"]
    assert canary_m["metrics"]["requests"] == answered["2.0.0"]
    assert shadow_m["metrics"]["requests"] == 0
    # ... but its worker scored them: in batches of one row, or of two when two mirrored
    # copies queued while it was busy (the shadow answers no one, so nothing waits for it).
    assert 1.0 <= shadow_m["metrics"]["batch_rows_mean"] <= 2.0


def test_a_shadow_alone_is_the_live_entrys_traffic(serve: Callable[..., Server],
                                                    tmp_path: Path) -> None:
    live = scorer_dir(tmp_path, "1.0.0", 2.0)
    shadow = scorer_dir(tmp_path, "3.0.0", 2.0)
    server = serve([live], "--shadow", str(shadow))
    wait_for(lambda: len(stats(server)) == 2 and all(m["ready"] for m in stats(server)))
    for _ in range(10):
        assert version_of(server) == "1.0.0"
    wait_for(lambda: by_role(server)["shadow"]["traffic"]["compared_rows"] == 10)

    live_m, shadow_m = stats(server)
    assert (live_m["role"], shadow_m["role"]) == ("live", "shadow")
    assert_version_entry(shadow_m, "3.0.0", "shadow")
    recent = live_m["traffic"].pop("recent")
    assert len(recent) == 10 and all(e["mismatched_rows"] == 1 for e in recent)
    assert live_m["traffic"] == {
        "mode": "shadow", "candidate": "3.0.0", "candidate_digest": shadow_m["digest"],
        "candidate_ready": True, "requests": 10, "compared_rows": 10,
        "mismatched_rows": 10,  # same y, but the "v" output names another version
        "max_abs_diff": 0.0, "candidate_errors": 0, "skipped": 0}


def test_a_model_served_alone_is_live_without_traffic(serve: Callable[..., Server],
                                                       tmp_path: Path) -> None:
    server = serve([scorer_dir(tmp_path, "1.0.0", 2.0)])
    [m] = stats(server)
    assert m["role"] == "live" and m["traffic"] is None
