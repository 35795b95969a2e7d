"""Credentials and TLS for stream URLs: one vocabulary for every broker connector.

- TLS: the secure scheme where the protocol has one (``rediss://``, ``amqps://``,
  ``mqtts://``), ``?tls=true`` where it has none (NATS, Kafka). ``?ca=`` (the authority that
  signed the broker's certificate; default: the system's), ``?cert=`` and ``?key=`` (a
  client certificate, for brokers that ask for one) name PEM files.
- Secrets: the password in the URL's user-info part (``scheme://user:PASSWORD@host``), or
  ``?password_env=VAR`` / ``?password_file=PATH`` so it never sits in a command line or a
  deployment file; NATS tokens likewise (``?token_env=`` / ``?token_file=``). A secret in
  the query string itself (``?password=``) is refused: query strings end up in logs.

Everything is checked when the URL is read (files exist, are readable and load, variables
are set), so a typo is an error at start and not a broker refusing connections later.
This module raises :class:`UrlProblem`; ``parse_url`` turns it into ``BAD_STREAM_URL``.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

#: Secure scheme -> the plain scheme it wraps in TLS (same connector, same options).
SECURE_SCHEMES: dict[str, str] = {"rediss": "redis", "amqps": "amqp", "mqtts": "mqtt"}

#: The PEM files of a TLS connection (``OPTIONS`` of every broker connector). An option of
#: kind ``file`` names a file that must exist and be readable when the URL is read.
TLS_FILES: dict[str, str | tuple[str, ...]] = {"ca": "file", "cert": "file", "key": "file"}
#: ``?tls=true`` for the protocols without a secure scheme.
TLS_SWITCH: dict[str, str | tuple[str, ...]] = {"tls": ("true", "false")}
#: Where a password comes from when it is not in the URL.
PASSWORD_FROM: dict[str, str | tuple[str, ...]] = {"password_env": "text",
                                                   "password_file": "file"}
#: Where a NATS token comes from (it is a secret: never in the URL itself).
TOKEN_FROM: dict[str, str | tuple[str, ...]] = {"token_env": "text", "token_file": "file"}

#: Query options that would carry a secret in clear; refused, and masked where shown.
SECRET_OPTIONS = frozenset({"password", "passwd", "pass", "pwd", "token", "secret",
                            "sasl_password", "api_key", "apikey", "access_token"})


class UrlProblem(Exception):
    """What is wrong with one option of a stream URL (``parse_url`` names the URL)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option
        self.problem = problem


@dataclass(frozen=True)
class Credentials:
    """What a connector needs to authenticate and encrypt, resolved from the URL."""

    password: str | None
    token: str | None
    tls: bool
    context: ssl.SSLContext | None


def tls_enabled(scheme: str, options: dict[str, str]) -> bool:
    return scheme in SECURE_SCHEMES or options.get("tls") == "true"


def refuse_secrets_in_query(scheme: str, options: dict[str, str]) -> None:
    for key in options:
        if key.lower() in SECRET_OPTIONS:
            what = "token" if "token" in key.lower() else "password"
            where = (f"?{what}_env=VAR or ?{what}_file=PATH" if what == "token" else
                     f"the user-info part ({scheme}://USER:PASSWORD@HOST/...), "
                     f"?password_env=VAR or ?password_file=PATH")
            raise UrlProblem(key, f"a {what} never goes in the query string (?{key}=), "
                                  f"where logs and process lists show it: use {where}")


def resolve(scheme: str, options: dict[str, str], password: str | None,
            known: dict[str, str | tuple[str, ...]]) -> Credentials:
    """Check the security options of a URL (``known``: its connector's ``OPTIONS``, whose
    ``file`` options were checked already) and read its secrets and certificates."""
    tls = tls_enabled(scheme, options)
    if known.get("ca") == "file":  # a connector that speaks TLS (file:// has its own ?key=)
        _check_tls_options(scheme, options, tls)
    from_option = _secret(options, "password")
    if password is not None and from_option is not None:
        source = "password_env" if "password_env" in options else "password_file"
        raise UrlProblem(source, f"the URL has a password in its user-info part and "
                                 f"?{source}= too: give it once")
    return Credentials(password if password is not None else from_option,
                       _secret(options, "token"), tls,
                       ssl_context(options) if tls else None)


def ssl_context(options: dict[str, str]) -> ssl.SSLContext:
    """A client context that verifies the broker (against ``?ca=``, else the system's
    authorities) and presents ``?cert=``/``?key=`` when given."""
    try:
        context = ssl.create_default_context(cafile=options.get("ca"))
    except (ssl.SSLError, OSError) as exc:
        raise UrlProblem("ca", f"?ca={options['ca']} is not a PEM certificate authority: "
                               f"{exc}") from None
    context.sslsocket_class = _ClosingSSLSocket
    if "cert" in options:
        try:
            context.load_cert_chain(options["cert"], options.get("key"),
                                    password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise UrlProblem("cert", f"cannot load the client certificate ?cert="
                                     f"{options['cert']} with its key: {exc}") from None
    return context


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho-mqtt drops such a socket unclosed, and
    each refused attempt (a wrong CA, retried with backoff) would leak a descriptor."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal, blocking a server's start.
    raise UrlProblem("key", "the client key is encrypted with a passphrase; give an "
                            "unencrypted key file readable only by the engine's user")


def _check_tls_options(scheme: str, options: dict[str, str], tls: bool) -> None:
    files = [k for k in ("ca", "cert", "key") if k in options]
    if files and not tls:
        secure = next((s for s, plain in SECURE_SCHEMES.items() if plain == scheme), None)
        how = f"use {secure}://" if secure else "add ?tls=true"
        raise UrlProblem(files[0], f"?{files[0]}= is for TLS connections, and this one is "
                                   f"not encrypted: {how}")
    if "key" in options and "cert" not in options:
        raise UrlProblem("key", "?key= needs ?cert= (the client certificate it belongs to)")


def check_file(option: str, path: str) -> None:
    """An option of kind ``file``: the file must exist and be readable by this user."""
    _read(option, path)


def _read(option: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "does not exist"
    except IsADirectoryError:
        problem = "is a folder, not a file"
    except PermissionError:
        problem = "is not readable by this user"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read ({type(exc).__name__})"
    raise UrlProblem(option, f"?{option}={path}: the file {problem}")


def _secret(options: dict[str, str], what: str) -> str | None:
    """``?WHAT_env=`` or ``?WHAT_file=``: the secret's value (trailing newline dropped)."""
    env, file = options.get(f"{what}_env"), options.get(f"{what}_file")
    if env is not None and file is not None:
        raise UrlProblem(f"{what}_env", f"?{what}_env= and ?{what}_file= both given: "
                                        f"choose one")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise UrlProblem(f"{what}_env", f"?{what}_env={env}: the environment variable "
                                            f"{'is empty' if value == '' else 'is not set'}")
        return value
    if file is not None:
        value = _read(f"{what}_file", file).rstrip("\r\n")
        if not value:
            raise UrlProblem(f"{what}_file", f"?{what}_file={file}: the file is empty")
        return value
    return None
