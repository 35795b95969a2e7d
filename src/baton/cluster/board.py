"""Where every replica of the cluster posts its figures, for ``/v1/stats`` and
``/v1/cluster`` (so ``baton status`` shows every replica and node).

Ray routes a request to one replica of a deployment, never to all of them, so the ingress
cannot ask each replica in turn. Each replica posts its engine's ``/v1/stats`` to one small
named Ray actor (the board) every second; the ingress reads the board and keeps only the
replicas Ray Serve's controller says are running. The driver removes the board with the
application.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("baton.cluster")

BOARD = "baton-board"
NAMESPACE = "baton"
#: Seconds between a replica's posts.
POST_EVERY = 1.0


class Board:
    """The actor: the latest post of each replica, by replica id."""

    def __init__(self) -> None:
        self.posts: dict[str, dict[str, Any]] = {}

    def put(self, replica: str, post: dict[str, Any]) -> None:
        self.posts[replica] = {**post, "posted": time.time()}

    def drop(self, replica: str) -> None:
        self.posts.pop(replica, None)

    def all(self) -> dict[str, dict[str, Any]]:
        return dict(self.posts)


def start_board() -> Any:
    """The driver's call: the cluster's board, on the driver's own node (the head, as a rule:
    the node that outlives the others), restarted by Ray if that node's worker dies."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(num_cpus=0, max_restarts=-1)(Board)
    return actor.options(name=BOARD, namespace=NAMESPACE, get_if_exists=True,
                         lifetime="detached", scheduling_strategy=here).remote()


def board() -> Any:
    """The board the driver started (ValueError when there is none)."""
    import ray

    return ray.get_actor(BOARD, namespace=NAMESPACE)


async def post_forever(replica: str, post: Callable[[], dict[str, Any]]) -> None:
    """A replica's task: send ``post()`` to the board every second; a board that is not
    there (yet, or any more) is looked up again at the next post."""
    actor = None
    while True:
        try:
            actor = actor or board()
            await asyncio.wait_for(actor.put.remote(replica, post()), 10)
        except Exception as exc:  # the board is a convenience: never stop the replica
            log.debug("could not post to the board: %s", exc)
            actor = None
        await asyncio.sleep(POST_EVERY)


def remove_board() -> None:
    """The driver's call when the application goes; never fails the driver's exit."""
    import ray

    try:
        ray.kill(board(), no_restart=True)
    except Exception as exc:
        log.warning("could not remove the replicas' board: %s", exc)
