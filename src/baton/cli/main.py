"""The ``baton`` command. Heavy imports happen inside commands, so ``baton --help`` is instant."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from baton import __version__
from baton.cli.cluster import with_cluster_options
from baton.errors import BatonError, BundleError

if TYPE_CHECKING:
    from baton.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

def _fail(err: BatonError) -> None:
    click.secho(f"error [{err.code}]: {err.message}", fg="red", err=True)
    for f in err.details.get("failures", []):
        click.echo(f"  - {f['requirement']}: {f['reason']}", err=True)
    for v in err.details.get("violations", [])[:10]:
        click.echo(f"  - record {v.get('record')}, field {v.get('field')!r}: expected "
                   f"{v.get('expected')}, got {v.get('got')!r}", err=True)
    sys.exit(err.exit_code)


def errors_to_exit(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BatonError as err:
            _fail(err)
    return wrapper  # type: ignore[return-value]


def _settings(**overrides: Any) -> Settings:
    from baton.settings import Settings

    settings = Settings.from_env(**overrides)
    if settings.stream_urls():  # the streams package knows the schemes: imported for them
        from baton.streams.base import check_settings

        check_settings(settings)
    return settings


env_options = [
    click.option("--wheelhouse", type=click.Path(path_type=Path, file_okay=False),
                 help="Install from this folder of wheels only (air-gapped)."),
    click.option("--offline", is_flag=True, default=None,
                 help="Never reach a package index: use uv's cache or --wheelhouse."),
]


def with_env_options(fn: F) -> F:
    for opt in reversed(env_options):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="baton")
def main() -> None:
    """Baton: package a model, check it in an isolated environment, serve it."""


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", help="Model name.", show_default="the folder's name")
@errors_to_exit
def init(directory: Path, name: str | None) -> None:
    """Scaffold a bundle with a custom Python model in DIRECTORY."""
    from baton.bundle.scaffold import scaffold

    path = scaffold(directory, name or directory.resolve().name)
    click.echo(f"created bundle {path}/ — edit model/predict.py and baton.toml, then run:")
    click.echo(f"  baton check {directory}")


@main.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="Folder (or .baton file) to write the archive to.")
@errors_to_exit
def build(bundle: Path, output: Path) -> None:
    """Write BUNDLE as a reproducible archive and print its content digest."""
    from baton.bundle.archive import build_archive

    built = build_archive(bundle, output)
    click.echo(f"built {built.manifest.name} {built.manifest.version} -> {built.path}")
    click.echo(built.digest)


@main.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--digest", help="Refuse the archive unless its digest is this one.")
@errors_to_exit
def extract(archive: Path, directory: Path, digest: str | None) -> None:
    """Verify ARCHIVE and extract it into DIRECTORY (refusing unsafe or altered content)."""
    from baton.bundle.archive import ArchiveLimits, extract_archive

    if directory.exists():
        raise BundleError(f"{directory} already exists", code="TARGET_EXISTS")
    limits = ArchiveLimits.from_settings(_settings())
    directory.parent.mkdir(parents=True, exist_ok=True)
    click.echo(extract_archive(archive, directory, digest, limits=limits))


@main.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--side", type=click.Choice(["inputs", "outputs"]), default="inputs",
              show_default=True, help="Which side of the contract to print.")
@errors_to_exit
def contract(bundle: Path, side: str) -> None:
    """Print BUNDLE's contract as JSON Schema."""
    from baton.bundle.archive import ArchiveLimits
    from baton.bundle.loader import open_bundle
    from baton.contract.jsonschema import contract_to_json_schema

    settings = _settings()
    b = open_bundle(bundle, settings.bundles_dir, limits=ArchiveLimits.from_settings(settings))
    click.echo(json.dumps(contract_to_json_schema(b.manifest.contract, side), indent=2))


@main.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--report", type=click.Path(path_type=Path), default=Path("check-report.json"),
              show_default=True, help="Where to write the JSON report.")
@click.option("--iterations", type=click.IntRange(min=1), default=200, show_default=True,
              help="Calls per latency measurement.")
@with_env_options
@errors_to_exit
def check(bundle: Path, report: Path, iterations: int, wheelhouse: Path | None,
          offline: bool | None) -> None:
    """Build BUNDLE's environment, load it, run its samples, measure it; exit 0 on a pass."""
    from baton.check import run_check
    from baton.cli.render import render_check

    result = run_check(bundle, _settings(wheelhouse=wheelhouse, offline=offline),
                       iterations=iterations)
    try:  # the report first: CI reads it whatever happens next
        result.write(report)
        unwritable = None
    except OSError as exc:
        unwritable = BatonError(f"cannot write the report to {report}: {exc.strerror}: "
                                f"{exc.filename}", code="REPORT_UNWRITABLE")
    render_check(result)
    if unwritable is not None:
        raise unwritable
    click.echo(f"report written to {report}")
    if not result.passed:
        if result.error:
            click.secho(f"error [{result.error['code']}]: {result.message}", fg="red",
                        err=True)
        sys.exit(result.exit_code)


