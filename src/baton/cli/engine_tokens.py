"""``baton engine-tokens``: the local token file of engines without a registry.

``add`` prints the new token once and keeps only its SHA-256; ``list`` shows names, scopes
and states; ``revoke`` marks a token revoked. A running engine picks up each change within
a second (see baton.server.tokens).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from baton.cli.main import errors_to_exit, main
from baton.errors import NotFound, SettingsError
from baton.scopes import SCOPES

file_argument = click.argument("file", type=click.Path(dir_okay=False, path_type=Path))


@main.group("engine-tokens")
def engine_tokens() -> None:
    """Tokens for an engine's own token file (baton serve --tokens FILE)."""


@engine_tokens.command("add")
@file_argument
@click.option("--name", required=True, help="Who or what holds the token (unique).")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice(list(SCOPES)),
              help="What it may do (repeat for several): infer, feedback, read, admin.")
@click.option("--days", type=float, default=90.0, show_default=True,
              help="Days until it expires.")
@click.option("--never-expires", is_flag=True, help="A token that does not expire (a "
              "service's; revoke it when it is no longer needed).")
@errors_to_exit
def add(file: Path, name: str, scopes: tuple[str, ...], days: float,
        never_expires: bool) -> None:
    """Create a token in FILE (made, mode 0600, if missing) and print it once."""
    from baton.server.tokens import (
        TOKEN_NAME,
        TokenEntry,
        hash_token,
        locked,
        new_token,
        read_tokens,
        write_tokens,
    )

    if not TOKEN_NAME.fullmatch(name):
        raise SettingsError("--name must be 1-100 letters, digits, '.', '_', '@' or '-', "
                            f"starting with a letter or digit; got {name!r}",
                            code="INVALID_TOKEN_NAME", details={"field": "name"})
    if not never_expires and not 0 < days <= 36500:
        raise SettingsError(f"--days must be a number of days in 0..36500, got {days!r}",
                            code="INVALID_DAYS", details={"field": "days"})
    token = new_token()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires = None if never_expires else now + dt.timedelta(days=days)
    with locked(file):
        entries = read_tokens(file) if file.exists() else []
        if any(e.name.lower() == name.lower() for e in entries):
            raise SettingsError(f"{file} already has a token named {name!r} (names are "
                                "unique, whatever their case)", code="TOKEN_EXISTS",
                                details={"field": "name"})
        entry = TokenEntry(name, hash_token(token), frozenset(scopes), now, expires)
        write_tokens(file, [*entries, entry])
    until = "never expires" if expires is None else f"expires {expires.isoformat()}"
    click.echo(f"token {name} ({', '.join(sorted(scopes))}; {until}) added to {file}; "
               "it is shown only now:", err=True)
    click.echo(token)


@engine_tokens.command("list")
@file_argument
@errors_to_exit
def list_(file: Path) -> None:
    """The tokens in FILE: name, scopes, created, expires, state (never the tokens)."""
    from rich.console import Console
    from rich.table import Table

    from baton.server.tokens import read_tokens

    table = Table(title=str(file), title_justify="left")
    for col in ("name", "scopes", "created", "expires", "state"):
        table.add_column(col)
    for e in read_tokens(file):
        table.add_row(e.name, ", ".join(sorted(e.scopes)), e.created.isoformat(),
                      e.expires.isoformat() if e.expires else "never", e.state())
    Console(width=200).print(table)


@engine_tokens.command("revoke")
@file_argument
@click.argument("name")
@errors_to_exit
def revoke(file: Path, name: str) -> None:
    """Revoke the token NAME in FILE: engines refuse it within a second, no restart."""
    from dataclasses import replace

    from baton.server.tokens import locked, read_tokens, write_tokens

    with locked(file):
        entries = read_tokens(file)
        found = next((e for e in entries if e.name.lower() == name.lower()), None)
        if found is None:
            raise NotFound(f"{file} has no token named {name!r}", code="TOKEN_NOT_FOUND",
                           details={"field": "name"})
        if found.revoked:
            click.echo(f"token {found.name} was already revoked")
            return
        write_tokens(file, [replace(e, revoked=True) if e is found else e for e in entries])
    click.echo(f"token {found.name} revoked in {file}")
