"""Registry verbs of the ``baton`` command: login, push, pull, list, show, promote, approve,
users and tokens (``baton registry``, to run one, is in :mod:`baton.cli.registry_service`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from baton.cli.main import _settings, errors_to_exit, main

registry_option = click.option("--registry", "registry_url", envvar="BATON_REGISTRY",
                               help="Registry URL.",
                               show_default="the one saved by 'baton login'")


def _client(url: str | None) -> Any:
    """A client with the saved login and the TLS settings (BATON_REGISTRY_CA,
    BATON_REGISTRY_CLIENT_CERT/_KEY) applied to every registry command."""
    from baton.profile import open_registry_client

    return open_registry_client(url, _settings())


def _print(data: Any, as_json: bool, fmt: Any) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else fmt(data))


def _line(b: dict[str, Any]) -> str:
    return f"{b['name']}@{b['version']:<12} {b['stage']:<10} {b['digest'][:19]}…  by {b['author']}"


@main.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@registry_option
@errors_to_exit
def push(bundle: Path, registry_url: str | None) -> None:
    """Push BUNDLE (a folder or a .baton archive) to the registry as a draft."""
    from baton.bundle.archive import build_archive

    client = _client(registry_url)
    with tempfile.TemporaryDirectory(prefix="baton-push-") as tmp:
        archive = build_archive(bundle, Path(tmp)).path if bundle.is_dir() else bundle
        info, created = client.push(archive)
    state = "pushed" if created else "already present (same digest)"
    click.echo(f"{info['name']}@{info['version']} {state}: {info['digest']} [{info['stage']}]")


@main.command()
@click.argument("ref")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="Folder to write NAME-VERSION.baton into.")
@registry_option
@errors_to_exit
def pull(ref: str, output: Path, registry_url: str | None) -> None:
    """Download REF (NAME@VERSION or NAME@sha256:...), verified against its digest."""
    from baton.bundle.archive import ArchiveLimits

    limits = ArchiveLimits.from_settings(_settings())
    path, digest = _client(registry_url).pull(ref, output, limits=limits)
    click.echo(f"{path}\n{digest}")


@main.command("list")
@click.option("--name", help="Only this model.")
@click.option("--stage", help="Only this stage.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@registry_option
@errors_to_exit
def list_cmd(name: str | None, stage: str | None, as_json: bool, registry_url: str | None) -> None:
    """List bundles in the registry."""
    rows = _client(registry_url).list(name, stage)
    _print(rows, as_json, lambda rs: "\n".join(map(_line, rs)) or "(no bundles)")


@main.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@registry_option
@errors_to_exit
def show(ref: str, as_json: bool, registry_url: str | None) -> None:
    """Show REF (NAME, NAME@VERSION or NAME@sha256:...): stage, approvals, check result."""
    client = _client(registry_url)
    info = client.show(ref)

    def fmt(b: dict[str, Any]) -> str:
        lines = [_line(b), f"  {b['description']}"]
        report = b.get("check_report")
        if report:
            verdict = "passed" if report.get("passed") else f"FAILED at {report['failed_stage']}"
            lines.append(f"  check: {verdict}")
        if b.get("report"):
            lines.append(f"  handoff report: {client.url}{b['report']['html']}")
        for a in b.get("approvals", []):
            lines.append(f"  {a['decision']}d by {a['user']} at {a['time']}: {a['reason']}")
        return "\n".join(lines)

    _print(info, as_json, fmt)


@main.command()
@click.argument("ref")
@click.option("--to", "stage", required=True,
              type=click.Choice(["validated", "staging", "production", "archived"]),
              help="The stage to move REF to.")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@registry_option
@errors_to_exit
def promote(ref: str, stage: str, reason: str, registry_url: str | None) -> None:
    """Move REF to the stage given by --to. '--to validated' makes the registry run
    'baton check' on it."""
    info = _client(registry_url).promote(ref, stage, reason)
    click.echo(_line(info))
    report = info.get("check_report")
    if stage == "validated" and report and not report.get("passed"):
        raise click.ClickException(f"check failed at stage {report.get('failed_stage')}: "
                                   f"{(report.get('error') or {}).get('message', '')}")


def _decide(decision: str) -> Any:
    @click.argument("ref")
    @click.option("--reason", required=True, help="Why (kept in the audit log).")
    @registry_option
    @errors_to_exit
    def command(ref: str, reason: str, registry_url: str | None) -> None:
        from baton.report.source import stored_report

        client = _client(registry_url)
        if decision == "approve":  # what the approver signs, before it is recorded; on
            handoff = stored_report(client, ref)  # standard error: the output stays the result
            click.echo(f"handoff report: {handoff.summary}\n  {handoff.link}" if handoff else
                       f"no handoff report for {ref} ('baton report {ref}' writes one)",
                       err=True)
        info = client.decide(ref, decision, reason)
        past = {"approve": "approved", "reject": "rejected"}[decision]
        click.echo(f"{past} {info['name']}@{info['version']} "
                   f"({sum(a['decision'] == 'approve' for a in info['approvals'])} approvals)")

    command.__doc__ = f"{decision.capitalize()} REF, with a reason (approvers only)."
    return command


main.command("approve")(_decide("approve"))
main.command("reject")(_decide("reject"))


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@registry_option
@errors_to_exit
def history(name: str, as_json: bool, registry_url: str | None) -> None:
    """Every audit event of model NAME: who, when, what, from and to, why."""
    events = _client(registry_url).history(name)

    def fmt(es: list[dict[str, Any]]) -> str:
        return "\n".join(f"{e['time']}  {e['actor']:<12} {e['action']:<9} {e['version']:<10} "
                         f"{e['from'] or '-':>10} -> {e['to'] or '-':<10} {e['reason']}"
                         for e in es)

    _print(events, as_json, fmt)


@main.group(invoke_without_command=True)
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="File to write the JSON Lines to.", show_default="stdout")
@registry_option
@click.pass_context
@errors_to_exit
def audit(ctx: click.Context, output: Path | None, registry_url: str | None) -> None:
    """Export the whole audit log as JSON Lines ('baton audit verify' checks its chain)."""
    if ctx.invoked_subcommand is not None:
        return
    text = _client(registry_url).audit_jsonl()
    if output:
        output.write_text(text)
    else:
        click.echo(text, nl=False)


@audit.command("verify")
@click.option("--registry-key", "pinned", envvar="BATON_REGISTRY_KEY", default="",
              help="The registry's public key (ed25519:BASE64 or a file).",
              show_default="the one 'baton login' saved")
@click.option("--local", is_flag=True,
              help="Read the registry's database directly (on the registry host).")
@click.option("--db", help="Database URL to read (implies --local).",
              show_default="BATON_REGISTRY_DB, else SQLite in the Baton home")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The registry's signing key (implies --local); its signed head "
                   "checkpoint is next to it.",
              show_default="$BATON_HOME/registry/signing.key")
@registry_option
@errors_to_exit
def audit_verify(pinned: str, local: bool, db: str | None, key_file: Path | None,
                 registry_url: str | None) -> None:
    """Walk the audit log's hash chain and signatures; name the first entry that was
    inserted, altered or removed (exit 9), or print the count and head (exit 0)."""
    if local or db or key_file:
        report, headed = _verify_local(db, key_file, pinned)
    else:
        report, headed = _verify_remote(registry_url, pinned)
    unsigned = f", {report.unsigned} unsigned from before signing" if report.unsigned else ""
    click.echo(f"audit log intact: {report.count} entries{unsigned}; head #{report.head_id} "
               f"{report.head_hash or '-'}")
    if not headed:
        click.echo("warning: no signed head checkpoint to compare with: removing the newest "
                   "entries cannot be detected", err=True)


def _verify_remote(registry_url: str | None, pinned: str) -> tuple[Any, bool]:
    from baton.errors import BatonError
    from baton.profile import registry_key
    from baton.registry.audit import verify_export
    from baton.trust import parse_public_key

    client = _client(registry_url)
    try:
        key = registry_key(client.url, pinned)
        if not key:
            raise BatonError(f"no registry key pinned for {client.url}: pass --registry-key "
                             "(from 'baton registry key' on the registry host) or log in "
                             "again with 'baton login'", code="REGISTRY_KEY_REQUIRED")
        report: tuple[Any, bool] = verify_export(client.audit(), parse_public_key(key))
        return report
    finally:
        client.close()


def _verify_local(db: str | None, key_file: Path | None, pinned: str) -> tuple[Any, bool]:
    from baton.registry.audit import checkpoint_path, verify_database
    from baton.registry.db import Database
    from baton.trust import load_signing_key, parse_public_key

    s = _settings(registry_db=db, registry_key_file=key_file)
    path = s.registry_signing_key
    key = parse_public_key(pinned) if pinned else load_signing_key(path).public
    head_file = checkpoint_path(path)
    database = Database(s.registry_url)
    try:
        with database.session() as session:
            return verify_database(session, key, head_file), head_file.exists()
    finally:
        database.dispose()


from baton.cli import identity as _identity_commands  # noqa: E402,F401  (registers verbs)
from baton.cli import registry_service as _registry_service  # noqa: E402,F401