@main.command()
@click.argument("bundles", nargs=-1)
@click.option("--host", help="Address to bind.", show_default="127.0.0.1")
@click.option("--port", type=int, help="Port to bind.", show_default="8000")
@click.option("--workers", type=int, help="Worker processes per model.",
              show_default="the bundle's, else 1 or 2 by measured memory")
@click.option("--timeout", type=float, help="Seconds a batch may take before its worker is "
              "killed and restarted.", show_default="the bundle's, else from its check, else 30")
@click.option("--max-body-bytes", type=int, help="Largest request body, in bytes.",
              show_default="8 MiB")
@click.option("--unknown-fields", type=click.Choice(["reject", "ignore"]),
              help="Override the contracts' policy for unknown input fields.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Least severe level of the engine's log lines.",
              show_default="info")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines as text, or one JSON object per line (for log pipelines).",
              show_default="text")
@click.option("--access-log/--no-access-log", default=None,
              help="One log line per HTTP request: method, path, status, duration, model, "
              "version, digest, request id.", show_default="off")
@click.option("--registry", "registry_url", envvar="BATON_REGISTRY",
              help="Serve from this registry: with no BUNDLES, "
              "every model in --stage, following promotions and rollbacks.")
@click.option("--stage", default="production", show_default=True,
              type=click.Choice(["staging", "production"]),
              help="The registry stage this engine serves (its policy).")
@click.option("--registry-key", help="The registry's public key (ed25519:BASE64, or a file "
              "holding it): serve only what it signed.",
              show_default="the one 'baton login' saved")
@click.option("--poll", type=float, default=2.0, show_default=True,
              help="Seconds between registry checks.")
@click.option("--canary", help="REF=PERCENT: send PERCENT of unversioned requests to REF "
              "(a bundle path, or NAME@VERSION in the registry).")
@click.option("--shadow", help="REF: mirror traffic to REF, compare, never return its output.")
@click.option("--input", "input_url", help="[streams] Read records from this URL "
              "(kafka://, redis[s]://, nats://, amqp[s]://, mqtt[s]://, file://; passwords "
              "in the URL or ?password_env=/?password_file=, see docs/streams.md).")
@click.option("--output", "output_url", help="[streams] Write scores to this URL.")
@click.option("--dead-letter", "dead_letter_url", help="[streams] Where records (and "
              "labels) that fail go, with their reason.")
@click.option("--group", help="[streams] Consumer group / durable name.",
              show_default="baton-MODEL")
@click.option("--max-batch", type=int, default=256, show_default=True,
              help="[streams] Records per micro-batch into the model.")
@click.option("--deployment", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A deployment file: bundles with their workers and stream bindings.")
@click.option("--labels", "labels_url", help="[streams] Read true values {\"id\", "
              "\"label\"} from this stream URL and join them to logged predictions (needs "
              "--dead-letter).")
@click.option("--tokens", "tokens_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Local token file: callers need one of its tokens "
              "(see 'baton engine-tokens add').")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The certificate's private key (PEM).")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Require client certificates signed by this CA (PEM).")
@click.option("--metrics-port", type=int, help="Also serve /metrics, without authentication, "
              "on this port (for Prometheus).")
@click.option("--grpc-port", type=int, help="Also serve the Open Inference Protocol over "
              "gRPC on this port (same host, TLS and tokens; needs baton[grpc]).")
@with_cluster_options
@with_env_options
@errors_to_exit
def serve(bundles: tuple[str, ...], registry_url: str | None, stage: str, poll: float,
          canary: str | None, shadow: str | None, input_url: str | None,
          output_url: str | None, dead_letter_url: str | None, group: str | None,
          max_batch: int, deployment: Path | None, labels_url: str | None,
          **options: Any) -> None:
    """Serve BUNDLES (folders, archives, or registry refs), each in its own environment."""
    from baton.cli.cluster import pop_cluster_options, serve_on_ray
    from baton.cli.serve import engine_spec, run_server

    if not bundles and not registry_url and deployment is None:
        raise click.UsageError("give one or more BUNDLES, --deployment FILE, or --registry URL")
    cluster = pop_cluster_options(options)
    if cluster["ray_address"]:
        given = {"registry_url": registry_url, "canary": canary, "shadow": shadow,
                 "input_url": input_url, "labels_url": labels_url, **options}
        serve_on_ray(bundles, deployment, cluster, given, _settings(**options),
                     (registry_url, stage, poll))
        return
    settings = _settings(**options)
    spec = engine_spec(bundles, registry_url, stage, poll, canary, shadow, input_url,
                       output_url, dead_letter_url, group, max_batch, deployment, labels_url)
    run_server(spec, settings)


from baton.cli import deploy as _deploy_commands  # noqa: E402,F401
from baton.cli import engine_tokens as _engine_token_commands  # noqa: E402,F401
from baton.cli import image as _image_command  # noqa: E402,F401
from baton.cli import importer as _import_commands  # noqa: E402,F401
from baton.cli import plan as _plan_command  # noqa: E402,F401
from baton.cli import registry as _registry_commands  # noqa: E402,F401  (registers verbs)
from baton.cli import report as _report_command  # noqa: E402,F401
from baton.cli import score as _score_command  # noqa: E402,F401
from baton.cli import status as _status_commands  # noqa: E402,F401
from baton.cli import streams as _stream_commands  # noqa: E402,F401
