"""``baton registry``: run the registry service (serve, key, gc, bootstrap-admin), with its
settings read like every other command's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from baton.cli.main import _settings, errors_to_exit, main


@main.group()
def registry() -> None:
    """Run the registry service."""


def _open_registry(db: str | None, storage: Path | None, approvals: int | None,
                   **settings: Any) -> Any:
    from baton.bundle.archive import ArchiveLimits
    from baton.registry.app import subprocess_check_runner
    from baton.registry.audit import checkpoint_path
    from baton.registry.blobs import BlobStore
    from baton.registry.db import Database
    from baton.registry.service import Registry

    # The registry listens on 8700 unless an option or BATON_PORT says otherwise.
    s = _settings(defaults={"port": 8700}, registry_db=db, registry_storage=storage,
                  approvals=approvals, **settings)
    key = _signing_key(s.registry_signing_key)
    database = Database(s.registry_url)
    database.migrate()
    blobs = BlobStore(s.registry_blobs, ArchiveLimits.from_settings(s))
    return Registry(database, blobs, key, approvals_required=s.approvals,
                    check_runner=subprocess_check_runner(
                        s.home, isolation=s.validation_isolation),
                    token_max_days=s.token_max_days,
                    head_file=checkpoint_path(s.registry_signing_key)), s


def _signing_key(path: Path) -> Any:
    """The registry's signing key, created (and announced) on first start."""
    from baton.trust import load_or_create_signing_key

    key, created = load_or_create_signing_key(path)
    if created:
        click.echo(f"created the registry's signing key {path}: public key "
                   f"{key.public.text} (key id {key.public.key_id}); engines pin it with "
                   "--registry-key", err=True)
    return key


db_option = click.option("--db", help="Database URL (production: "
                         "postgresql+psycopg://...).", show_default="SQLite in the Baton home")
storage_option = click.option("--storage", type=click.Path(path_type=Path),
                              help="Content folder.", show_default="in the Baton home")
key_file_option = click.option(
    "--key-file", type=click.Path(dir_okay=False, path_type=Path),
    help="The registry's signing key (created on first start). Keep it out of the database's "
         "reach.", show_default="$BATON_HOME/registry/signing.key")


@registry.command("serve")
@db_option
@storage_option
@key_file_option
@click.option("--approvals", type=int, help="Approvals production needs.", show_default="1")
@click.option("--host", help="Address to bind.", show_default="127.0.0.1")
@click.option("--port", type=int, help="Port to bind.", show_default="8700")
@click.option("--token-max-days", type=float,
              help="Longest token a user may ask for, in days; admins' service tokens "
                   "excepted.", show_default="90")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="Serve HTTPS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="The private key of --tls-cert (PEM).")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="Require client certificates signed by this authority (PEM).")
@errors_to_exit
def registry_serve(db: str | None, storage: Path | None, key_file: Path | None,
                   approvals: int | None, host: str | None, port: int | None,
                   token_max_days: float | None,
                   tls_cert: Path | None, tls_key: Path | None,
                   tls_client_ca: Path | None) -> None:
    """Serve the registry API (migrating the database first)."""

    import uvicorn

    from baton.registry.app import create_app

    reg, s = _open_registry(db, storage, approvals, host=host, port=port,
                            token_max_days=token_max_days, tls_cert=tls_cert, tls_key=tls_key,
                            tls_client_ca=tls_client_ca, registry_key_file=key_file)
    tls = _uvicorn_tls(s)
    from baton.logs import configure as configure_logs

    configure_logs(s.log_level, s.log_format)
    scheme = "https" if tls else "http"
    clients = ", client certificates required" if s.tls_client_ca else ""
    click.echo(f"Baton registry at {scheme}://{s.host}:{s.port} (db "
               f"{s.registry_url.split('@')[-1]}, content {s.registry_blobs}, {s.approvals} "
               f"approval(s) for production, tokens up to {s.token_max_days:g} days{clients})",
               err=True)
    uvicorn.run(create_app(reg), host=s.host, port=s.port, log_level=s.log_level,
                access_log=False, **tls)


def _uvicorn_tls(s: Any) -> dict[str, Any]:
    """uvicorn's ssl options, after loading them once here so that a wrong file is a clear
    INVALID_SETTING instead of a traceback from inside uvicorn."""
    import ssl
    from functools import partial

    from baton.errors import SettingsError

    if s.tls_cert is None:
        return {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    loads = [("tls_cert", partial(context.load_cert_chain, s.tls_cert, s.tls_key))]
    if s.tls_client_ca:
        loads.append(("tls_client_ca", partial(context.load_verify_locations, s.tls_client_ca)))
    for field, load in loads:
        try:
            load()
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"cannot use {field} ({exc}): give PEM files this process "
                                "can read", details={"field": field}) from None
    out: dict[str, Any] = {"ssl_certfile": str(s.tls_cert), "ssl_keyfile": str(s.tls_key)}
    if s.tls_client_ca:
        out.update(ssl_ca_certs=str(s.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return out


@registry.command("key")
@key_file_option
@errors_to_exit
def registry_key_cmd(key_file: Path | None) -> None:
    """Print the registry's public key (ed25519:BASE64) and its key id, for engines to pin."""
    from baton.trust import load_signing_key

    path = _settings(registry_key_file=key_file).registry_signing_key
    public = load_signing_key(path).public
    click.echo(f"{public.text}\nkey id {public.key_id}")


@registry.command("gc")
@db_option
@storage_option
@key_file_option
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@errors_to_exit
def registry_gc(db: str | None, storage: Path | None, key_file: Path | None,
                dry_run: bool) -> None:
    """Remove archives no version references (refused or interrupted pushes) and stale
    temporary uploads from the content folder."""
    reg, _ = _open_registry(db, storage, None, registry_key_file=key_file)
    try:
        removed = reg.collect_garbage(dry_run=dry_run)
    finally:
        reg.db.dispose()
    verb = "would remove" if dry_run else "removed"
    for path in removed:
        click.echo(f"{verb} {path}")
    click.echo(f"{verb} {len(removed)} file(s)")


@registry.command("bootstrap-admin")
@click.argument("name")
@db_option
@storage_option
@key_file_option
@click.option("--days", type=float, help="Validity of the token, in days (at most the token "
              "maximum).", show_default="the token maximum, 90")
@errors_to_exit
def registry_bootstrap(name: str, db: str | None, storage: Path | None, key_file: Path | None,
                       days: float | None) -> None:
    """Create admin NAME directly in the database and print a token (first start)."""
    reg, _ = _open_registry(db, storage, None, registry_key_file=key_file)
    try:
        click.echo(reg.bootstrap_admin(name, ... if days is None else days))
    finally:
        reg.db.dispose()
