"""A worker node that Ray gave up on while it started (``ray start`` allows a raylet a
fixed 30 s to register) is started again, on ports of its own, up to START_TRIES times;
any other failure is reported at once. Ray
cannot be made to give up on demand, so the nodes here are stand-in processes that print
what ``ray start`` prints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.cluster.local import START_TRIES, LocalCluster, Node
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


def test_a_node_ray_gave_up_on_is_started_again_on_ports_of_its_own(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    started = scripted(cluster, monkeypatch, [GAVE_UP, GAVE_UP, STARTED])
    node = cluster.add_node(timeout=60)
    assert node is started[2] and cluster.nodes == [cluster.nodes[0], node]
    assert [n.name for n in started] == ["worker1", "worker2", "worker3"]
    assert all(n.proc.poll() == 1 for n in started[:2]) and node.proc.poll() is None
    # A node that replaces a lost one does not take its ports either.
    cluster.nodes.remove(node)
    node.kill()
    scripted(cluster, monkeypatch, [STARTED])
    assert cluster.add_node(timeout=60).name == "worker4"


@pytest.mark.parametrize("scripts", [[OTHER], [GAVE_UP, OTHER], [GAVE_UP] * START_TRIES],
                         ids=["other", "then-other", "every-try"])
def test_another_failure_or_giving_up_every_try_is_reported(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, scripts: list[str]) -> None:
    started = scripted(cluster, monkeypatch, scripts)
    with pytest.raises(BatonError, match=f"Ray node worker{len(scripts)} exited") as failed:
        cluster.add_node(timeout=60)
    assert failed.value.code == "RAY_START_FAILED" and len(started) == len(scripts)
    assert cluster.nodes[1:] == [started[-1]]  # the one that failed, for its log
