"""``baton report``: the handoff report of a bundle or of a registry version."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from baton.cli.main import _settings, errors_to_exit, main, with_env_options


@main.command()
@click.argument("ref")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("handoff-report"), show_default=True,
              help="Folder to write report.json and report.html into.")
@click.option("--check-report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A 'baton check' report of the same bundle, instead of running the check.",
              show_default="the registry's check for NAME@VERSION, else run it now")
@click.option("--check-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the check it runs, as 'baton check --report' would (the model "
                   "loads once for both).")
@click.option("--seconds", "cell_seconds", type=click.FloatRange(0.05, 60.0), default=0.4,
              show_default=True, help="How long each throughput cell runs (9 cells).")
@click.option("--registry", "registry_url", envvar="BATON_REGISTRY",
              help="Registry URL, for NAME@VERSION.",
              show_default="the one saved by 'baton login'")
@with_env_options
@errors_to_exit
def report(ref: str, output: Path, check_report: Path | None, check_out: Path | None,
           cell_seconds: float, registry_url: str | None, **options: Any) -> None:
    """Write the handoff report of REF (a bundle folder, an archive, or NAME@VERSION in the
    registry): one self-contained HTML page and its JSON, for the approver. A bundle whose
    check fails still gets its report (without measurements); the exit status is then the
    check's."""
    from baton.report.build import build_report, write_report
    from baton.report.sections import load_check_report

    settings = _settings(**options)
    given = load_check_report(check_report) if check_report else None
    if Path(ref).exists():
        result = build_report(ref, settings, check_report=given, cell_seconds=cell_seconds,
                              check_out=check_out)
    else:
        result = _from_registry(ref, settings, given, cell_seconds, registry_url, check_out)
    written = write_report(result, output)
    click.echo(result["summary"])
    click.echo(f"report written to {written.html} and {written.json}")
    check = result["check"]
    if not check.get("passed"):  # the page says why; the exit status tells a script
        error = check.get("error") or {}
        click.secho(f"error [{error.get('code', 'CHECK_FAILED')}]: the check failed at "
                    f"{check.get('failed_stage')}", fg="red", err=True)
        sys.exit(int(check.get("exit_code") or 1))


def _from_registry(ref: str, settings: Any, given: dict[str, Any] | None, cell_seconds: float,
                   registry_url: str | None, check_out: Path | None) -> dict[str, Any]:
    from baton.bundle.archive import ArchiveLimits
    from baton.errors import BatonError
    from baton.profile import open_registry_client
    from baton.report.build import build_report
    from baton.report.source import pull_version

    if "@" not in ref:
        raise BatonError(f"no bundle at {ref}: give a folder, an archive, or NAME@VERSION "
                         "from the registry", code="BUNDLE_NOT_FOUND", details={"ref": ref})
    client = open_registry_client(registry_url, settings)
    try:
        with tempfile.TemporaryDirectory(prefix="baton-report-") as tmp:
            version = pull_version(client, ref, Path(tmp), ArchiveLimits.from_settings(settings))
            return build_report(version.archive, settings, source=f"{client.url} {ref}",
                                check_report=given or version.check_report,
                                cell_seconds=cell_seconds, registry=version.record,
                                check_out=check_out)
    finally:
        client.close()
