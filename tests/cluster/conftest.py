"""One real Ray cluster of two nodes (a head and a worker) on this machine, shared by the
cluster tests (and stopped after them: its processes would take CPU from the rest of the
suite); tests that lose a node add their own to it first. The dashboard's browser
fixtures, for the dashboard served by a cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.cluster.local import LocalCluster, ray_environment
from tests.dashboard.conftest import (  # noqa: F401  (fixtures)
    browser,
    expected_console,
    page,
    screenshot_dir,
    shot,
)


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes; ``BATON_TEST_RAY_BASE`` moves its ports (default 20000) so two checkouts
    can test side by side."""
    base = int(os.environ.get("BATON_TEST_RAY_BASE", "20000"))
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("ray")), base=base, cpus=4)
    try:
        cluster.start(workers=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as a Ray driver needs it (authentication off, as the
    local cluster runs)."""
    for key, value in ray_environment().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
