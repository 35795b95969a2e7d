"""``baton import mlflow``: a model saved by another tool becomes a bundle (docs/import.md)."""

from __future__ import annotations

from pathlib import Path

import click

from baton.cli.main import _settings, errors_to_exit, main, with_env_options


@main.group(name="import")
def import_group() -> None:
    """Turn a model saved by another tool into a bundle."""


@import_group.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path, file_okay=False),
              required=True, help="The bundle folder to write (new, or empty).")
@click.option("--name", help="Bundle name.", show_default="DIRECTORY's name")
@click.option("--version", "version", default="0.1.0", show_default=True,
              help="Bundle version.")
@with_env_options
@errors_to_exit
def mlflow(directory: Path, output: Path, name: str | None, version: str,
           wheelhouse: Path | None, offline: bool | None) -> None:
    """Make a bundle of the MLflow model saved in DIRECTORY (the folder holding MLmodel).

    The contract comes from the signature, the samples from the input example with the
    outputs the model gives in its own environment (built here), and the requirements are
    locked to exact pins for the Python version MLflow recorded. MLflow is not needed here.
    """
    from baton.importers.mlflow import import_mlflow

    settings = _settings(wheelhouse=wheelhouse, offline=offline)
    result = import_mlflow(directory, output, settings, name=name, version=version)
    m = result.manifest
    click.echo(f"imported {directory} -> {result.path}/ ({m.name} {m.version})")
    click.echo(f"  flavor: {result.flavor}; runner {m.model.runner}, entrypoint "
               f"{m.model.entrypoint}, method {m.model.method}")
    click.echo(f"  inputs ({m.contract.kind}):")
    for d in result.decisions:
        click.echo(f"    {d.field}: {d.text}")
    click.echo(f"  outputs (from {result.outputs_from}):")
    for spec in m.contract.outputs:
        click.echo(f"    {spec.name}: {_describe(spec)}")
    click.echo(f"  environment: Python {m.environment.python}, {len(result.pins)} exact pins "
               f"({result.environment})")
    if result.samples:
        click.echo(f"  samples: {result.samples} rows of the input example, with the model's "
                   "answers as expected outputs")
    for note in result.notes:
        click.echo(f"  note: {note}")
    click.echo("next, check it:")
    click.echo(f"  baton check {result.path}")


def _describe(spec: object) -> str:
    to_dict = getattr(spec, "to_dict", None)
    d = dict(to_dict()) if callable(to_dict) else {}
    d.pop("name", None)
    kind = d.pop("type", None) or d.pop("datatype", "")
    extra = ", ".join(k if v is True else f"{k} {v}" for k, v in d.items())
    return f"{kind}{', ' + extra if extra else ''}"
