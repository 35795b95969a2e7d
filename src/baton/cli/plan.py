"""``baton plan``: the deployment that meets a target load, with its reasoning."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from baton.cli.main import _settings, errors_to_exit, main, with_env_options

if TYPE_CHECKING:
    from baton.plan import Plan


@main.command()
@click.argument("ref", metavar="BUNDLE")
@click.option("--rps", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Target requests per second, for the whole deployment.")
@click.option("--p99", "p99", required=True, metavar="MS",
              help="Target p99 latency in milliseconds ('50' or '50ms').")
@click.option("--rows", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows per request.")
@click.option("--check-report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The 'baton check' report of this bundle (its digest must match).",
              show_default="run the check now")
@click.option("--node-cpus", type=click.FloatRange(min=0, min_open=True),
              help="CPUs of a cluster node: a replica's CPU limit must fit.",
              show_default="no limit")
@click.option("--node-memory", type=click.IntRange(min=1), metavar="MiB",
              help="Memory of a cluster node in MiB: a replica's memory limit must fit.",
              show_default="no limit")
@click.option("--workers-max", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most worker processes per replica to consider.")
@click.option("--front-us-per-request", type=click.FloatRange(min=0),
              help="CPU microseconds the front process spends per request.",
              show_default="62, from bench/README.md")
@click.option("--front-us-per-row", type=click.FloatRange(min=0),
              help="CPU microseconds the front process spends per row.",
              show_default="1.5, from bench/README.md")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the manifest values (workers, replicas, resources) as JSON.")
@with_env_options
@errors_to_exit
def plan(ref: str, rps: float, p99: str, rows: int, check_report: Path | None,
         node_cpus: float | None, node_memory: int | None, workers_max: int,
         front_us_per_request: float | None, front_us_per_row: float | None, as_json: bool,
         output: Path | None, wheelhouse: Path | None, offline: bool | None) -> None:
    """Recommend workers, replicas, CPU and memory for BUNDLE (a folder or archive) to
    serve --rps requests/s within --p99, from its 'baton check' figures."""
    from baton.plan import (
        DEFAULT_FRONT,
        FrontCost,
        Load,
        Node,
        plan_input,
        recommend,
    )

    target = _milliseconds(p99)
    front = DEFAULT_FRONT
    if front_us_per_request is not None or front_us_per_row is not None:
        front = FrontCost(front_us_per_request if front_us_per_request is not None
                          else front.us_per_request,
                          front_us_per_row if front_us_per_row is not None
                          else front.us_per_row, "given on the command line")
    source = plan_input(ref, check_report, _settings(wheelhouse=wheelhouse, offline=offline))
    load = Load(rps, rows, target, source.max_batch_rows)
    result = recommend(source, load, front, Node(node_cpus, node_memory), workers_max)
    if output is not None:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(result.values(), indent=2) + "\n")
        os.replace(tmp, output)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    _render(result)
    if output is not None:
        click.echo(f"values written to {output}")


def _milliseconds(text: str) -> float:
    value = text.strip().lower().removesuffix("ms").strip()
    try:
        ms = float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number of milliseconds",
                                 param_hint="--p99") from None
    if ms <= 0:
        raise click.BadParameter("must be above 0", param_hint="--p99")
    return ms


def _render(result: Plan) -> None:
    p, s, ident = result.prediction, result.sizing, result.source.identity
    click.echo(f"{ident.name} {ident.version}: {result.load.rps:g} req/s of "
               f"{result.load.rows} row(s) at p99 <= {result.load.p99_ms:g} ms")
    click.echo(f"  workers per replica  {p.workers}")
    click.echo(f"  replicas             {p.replicas} (autoscaler {result.min_replicas}-"
               f"{result.max_replicas})")
    click.echo(f"  per replica          cpu {s.cpu_request_m}m (limit {s.cpu_limit_m}m), "
               f"memory {s.memory_request_mi}Mi (limit {s.memory_limit_mi}Mi)")
    click.echo(f"  capacity             {p.capacity_rps:,.0f} req/s")
    click.echo(f"  predicted at target  p50 {p.p50_ms:.1f} ms, p99 {p.p99_ms:.1f} ms; "
               f"batches of {p.batch_rows:.1f} rows ({p.batch_ms:.2f} ms)")
    click.echo(f"  utilisation          workers busy {p.worker_busy:.0%}, "
               f"{p.worker_utilisation:.0%} of capacity; front {p.front_utilisation:.0%}; "
               f"{p.cpu_cores:.2f} cores used")
    click.echo("reasoning:")
    for line in result.reasoning:
        click.echo(f"  - {line}")
    click.echo(f"deploy: {result.values()['command']}")
