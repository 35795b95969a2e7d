"""``baton score --ray ADDRESS``: a file scored by actors spread over a Ray cluster.

The driver (this process) runs the same :class:`~baton.scoring.job.ScoreJob` as local mode:
it reads and checks the input in chunks with the local readers, isolates the rows the model
fails on and writes scores and dead letters in input order, so both modes write the same
files by construction. Only the model moves: each chunk goes to one of the
:class:`ScoringActor` actors (one per node by default, pinned to its node), which unpacks the
shipped archive on its node, builds or reuses the bundle's environment there and runs the
bundle's worker pool behind the same checked request path (``ModelService.predict``: the
output contract is enforced on the node). Errors come back as data and are rebuilt into the
same error classes, so the job dead-letters a row exactly as local mode does.

Ray Data's readers are not used: they would read a CSV differently (a line with the wrong
number of cells, a word in a number column or a null token stops or changes the read, and
rows have no numbers), and one file is one read task anyway. The driver's reading, checking
and writing is therefore the ceiling of the job's rate (``bench/cluster_score.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from baton.batch import Batch
from baton.errors import (
    BatonError,
    BundleError,
    ContractViolation,
    DigestMismatchError,
    EnvironmentBuildError,
    ManifestError,
    ModelError,
    ModelLoadError,
    ModelNotReady,
    PayloadTooLarge,
    WorkerCrashed,
    WorkerError,
    WorkerLimitExceeded,
    WorkerTimeout,
)
from baton.scoring.base import ScoringError
from baton.settings import Settings

if TYPE_CHECKING:
    from baton.bundle.loader import Bundle
    from baton.cluster.replica import Shipment
    from baton.runtime.pool import WorkerPool
    from baton.serving.service import ModelService

#: Error classes a node's pool raises that the job tells apart (isolate, retry, fail).
_ERRORS: dict[str, type[BatonError]] = {c.__name__: c for c in (
    ModelError, WorkerError, WorkerCrashed, WorkerLimitExceeded, WorkerTimeout, ModelLoadError,
    ModelNotReady, PayloadTooLarge, EnvironmentBuildError, BundleError, DigestMismatchError,
    ManifestError)}


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to score."""

    address: str
    #: Actors (each with the bundle's worker pool); None: one per node with CPUs.
    actors: int | None = None


def error_data(exc: BatonError) -> dict[str, Any]:
    """An error as plain data, to cross from a node to the driver."""
    return {"type": type(exc).__name__, "code": exc.code, "message": exc.message,
            "details": exc.details}


def rebuilt_error(data: dict[str, Any]) -> BatonError:
    """The error :func:`error_data` describes, as the same class with the same fields."""
    details = data.get("details") or {}
    exc: BatonError
    if data["type"] == "ContractViolation":
        exc = ContractViolation(data["message"], violations=details.get("violations", []),
                                direction=details.get("direction", "input"))
    else:
        exc = _ERRORS.get(data["type"], BatonError)(data["message"], details=details)
    exc.code = data["code"]
    return exc


class ScoringActor:
    """One node's share of the job: the bundle's worker pool, answering chunks.

    A Ray actor class (``ray.remote`` is applied by the driver, so this module never imports
    Ray); its methods are coroutines, so chunks from the driver overlap in the pool as they
    do in a local job.
    """

    def __init__(self, shipment: Shipment, settings: Settings) -> None:
        self.shipment = shipment
        self.settings = settings
        self.svc: ModelService | None = None

    async def start(self, timeout: float, max_queue_rows: int) -> dict[str, Any]:
        """Open the bundle on this node, build or reuse its environment, start the workers;
        where it runs, or ``{"error": ...}``."""
        import ray

        from baton.cluster.replica import unpack
        from baton.serving.opening import env_note, local_service

        try:
            bundle = await asyncio.to_thread(unpack, self.shipment, self.settings)
            svc = await asyncio.to_thread(local_service, bundle, self.settings)
            svc.pool.timeout = timeout
            svc.pool.max_queue_rows = max(svc.pool.max_queue_rows, max_queue_rows)
            await svc.pool.start()
        except BatonError as exc:
            return {"error": error_data(exc)}
        self.svc = svc
        return {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                "pid": os.getpid(), "workers": svc.pool.size, "env": env_note(svc.env)}

    async def predict(self, batch: Batch) -> Batch | dict[str, Any]:
        """The checked outputs, or the error as data."""
        if self.svc is None:
            return error_data(ModelNotReady("this actor has not started"))
        try:
            return await self.svc.predict(batch)
        except BatonError as exc:
            return error_data(exc)

    async def close(self) -> dict[str, float]:
        """Stop the workers; the peak memory of this actor and of its workers, in MiB."""
        from baton.runtime.worker import peak_rss

        if self.svc is None:
            return {}
        pool = self.svc.pool
        workers = sum((peak_rss(w.pid) or 0) for w in pool.workers if w and w.pid) / 2**20
        await pool.close(5.0)
        return {"actor": (peak_rss(os.getpid()) or 0) / 2**20, "workers": workers}


@dataclass
class _Actor:
    handle: Any
    info: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    rows: int = 0
    chunks: int = 0
    peak_mb: dict[str, float] = field(default_factory=dict)
    gone: bool = False

    @property
    def load(self) -> float:
        return self.in_flight / max(int(self.info.get("workers", 1)), 1)


