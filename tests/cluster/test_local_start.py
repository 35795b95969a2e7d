"""A worker node that Ray gave up on while it started (``ray start`` allows a raylet a
fixed 30 s to register) is started once more; any other failure is reported at once. Ray
cannot be made to give up on demand, so the nodes here are stand-in processes that print
what ``ray start`` prints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.cluster.local import LocalCluster, Node
from baton.errors import BatonError

STARTED = "echo 'Ray runtime started.'; exec sleep 60"
GAVE_UP = ("echo 'Exception: The current node timed out during startup. This could "
           "happen because some of the raylet failed to startup'; exit 1")
OTHER = "echo 'ValueError: something else'; exit 1"


def stand_in(root: Path, name: str, script: str) -> Node:
    log = root / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Node(name, proc, log)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path)
    cluster.nodes.append(stand_in(tmp_path, "head", STARTED))
    yield cluster
    for node in cluster.nodes:
        node.kill()


def scripted(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch,
             scripts: list[str]) -> list[Node]:
    started: list[Node] = []

    def start_node(name: str, index: int, extra: list[str]) -> Node:
        started.append(stand_in(cluster.root, name, scripts[len(started)]))
        return started[-1]

    monkeypatch.setattr(cluster, "_start_node", start_node)
    return started


def test_a_node_ray_gave_up_on_is_started_once_more(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    started = scripted(cluster, monkeypatch, [GAVE_UP, STARTED])
    node = cluster.add_node(timeout=60)
    assert node is started[1] and cluster.nodes == [cluster.nodes[0], node]
    assert started[0].proc.poll() == 1 and node.proc.poll() is None


@pytest.mark.parametrize("scripts", [[OTHER], [GAVE_UP, GAVE_UP]], ids=["other", "twice"])
def test_another_failure_or_a_second_give_up_is_reported(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, scripts: list[str]) -> None:
    started = scripted(cluster, monkeypatch, scripts)
    with pytest.raises(BatonError, match="Ray node worker1 exited") as failed:
        cluster.add_node(timeout=60)
    assert failed.value.code == "RAY_START_FAILED" and len(started) == len(scripts)
