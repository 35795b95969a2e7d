"""``baton serve --ray ADDRESS``: every bundle a Ray Serve deployment, behind one ingress.

The driver (this process) opens and verifies each bundle, ships its archive to the cluster
and runs one Ray Serve application: an ingress deployment (:mod:`baton.cluster.ingress`) and,
per model, a deployment of :class:`~baton.cluster.replica.ModelReplica` replicas, spread over
the nodes, autoscaled on their queue between ``min_replicas`` and ``max_replicas``. A new
version of a model is a new deployment version: Ray starts the new replicas, sends them
traffic once they are ready (environment built, workers loaded, samples scored) and only
then drains the old ones, so no request fails. With a registry, the driver follows its stage
(:mod:`baton.cluster.follow`) and rolls each promotion or rollback out that way. The
application lives as long as the driver: SIGTERM or Ctrl-C deletes it.
"""

from __future__ import annotations

import logging
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.cluster.replica import ModelReplica, Shipment
from baton.errors import BatonError, SettingsError
from baton.settings import Settings

if TYPE_CHECKING:
    from baton.deployment import DeploymentSpec
    from baton.server.tokens import TokenFile
    from baton.serving.opening import RegistryAccess

log = logging.getLogger("baton.cluster")

APP = "baton"
PROXY_LOCATIONS = ("every-node", "head-only")
#: Ray Serve's own logging: no line per request (Baton's engines log what matters).
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


@dataclass(frozen=True)
class ClusterOptions:
    """How the models are laid out on the cluster."""

    address: str
    #: Fixed replicas per model, or (with ``max_replicas``) the autoscaler's floor.
    min_replicas: int = 1
    #: Above ``min_replicas``: autoscale on queue length up to this many.
    max_replicas: int | None = None
    #: Requests in progress per replica the autoscaler aims at.
    target_ongoing: float = 2.0
    #: Seconds a replica count must be wanted before the autoscaler acts (up, down).
    upscale_delay: float = 10.0
    downscale_delay: float = 60.0
    #: CPUs Ray reserves per replica (its workers run inside that share).
    replica_cpus: float = 1.0
    #: Ingress replicas (each a small process that forwards requests).
    ingress_replicas: int = 2
    proxy: str = "every-node"

    def __post_init__(self) -> None:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise SettingsError(f"--max-replicas {self.max_replicas} is below --min-replicas "
                                f"{self.min_replicas}")
        if self.proxy not in PROXY_LOCATIONS:
            raise SettingsError(f"--ray-proxy must be one of {', '.join(PROXY_LOCATIONS)}")


def ship(ref: str, settings: Settings) -> Shipment:
    """A local bundle (folder or archive) as a :class:`Shipment`: verified, archived."""
    from baton.bundle.archive import build_archive
    from baton.serving.opening import open_local

    path = Path(ref)
    if not path.exists():
        raise BatonError(f"no bundle at {ref} (a cluster serves local bundles; registry "
                         "refs need --registry without --ray for now)", code="BUNDLE_NOT_FOUND")
    bundle = open_local(path, settings)
    with tempfile.TemporaryDirectory() as tmp:
        archive = path
        if path.is_dir():
            archive = Path(tmp) / "bundle.baton"
            build_archive(path, archive)
            # What the replicas will receive, verified against the folder's digest first
            # (an archive given as is was verified when it was opened above).
            open_local(archive, settings, expected_digest=bundle.digest)
        return Shipment(bundle.name, bundle.version, bundle.digest, archive.read_bytes())


@dataclass(frozen=True)
class IngressAuth:
    """Where the ingress finds callers' tokens: a token file (at the same path on every
    node) and/or the registry the cluster follows (its URL, TLS options, cache seconds),
    and the stage it follows (the dashboard shows it and its registry)."""

    tokens: TokenFile | None = None
    registry: tuple[str, dict[str, Any], float] | None = None
    stage: str | None = None

    @property
    def on(self) -> bool:
        return self.tokens is not None or self.registry is not None


