"""``baton serve --ray``: the cluster options of ``baton serve`` and what they run
(:mod:`baton.cluster.serve`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from baton.errors import SettingsError

if TYPE_CHECKING:
    from baton.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

cluster_options = [
    click.option("--ray", "ray_address", metavar="ADDRESS",
                 help="Serve on this Ray cluster (HOST:PORT of its head): each bundle a Ray "
                 "Serve deployment, replicas spread over the nodes (docs/scale.md)."),
    click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
                 help="[--ray] Replicas per model (the autoscaler's floor with "
                 "--max-replicas)."),
    click.option("--max-replicas", type=click.IntRange(min=1),
                 help="[--ray] Autoscale each model on its queue up to this many replicas."),
    click.option("--target-ongoing", type=click.FloatRange(min=0, min_open=True),
                 default=2.0, show_default=True,
                 help="[--ray] Requests in progress per replica the autoscaler aims at."),
    click.option("--upscale-delay", type=click.FloatRange(min=0), default=10.0,
                 show_default=True, help="[--ray] Seconds the queue must stay above the "
                 "target before a replica is added."),
    click.option("--downscale-delay", type=click.FloatRange(min=0), default=60.0,
                 show_default=True, help="[--ray] Seconds it must stay below before one is "
                 "removed."),
    click.option("--ray-proxy", type=click.Choice(["every-node", "head-only"]),
                 default="every-node", show_default=True,
                 help="[--ray] Which nodes listen on --port (head-only: several nodes on one "
                 "machine)."),
]
#: What ``--ray`` cannot be combined with yet, and why.
_REFUSED = {"canary": "--canary", "shadow": "--shadow",
            "input_url": "--input", "labels_url": "--labels", "tls_cert": "--tls-cert",
            "metrics_port": "--metrics-port", "grpc_port": "--grpc-port"}


def with_cluster_options(fn: F) -> F:
    for opt in reversed(cluster_options):
        fn = opt(fn)
    return fn


def pop_cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    """The cluster options out of ``serve``'s keyword arguments (the rest are settings)."""
    return {k: options.pop(k) for k in ("ray_address", "replicas", "max_replicas",
                                         "target_ongoing", "upscale_delay",
                                         "downscale_delay", "ray_proxy")}


def serve_on_ray(bundles: tuple[str, ...], deployment: Path | None, cluster: dict[str, Any],
                 given: dict[str, Any], settings: Settings,
                 registry: tuple[str | None, str, float]) -> None:
    """Deploy BUNDLES (or, with a registry, what its stage holds) on the cluster and hold
    them there until SIGTERM or Ctrl-C."""
    from baton.cluster.serve import ClusterOptions, IngressAuth, run
    from baton.deployment import DeploymentSpec, load_deployments
    from baton.server.tokens import TokenFile

    refused = [flag for key, flag in _REFUSED.items() if given.get(key)]
    if refused:
        raise SettingsError(f"--ray does not take {', '.join(refused)} yet: serve those on "
                            "one machine (docs/scale.md#what-a-cluster-does-not-do-yet)")
    url, stage, poll = registry
    if url and (bundles or deployment is not None):
        raise SettingsError("--ray with --registry follows the registry's stage: give no "
                            "BUNDLES or --deployment (serving given registry versions on a "
                            "cluster is not there yet)")
    specs = [DeploymentSpec(ref) for ref in bundles]
    if deployment is not None:
        specs += load_deployments(deployment)
    if any(d.stream is not None or d.labels is not None for d in specs):
        raise SettingsError("--ray serves requests, not streams: bind streams on engines "
                            "that share the input (docs/streams.md#many-engines-on-one-input)")
    from baton.logs import configure as configure_logs

    configure_logs(settings.log_level, settings.log_format)
    options = ClusterOptions(cluster["ray_address"], cluster["replicas"],
                             cluster["max_replicas"], cluster["target_ongoing"],
                             cluster["upscale_delay"], cluster["downscale_delay"],
                             proxy=cluster["ray_proxy"])
    tokens = TokenFile(settings.tokens_file) if settings.tokens_file else None
    access = None
    auth = IngressAuth(tokens)
    if url:
        from baton.serving.gate import check_stage
        from baton.serving.opening import open_registry

        access = open_registry(url, check_stage(stage), settings)
        auth = IngressAuth(tokens, (access.client.url, access.client.tls,
                                    settings.auth_cache_seconds), stage)

    def announce(states: dict[str, Any], seconds: float) -> None:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        lines = [f"Baton is serving on the Ray cluster at {options.address}, "
                 f"http://{host}:{settings.port} ({seconds:.2f}s)"]
        lines += [f"  {name}: {', '.join(f'{n} {s}' for s, n in counts.items())}"
                  for name, counts in states.items()]
        lines.append(f"  Replicas and nodes: http://{host}:{settings.port}/v1/cluster")
        if auth.on:
            where = [f"{settings.tokens_file}"] if tokens is not None else []
            where += [f"the registry {url} (following {stage})"] if url else []
            lines.append(f"  Authentication: tokens from {' and '.join(where)}")
        click.echo("\n".join(lines), err=True)

    run(specs, settings, options, auth, announce, access, poll)
