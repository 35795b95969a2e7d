"""Who uses the registry: ``baton login``, ``baton users`` and ``baton tokens`` (issue, list
and revoke API tokens; ``baton users token`` is the same command as ``baton tokens
create``)."""

from __future__ import annotations

import json
from typing import Any

import click

from baton.cli.main import _settings, errors_to_exit, main
from baton.cli.registry import _client, registry_option

SCOPES = ("infer", "feedback", "read", "admin")  # baton.scopes.SCOPES, without importing it


@main.command()
@click.argument("url")
@click.option("--token", required=True, envvar="BATON_TOKEN", help="Your API token.")
@click.option("--registry-key", "expected_key", default="",
              help="The registry public key you were given (ed25519:BASE64 or a file): "
                   "refuse to log in if the registry shows another.")
@errors_to_exit
def login(url: str, token: str, expected_key: str) -> None:
    """Check TOKEN against the registry at URL, fetch its public key, save all three."""
    from baton.errors import UntrustedDecision
    from baton.profile import save_login
    from baton.registry.client import RegistryClient
    from baton.trust import parse_public_key

    s = _settings()
    # Settings refuse a certificate without its key, and a key without its certificate.
    cert, cert_key = s.registry_client_cert, s.registry_client_key
    client = RegistryClient(url, token, ca=s.registry_ca,
                            cert=(cert, cert_key) if cert and cert_key else None)
    me = client.whoami()
    key = client.public_key()
    if expected_key and parse_public_key(expected_key) != key:
        raise UntrustedDecision(
            f"the registry at {url} signs with key {key.key_id}, not the "
            f"{parse_public_key(expected_key).key_id} you gave with --registry-key: nothing "
            "was saved", code="REGISTRY_KEY_MISMATCH",
            details={"expected": parse_public_key(expected_key).key_id, "shown": key.key_id})
    path = save_login(url, token, key.text)
    kind = " (service token)" if (me.get("token") or {}).get("service") else ""
    click.echo(f"logged in to {url} as {me['name']} ({me['role']}){kind}; saved to {path}\n"
               f"registry key {key.key_id}: {key.text} (pin it on engines with "
               "--registry-key)")



@main.group()
def users() -> None:
    """Manage registry users and tokens (admins)."""


@users.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(
    ["client", "viewer", "data-scientist", "operator", "approver", "admin"]),
    help="What the user may do (docs/registry.md#roles).")
@registry_option
@errors_to_exit
def users_create(name: str, role: str, registry_url: str | None) -> None:
    """Create user NAME with ROLE (names are unique whatever their case)."""
    _client(registry_url).create_user(name, role)
    click.echo(f"created {name} ({role})")



@main.group()
def tokens() -> None:
    """Registry API tokens: create, list, revoke."""


@tokens.command("create")
@click.argument("user")
@click.option("--days", type=float,
              help="Validity in days (at most the registry's token maximum; more only with "
                   "--service).", show_default="the token maximum, 90")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
              help="Engine scope the token carries (repeat for several).",
              show_default="all of the user's role's")
@click.option("--service", is_flag=True,
              help="A service token (admins only): may exceed the maximum.")
@click.option("--no-expiry", is_flag=True, help="A service token that never expires.")
@click.option("--label", default="", help="What the token is for (shown in 'tokens list').")
@registry_option
@errors_to_exit
def tokens_create(user: str, days: float | None, scopes: tuple[str, ...], service: bool,
                  no_expiry: bool, label: str, registry_url: str | None) -> None:
    """Issue a token for USER; the token alone goes to stdout (shown once)."""
    if no_expiry and days is not None:
        raise click.UsageError("--no-expiry and --days exclude each other")
    made = _client(registry_url).issue_token(
        user, days=days, scopes=list(scopes) if scopes else None, service=service,
        label=label, never_expires=no_expiry)
    click.echo(made["token"])
    kind = "service token" if made["service"] else "token"
    click.echo(f"{kind} {made['id']} for {made['user']}, scopes "
               f"{', '.join(made['scopes']) or 'none'}, expires "
               f"{made['expires_at'] or 'never'}", err=True)


users.add_command(tokens_create, "token")


@tokens.command("list")
@click.option("--user", help="This user's tokens (admins).", show_default="your own")
@click.option("--all", "all_users", is_flag=True, help="Every user's tokens (admins).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@registry_option
@errors_to_exit
def tokens_list(user: str | None, all_users: bool, as_json: bool,
                registry_url: str | None) -> None:
    """List tokens: id, user, label, scopes, dates, status; never the secret."""
    if user and all_users:
        raise click.UsageError("--user and --all exclude each other")
    rows = _client(registry_url).list_tokens(user, all_users)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo("\n".join(_line(t) for t in rows) or "(no tokens)")


def _line(t: dict[str, Any]) -> str:
    kind = "service" if t["service"] else "user"
    return (f"{t['id']:>5}  {t['user']:<16} {kind:<7} {t['status']:<7} "
            f"{','.join(t['scopes']) or '-':<24} created {_day(t['created_at'])}  expires "
            f"{_day(t['expires_at']) or 'never':<10}  used {_day(t['last_used_at']) or '-':<10}"
            f"  {t['label']}").rstrip()


def _day(iso: str | None) -> str:
    return iso[:10] if iso else ""


@tokens.command("revoke")
@click.argument("token_id", type=click.IntRange(min=1), metavar="ID")
@registry_option
@errors_to_exit
def tokens_revoke(token_id: int, registry_url: str | None) -> None:
    """Revoke token ID (your own, or anyone's for an admin); recorded in the audit log."""
    t = _client(registry_url).revoke_token(token_id)
    click.echo(f"revoked token {t['id']} of {t['user']} ({t['label'] or 'no label'})")
