"""``baton score``: score a file with a bundle, in chunks, through the model's workers."""

from __future__ import annotations

import importlib.abc
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import click

from baton.cli.main import _settings, errors_to_exit, main, with_env_options
from baton.errors import BatonError

if TYPE_CHECKING:  # imported inside the command: `baton --help` stays instant
    from baton.bundle.loader import Bundle
    from baton.cluster.score import ClusterModel, RayOptions
    from baton.scoring.job import Progress, ScoreJob, ScoreSpec, ScoreSummary, ScoringModel
    from baton.serving.service import ModelService
    from baton.settings import Settings

FORMAT_CHOICES = ("csv", "jsonl", "parquet")


@main.command()
@click.argument("bundle")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="File to score: .csv, .jsonl or .parquet.")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Scores: the id column, then the model's outputs (.csv, .jsonl, .parquet).")
@click.option("--dead-letter", "dead_letter", type=click.Path(path_type=Path),
              help="Rows that fail, with their reason (JSON Lines).",
              show_default="OUTPUT's name with .dead-letter.jsonl")
@click.option("--id-column", help="Input column copied to the output so scores join back.",
              show_default="a 0-based row number column 'row'")
@click.option("--chunk-rows", type=click.IntRange(min=1),
              help="Rows read, checked and sent to a worker at a time.",
              show_default="about 4 MiB of input values, e.g. 26,214 rows of 20 fields")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes; one chunk in flight each.",
              show_default="the bundle's")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES),
              help="Input format; the output's comes from its extension, else it is the "
              "input's.", show_default="from its extension")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds a worker may spend on one chunk.",
              show_default="the bundle's batch timeout scaled to the chunk size")
@click.option("--registry", "registry_url", help="Take BUNDLE as NAME@VERSION from this "
              "registry (staging or production only).")
@click.option("--report", type=click.Path(path_type=Path),
              help="Write the summary as JSON here.")
@click.option("--null-values", metavar="LIST",
              help="Comma-separated cell texts that mean null (CSV: unquoted cells only; "
              "an empty cell always means null, a quoted \"\" is the empty string; '' for "
              "none besides the empty cell).",
              show_default="pandas' read_csv ones: NA, N/A, NULL, null, NaN, nan, None, #N/A, "
              "<NA>, ...")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Score on the Ray cluster at ADDRESS (its head's HOST:PORT): this process "
              "reads, checks and writes as without it; actors on the nodes run the model, "
              "each with --workers worker processes (docs/scale.md).")
@click.option("--ray-actors", type=click.IntRange(min=1),
              help="With --ray: actors running the model, spread round the nodes.",
              show_default="one per node with CPUs")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@with_env_options