def application(shipments: list[Shipment], workers: dict[str, int | None],
                settings: Settings, options: ClusterOptions, auth: IngressAuth) -> Any:
    """The Ray Serve application: one deployment per model, one ingress."""
    from ray import serve

    from baton.cluster.ingress import Ingress

    models = {}
    for s in shipments:
        scaling: dict[str, Any] = {"num_replicas": options.min_replicas}
        if options.max_replicas is not None and options.max_replicas > options.min_replicas:
            scaling = {"autoscaling_config": {
                "min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing,
                "upscale_delay_s": options.upscale_delay,
                "downscale_delay_s": options.downscale_delay}}
        deployment = serve.deployment(
            name=f"model-{s.name}",
            ray_actor_options={"num_cpus": options.replica_cpus},
            health_check_period_s=2, health_check_timeout_s=30,
            graceful_shutdown_timeout_s=settings.drain_timeout,
            graceful_shutdown_wait_loop_s=0.5, max_ongoing_requests=64,
            logging_config=QUIET, **scaling,
        )(ModelReplica)
        models[s.name] = deployment.bind(s, settings, workers.get(s.name))
    ingress = serve.deployment(name="ingress", num_replicas=options.ingress_replicas,
                               ray_actor_options={"num_cpus": 0.1},
                               max_ongoing_requests=256, logging_config=QUIET)(Ingress)
    return ingress.bind(models, auth, settings.max_body_bytes, APP)


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` as a driver (a clear error when it is not there)."""
    try:
        import ray
    except ImportError:
        raise BatonError("Ray is not installed: pip install 'baton[ray]'",
                         code="RAY_MISSING") from None
    if ray.is_initialized():
        return
    _reachable(address)  # Ray itself would retry an unreachable head for minutes
    try:
        ray.init(address=address, namespace="baton", logging_level=logging.WARNING,
                 log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BatonError(f"cannot reach the Ray cluster at {address}: {exc}",
                         code="RAY_UNREACHABLE") from None


def _reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"--ray takes the head's HOST:PORT (e.g. 10.0.0.5:6379), "
                            f"not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout).close()
    except OSError as exc:
        raise BatonError(f"no Ray cluster at {address}: {exc.strerror or exc} (start one "
                         "with `ray start --head`, or give its head's HOST:PORT)",
                         code="RAY_UNREACHABLE") from None


def deploy(deployments: list[DeploymentSpec], settings: Settings, options: ClusterOptions,
           auth: IngressAuth | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Run (or update) the application with local bundles; wait until it serves."""
    connect(options.address)  # an unreachable cluster fails before any bundle is shipped
    shipments = [ship(d.bundle, settings) for d in deployments]
    workers = {s.name: d.workers for s, d in zip(shipments, deployments, strict=True)}
    names = [s.name for s in shipments]
    if len(set(names)) != len(names):
        raise SettingsError(f"one version per model on a cluster; given {', '.join(names)}")
    return roll_out(shipments, workers, settings, options, auth or IngressAuth(), timeout)


def roll_out(shipments: list[Shipment], workers: dict[str, int | None], settings: Settings,
             options: ClusterOptions, auth: IngressAuth,
             timeout: float = 600.0) -> dict[str, Any]:
    """Run the application with these shipments (Ray rolls the deployments that changed);
    wait until it serves."""
    from ray import serve

    from baton.cluster.board import start_board

    location = "EveryNode" if options.proxy == "every-node" else "HeadOnly"
    serve.start(http_options={"host": settings.host, "port": settings.port,
                              "location": location}, logging_config=QUIET)
    _same_listener(settings)
    start_board()
    serve.run(application(shipments, workers, settings, options, auth), name=APP,
              route_prefix="/", blocking=False)
    return wait_running(timeout)


def _same_listener(settings: Settings) -> None:
    """Ray Serve listens where its first start said, for the whole cluster: a driver that
    asks for another address would announce one nobody listens on."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    http = (client.get_serve_details() if client is not None else {}).get("http_options", {})
    where = (http.get("host"), http.get("port"))
    if where[1] is not None and where != (settings.host, settings.port):
        raise SettingsError(f"Ray Serve already listens on {where[0]}:{where[1]} on this "
                            f"cluster; give --host {where[0]} --port {where[1]} (or remove "
                            "its applications and shut Serve down first)")


def wait_running(timeout: float) -> dict[str, Any]:
    """Wait until the application runs (every deployment's replicas ready); its status."""
    from ray import serve

    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            return {n: dict(d.replica_states) for n, d in status.deployments.items()}
        if status is not None and status.status == "DEPLOY_FAILED":
            raise BatonError(f"the cluster could not deploy the models: {status.message}",
                             code="CLUSTER_DEPLOY_FAILED")
        time.sleep(0.5)
    message = status.message if status is not None else "no status"
    raise BatonError(f"the models were not running on the cluster after {timeout:.0f} s: "
                     f"{message}", code="CLUSTER_DEPLOY_FAILED")


def undeploy() -> None:
    """Remove the application; with nothing else on the cluster's Serve, Serve too (so the
    next driver may listen elsewhere)."""
    from ray import serve

    from baton.cluster.board import remove_board

    others = [a for a in serve.status().applications if a != APP]
    log.info("removing the application%s", "" if others else " and Ray Serve")
    if others:
        serve.delete(APP)
    else:
        serve.shutdown()  # type: ignore[no-untyped-call]
    log.info("removed")
    remove_board()


def run(deployments: list[DeploymentSpec], settings: Settings, options: ClusterOptions,
        auth: IngressAuth, announce: Callable[[dict[str, Any], float], None],
        registry: RegistryAccess | None = None, poll: float = 2.0) -> None:
    """``baton serve --ray``: deploy (local bundles, or what a registry's stage holds,
    followed every ``poll`` seconds), say where, hold until SIGTERM/Ctrl-C, then
    undeploy."""
    started = time.perf_counter()
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    following = None
    try:
        if registry is None:
            states = deploy(deployments, settings, options, auth)
        else:
            from baton.cluster.follow import ClusterFollower

            connect(options.address)

            def apply(wanted: dict[str, Shipment]) -> None:
                roll_out(list(wanted.values()), {}, settings, options, auth)

            following = ClusterFollower(registry.client, registry.gate, settings, apply)
            if not following.step():
                apply({})  # nothing in the stage yet: the ingress alone, ready
            states = wait_running(60)
        announce(states, time.perf_counter() - started)
        next_poll = time.monotonic() + poll
        while not stop:
            time.sleep(0.1)
            if following is not None and time.monotonic() >= next_poll:
                try:
                    following.step()
                except BatonError as exc:
                    log.warning("registry sync failed: %s", exc.message)
                next_poll = time.monotonic() + poll
    finally:
        if ray_connected():
            undeploy()


def ray_connected() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())
