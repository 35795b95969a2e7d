"""``baton deploy kubernetes``: write manifests sized from the check (see docs/kubernetes.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from baton.cli.main import _settings, errors_to_exit, main, with_env_options


@main.group()
def deploy() -> None:
    """Write deployment manifests for an orchestrator."""


@deploy.command()
@click.argument("ref", metavar="BUNDLE|IMAGE")
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False),
              default=Path("k8s"), show_default=True,
              help="Folder for the manifests (one YAML file per object, kustomization.yaml).")
@click.option("--check-report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The 'baton check' report of this bundle (its digest must match).",
              show_default="BUNDLE: run the check now; IMAGE: required")
@click.option("--image", help="The image reference the cluster pulls.",
              show_default="IMAGE, or localhost/baton/NAME:VERSION for a BUNDLE")
@click.option("--name", help="Name of the Kubernetes objects.",
              show_default="the bundle's name; baton-STAGE with --registry")
@click.option("--namespace", help="Namespace written into every object.",
              show_default="none: kubectl's current one")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes per pod (resources are sized for them).")
@click.option("--worker-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Numeric threads per worker (BATON_WORKER_THREADS).")
@click.option("--min-replicas", type=click.IntRange(min=1), default=2, show_default=True,
              help="Fewest pods (the autoscaler's floor; the disruption budget keeps all "
              "but one).")
@click.option("--max-replicas", type=click.IntRange(min=1), default=6, show_default=True,
              help="Most pods the autoscaler starts.")
@click.option("--registry", "registry_url", help="Follow this registry's --stage instead "
              "of serving the image's bundle (token and key from a Secret).")
@click.option("--stage", type=click.Choice(["staging", "production"]), default="production",
              show_default=True, help="The stage a registry-following engine serves.")
@click.option("--secret", help="The Secret the pod reads: key tokens.toml (the engine's "
              "token file), or token and registry-key with --registry.",
              show_default="NAME-tokens, or NAME-registry with --registry")
@click.option("--service-monitor", is_flag=True,
              help="Also write a Prometheus Operator ServiceMonitor.")
@click.option("--kserve", is_flag=True, help="Also write a KServe ServingRuntime and "
              "InferenceService (V2 protocol) under OUTPUT/kserve/.")
@with_env_options
@errors_to_exit
def kubernetes(ref: str, output: Path, check_report: Path | None, registry_url: str | None,
               wheelhouse: Path | None, offline: bool | None, **options: Any) -> None:
    """Write Kubernetes manifests for BUNDLE (a folder or archive) or IMAGE (a local image
    that 'baton image' built): Deployment, Service, autoscaler, disruption budget, settings."""
    from baton.deploy import DeployOptions, kubernetes_spec, write_manifests

    chosen = {k: v for k, v in options.items() if v is not None}
    opts = DeployOptions(check_report=check_report, registry=registry_url or "", **chosen)
    spec = kubernetes_spec(ref, opts, _settings(wheelhouse=wheelhouse, offline=offline))
    written = write_manifests(spec, output)
    s = spec.sizing
    click.echo(f"{spec.identity.name} {spec.identity.version} -> {spec.image}")
    click.echo(spec.identity.digest)
    click.echo(f"  startup probe {s.startup_seconds}s, requests cpu {s.cpu_request_m}m memory "
               f"{s.memory_request_mi}Mi, limits cpu {s.cpu_limit_m}m memory "
               f"{s.memory_limit_mi}Mi")
    for path in written:
        click.echo(f"  wrote {path}")
    click.echo(f"Secret to create: {spec.secret_name} "
               f"({'keys token, registry-key' if spec.options.registry else 'key tokens.toml'})")
    click.echo(f"apply with: kubectl apply -k {output}")