@errors_to_exit
def score(bundle: str, input_path: Path, output_path: Path, dead_letter: Path | None,
          id_column: str | None, chunk_rows: int | None, workers: int | None, fmt: str | None,
          timeout: float | None, registry_url: str | None, report: Path | None,
          null_values: str | None, ray_address: str | None, ray_actors: int | None,
          quiet: bool, wheelhouse: Path | None, offline: bool | None) -> None:
    """Score the rows of a file with BUNDLE (a folder, an archive or, with --registry,
    NAME@VERSION). Rows that fail go to the dead-letter file and the job goes on; it exits 0
    once every row is either scored or dead-lettered."""
    started = time.perf_counter()
    from baton.cluster.score import RayOptions
    from baton.errors import SettingsError
    from baton.scoring.base import file_format
    from baton.scoring.columns import NULL_TOKENS
    from baton.scoring.job import ScoreSpec

    cluster = None if ray_address is None else RayOptions(ray_address, ray_actors)
    if cluster is None and ray_actors is not None:
        raise SettingsError("--ray-actors needs --ray ADDRESS")
    if cluster is not None and registry_url is not None:
        raise SettingsError("--registry and --ray do not go together yet: `baton pull "
                            "NAME@VERSION` first, then score the archive it writes with --ray")

    in_fmt = file_format(input_path, fmt)
    dead_path = dead_letter or output_path.with_name(
        output_path.name.removesuffix(output_path.suffix) + ".dead-letter.jsonl")
    _distinct(input_path, output_path, dead_path)
    nulls = NULL_TOKENS if null_values is None else tuple(v for v in null_values.split(",") if v)
    spec = ScoreSpec(input_path, output_path, dead_path, in_fmt,
                     file_format(output_path, default=in_fmt), id_column, chunk_rows, timeout,
                     nulls)
    settings: Settings = _settings(workers=workers, wheelhouse=wheelhouse, offline=offline)
    _quiet_logs(quiet)
    _lean_process()
    svc: ScoringModel
    model: ClusterModel | None = None
    if cluster is None:
        svc, job = _prepare(bundle, registry_url, settings, spec, quiet)
    else:
        model, job = _prepare_cluster(bundle, settings, spec, cluster, quiet)
        svc = model
    try:
        summary = _run(job, svc, started, quiet)
    except KeyboardInterrupt:
        raise click.Abort() from None
    where = None if model is None else _cluster_summary(summary, model)
    body = summary.to_dict() if where is None else {**summary.to_dict(), "cluster": where}
    if report is not None:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(body, indent=2) + "\n")
        except OSError as exc:
            raise BatonError(f"scored, but cannot write the report {report}: {exc}",
                             code="REPORT_NOT_WRITTEN") from None
    if not quiet:
        _print_summary(summary)
        if where is not None:
            _print_cluster(where)


def _distinct(*paths: Path) -> None:
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise BatonError("--input, --output and --dead-letter must be three different files",
                         code="INVALID_SETTING")


def _quiet_logs(quiet: bool) -> None:
    # A model's exception on a row is a dead letter, not a log line; worker crashes and
    # restarts stay visible unless --quiet.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("baton.worker").setLevel(logging.ERROR)
    logging.getLogger("baton").setLevel(logging.ERROR if quiet else logging.WARNING)


def _lean_process() -> None:
    # This process never handles pandas objects, but Arrow imports pandas on its first
    # array built from Python values, only to recognise them (measured: 55 MB and 0.3 s).
    # Arrow runs without pandas when it is not installed; make it so here. Models still
    # have pandas in their own worker processes.
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    # jemalloc hands freed chunks back sooner than Arrow's default (mimalloc): measured
    # 35 MB less peak memory for the same job, at the same speed.
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):  # a build without it
        pass


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """Imports of pandas fail in this process, as if it were not installed."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("baton score's own process runs without pandas",
                                      name=name)


def _prepare(ref: str, registry_url: str | None, settings: Settings, spec: ScoreSpec,
             quiet: bool) -> tuple[ModelService, ScoreJob]:
    """The model's service (not started) and the opened job: bad input fails before workers."""
    from baton.scoring.job import ScoreJob
    from baton.serving.opening import env_note, local_service, open_local, open_service

    if Path(ref).exists():
        # The job opens its input first: a bad file fails before an environment is built.
        bundle = open_local(ref, settings)
        job = ScoreJob(spec, bundle.manifest.contract)
        job.open(_identity(bundle))
        try:
            svc = local_service(bundle, settings)
        except BaseException:
            job.close(publish=False)
            raise
    else:
        svc = open_service(ref, settings, registry=registry_url)
        job = ScoreJob(spec, svc.contract)
        job.open(_identity(svc.bundle))
    if not quiet:
        click.echo(f"{svc.name} {svc.version} {svc.bundle.digest[:19]}…  environment "
                   f"{svc.env.key[:12]} ({env_note(svc.env)}), {svc.pool.size} worker(s)",
                   err=True)
    return svc, job