class ClusterPool:
    """The actors, in the place of a local job's worker pool: :class:`ScoreJob` sizes its
    window (chunks in flight) by ``size``, sets ``timeout`` and
    ``max_queue_rows`` before ``start`` (forwarded to each node's pool), and closes it."""

    def __init__(self, shipment: Shipment, settings: Settings, options: RayOptions, *,
                 timeout: float, max_batch_rows: int) -> None:
        self.shipment = shipment
        self.settings = settings
        self.options = options
        self.timeout = timeout
        self.max_batch_rows = max_batch_rows
        self.max_queue_rows = settings.max_queue_rows
        self.size = max(options.actors or 1, 1) * max(settings.workers, 1)
        #: Local worker processes (ScoreJob reads their memory): none, they are on the nodes.
        self.workers: list[Any] = []
        self.actors: list[_Actor] = []

    async def start(self) -> None:
        """One actor per node (or ``actors``, spread round the nodes), started together."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = _cpu_nodes()
        count = self.options.actors or len(nodes)
        remote = ray.remote(ScoringActor)
        for i in range(count):
            placed = NodeAffinitySchedulingStrategy(node_id=nodes[i % len(nodes)], soft=False)
            handle = remote.options(num_cpus=1, max_concurrency=1000,
                                    scheduling_strategy=placed).remote(self.shipment,
                                                                       self.settings)
            self.actors.append(_Actor(handle))
        infos = await asyncio.gather(*(a.handle.start.remote(self.timeout, self.max_queue_rows)
                                       for a in self.actors), return_exceptions=True)
        failed = [_start_error(i) for i in infos if isinstance(i, BaseException) or "error" in i]
        if failed:
            await self.close()
            raise failed[0]
        for actor, info in zip(self.actors, infos, strict=True):
            actor.info = cast(dict[str, Any], info)
        # One chunk more per actor than it has workers: it waits in the node's pool while
        # finished chunks travel back, so no worker idles for a round trip.
        self.size = self.workers_total + len(self.actors)

    @property
    def workers_total(self) -> int:
        """Worker processes of every actor together."""
        return sum(int(a.info.get("workers", 0)) for a in self.actors)

    async def predict(self, batch: Batch) -> Batch:
        from ray.exceptions import RayActorError

        live = [a for a in self.actors if not a.gone]
        if not live:
            raise ScoringError("every actor of the job is gone (their nodes left the "
                               "cluster)", code="CLUSTER_LOST")
        actor = min(live, key=lambda a: a.load)
        actor.in_flight += 1
        try:
            out = await actor.handle.predict.remote(batch)
        except RayActorError as exc:
            # Its node is gone: the job waits on ModelNotReady and sends the chunk again,
            # to an actor still there.
            actor.gone = True
            raise ModelNotReady(f"the actor on node {actor.info.get('node', '?')[:12]} is "
                                f"gone: {exc}") from None
        finally:
            actor.in_flight -= 1
        if isinstance(out, dict):
            raise rebuilt_error(out)
        actor.rows += batch.rows
        actor.chunks += 1
        return cast(Batch, out)

    async def close(self, drain_timeout: float = 30.0) -> None:
        import ray

        live = [a for a in self.actors if not a.gone]
        peaks = await asyncio.gather(*(asyncio.wait_for(a.handle.close.remote(), drain_timeout)
                                       for a in live), return_exceptions=True)
        for actor, peak in zip(live, peaks, strict=True):
            if isinstance(peak, dict):
                actor.peak_mb = peak
            ray.kill(actor.handle)

    def describe(self) -> list[dict[str, Any]]:
        """Each actor: its node, process, workers, environment, and the rows it scored."""
        return [{**a.info, "rows": a.rows, "chunks": a.chunks, "gone": a.gone,
                 "peak_rss_mb": {k: round(v, 1) for k, v in a.peak_mb.items()}}
                for a in self.actors]


class ClusterModel:
    """What a :class:`~baton.scoring.job.ScoreJob` scores with (its ``ScoringModel``): the
    actors of :class:`ClusterPool`."""

    def __init__(self, cluster: ClusterPool) -> None:
        self.cluster = cluster

    @property
    def pool(self) -> WorkerPool:
        # ScoreJob uses only what a pool and ClusterPool share (size, timeout, max_queue_rows,
        # max_batch_rows, workers, start, close).
        return cast("WorkerPool", self.cluster)

    async def predict(self, batch: Batch) -> Batch:
        return await self.cluster.predict(batch)


def cluster_model(ref: str, bundle: Bundle, settings: Settings,
                  options: RayOptions) -> ClusterModel:
    """Ship ``bundle`` (opened from ``ref``) and join the cluster; the actors start with the
    job (``ScoreJob.run`` starts its pool)."""
    from baton.cluster.serve import connect, ship
    from baton.serving.defaults import default_timeout

    connect(options.address)  # an unreachable cluster fails before the bundle is shipped
    shipment = ship(ref, settings)
    m = bundle.manifest
    timeout = settings.timeout or m.serving.timeout or default_timeout(bundle)[0]
    return ClusterModel(ClusterPool(shipment, settings, options, timeout=timeout,
                                    max_batch_rows=m.serving.max_batch_rows))


def _cpu_nodes() -> list[str]:
    import ray

    nodes = [n["NodeID"] for n in ray.nodes()  # type: ignore[no-untyped-call]
             if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if not nodes:
        raise ScoringError("the Ray cluster has no live node with CPUs", code="CLUSTER_EMPTY")
    # The driver's own node first: one actor scores where the file is read.
    here = ray.get_runtime_context().get_node_id()
    return sorted(nodes, key=lambda n: (n != here, n))


def _start_error(info: BaseException | dict[str, Any]) -> BatonError:
    """Why an actor did not start: its own error, else Ray's account."""
    if isinstance(info, dict):
        return rebuilt_error(info["error"])
    return ScoringError(f"the model did not start on the cluster: {info}",
                        code="CLUSTER_START_FAILED")