def _prepare_cluster(ref: str, settings: Settings, spec: ScoreSpec, options: RayOptions,
                     quiet: bool) -> tuple[ClusterModel, ScoreJob]:
    """The cluster's actors (not started) and the opened job: the input is opened and the
    bundle verified before the cluster is reached."""
    from baton.cluster.score import cluster_model
    from baton.scoring.job import ScoreJob
    from baton.serving.opening import open_local

    bundle = open_local(ref, settings)
    job = ScoreJob(spec, bundle.manifest.contract)
    job.open(_identity(bundle))
    try:
        model = cluster_model(ref, bundle, settings, options)
    except BaseException:
        job.close(publish=False)
        raise
    if not quiet:
        click.echo(f"{bundle.name} {bundle.version} {bundle.digest[:19]}…  on the Ray cluster "
                   f"at {options.address}: starting the actors", err=True)
    return model, job


def _cluster_summary(s: ScoreSummary, model: ClusterModel) -> dict[str, object]:
    """Where the job ran: the actors, their nodes and rows; memory of the whole job."""
    actors = model.cluster.describe()
    s.workers = model.cluster.workers_total  # the job's window, pool.size, holds more
    actor_mb = sum(a["peak_rss_mb"].get("actor", 0.0) for a in actors)
    worker_mb = sum(a["peak_rss_mb"].get("workers", 0.0) for a in actors)
    s.peak_rss_mb.update(actors=round(actor_mb, 1), workers=round(worker_mb, 1),
                         total=round(s.peak_rss_mb.get("baton", 0.0) + actor_mb + worker_mb, 1))
    return {"address": model.cluster.options.address, "nodes": len({a["node"] for a in actors}),
            "actors": actors}


def _print_cluster(c: dict[str, object]) -> None:
    actors = c["actors"]
    assert isinstance(actors, list)
    shares = ", ".join(f"{a['host']}/{str(a['node'])[:8]} {a['rows']:,} rows "
                       f"({a['workers']} worker(s), environment {a['env']})" for a in actors)
    click.echo(f"on {c['nodes']} node(s), {len(actors)} actor(s): {shares}")


def _identity(bundle: Bundle) -> dict[str, str]:
    return {"name": bundle.name, "version": bundle.version, "digest": bundle.digest}


def _run(job: ScoreJob, svc: ScoringModel, started: float, quiet: bool) -> ScoreSummary:
    import asyncio

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    with runner:
        if quiet:
            return runner.run(job.run(svc, started))
        with _ProgressBar() as bar:
            bar.update(job.progress())  # the input's size, before the first chunk
            return runner.run(job.run(svc, started, bar.update))


class _ProgressBar:
    """Rows, rows/s and an ETA from the share of the input's bytes read."""

    def __enter__(self) -> _ProgressBar:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("scoring"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rows]:>12,} rows"),
            TextColumn("{task.fields[rate]:>9,.0f} rows/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False)
        self.progress.start()
        self.task = self.progress.add_task("score", total=None, rows=0, rate=0.0)
        return self

    def update(self, p: Progress) -> None:
        rate = p.rows / p.seconds if p.seconds > 0 else 0.0
        self.progress.update(self.task, total=p.total_bytes or None, completed=p.bytes_done,
                             rows=p.rows, rate=rate)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _print_summary(s: ScoreSummary) -> None:
    click.echo(f"scored {s.scored:,} of {s.rows_in:,} rows in {s.seconds:.2f}s "
               f"({s.rows_per_s:,.0f} rows/s; {s.steady_rows_per_s:,.0f} rows/s after "
               f"{s.startup_seconds:.2f}s of start-up) -> {s.output}")
    if s.dead_lettered:
        stages = ", ".join(f"{k}: {v:,}" for k, v in sorted(s.dead_by_stage.items()))
        click.echo(f"dead-lettered {s.dead_lettered:,} rows ({stages}) -> {s.dead_letter}")
    else:
        click.echo("dead-lettered 0 rows")
    m = s.peak_rss_mb
    actors = f"actors {m['actors']:,.0f} + " if "actors" in m else ""  # --ray
    click.echo(f"peak memory {m.get('total', 0):,.0f} MiB (baton {m.get('baton', 0):,.0f} + "
               f"{actors}{s.workers} worker(s) {m.get('workers', 0):,.0f})")
