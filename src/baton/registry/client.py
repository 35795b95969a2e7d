"""An HTTP client for the registry API, used by the CLI and by engines serving from it."""

from __future__ import annotations

import builtins
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from baton.bundle.archive import ArchiveLimits, publish_archive, verify_archive
from baton.errors import BatonError, DigestMismatchError
from baton.registry.openapi import AUDIT_PAGE_MAX
from baton.trust import PublicKey, parse_public_key

_EXIT = {400: 2, 401: 6, 403: 6, 404: 2, 409: 7, 413: 2, 422: 2}
#: Codes whose exit status is not their HTTP status's (a broken audit chain is 9 everywhere).
_EXIT_BY_CODE = {"AUDIT_CHAIN_BROKEN": 9}


class RegistryError(BatonError):
    """An error the registry answered with; keeps its code, status and details."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("error", f"registry answered HTTP {status}")),
                         code=str(body.get("code", "REGISTRY_ERROR")),
                         details=body.get("details") or {})
        self.http_status = status
        self.exit_code = _EXIT_BY_CODE.get(self.code, _EXIT.get(status, 1))


class RegistryClient:
    """``ca``: the certificate authority of a registry served over TLS (default: the
    system's); ``cert``: a (certificate, key) pair for a registry that asks for one."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 600.0,
                 ca: Path | None = None, cert: tuple[Path, Path] | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.tls = tls_options(ca, cert)
        self.client_cert = cert
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers=headers,
                                 timeout=timeout, **self.tls)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"error": resp.text[:500]}
            raise RegistryError(resp.status_code, body)
        return resp

    def _unreachable(self, exc: Exception) -> BatonError:
        text = str(exc) or type(exc).__name__
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return self._tls_error(
                f"it showed a TLS certificate this machine does not trust ({text}); give its "
                "certificate authority with BATON_REGISTRY_CA=FILE")
        # With TLS 1.3 a server that refuses the client's certificate (or its absence)
        # closes the connection after the handshake: the client sees only a disconnect.
        closed = isinstance(exc, httpx.RemoteProtocolError)
        if self.url.startswith("https:") and (closed or "SSL" in text or "TLS" in text):
            shown = "did not accept the client certificate given" if self.client_cert else \
                "may require a client certificate"
            return self._tls_error(
                f"TLS failed ({text}): the registry {shown}; give one its authority signed "
                "with BATON_REGISTRY_CLIENT_CERT and BATON_REGISTRY_CLIENT_KEY")
        return BatonError(f"cannot reach the registry at {self.url}: {text}",
                          code="REGISTRY_UNREACHABLE", details={"url": self.url})

    def _tls_error(self, why: str) -> BatonError:
        return BatonError(f"cannot talk to the registry at {self.url}: {why}",
                          code="REGISTRY_TLS_ERROR", details={"url": self.url})

    def whoami(self) -> dict[str, Any]:
        return self._call("GET", "/whoami").json()  # type: ignore[no-any-return]

    def public_key(self) -> PublicKey:
        """The registry's decision-signing key (``GET /api/v1/key``), checked to be one."""
        body = self._call("GET", "/key").json()
        return parse_public_key(str(body.get("key", "")) if isinstance(body, dict) else "")

    def push(self, archive: Path) -> tuple[dict[str, Any], bool]:
        with open(archive, "rb") as f:
            resp = self._call("POST", "/bundles", content=f,
                              headers={"content-type": "application/octet-stream"})
        return resp.json(), resp.status_code == 201

    def list(self, name: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"name": name, "stage": stage}.items() if v}
        return self._call("GET", "/bundles", params=params).json()["bundles"]  # type: ignore[no-any-return]

    def show(self, ref: str) -> dict[str, Any]:
        path = _path(ref) if "@" in ref else ref  # a bare name: its latest version
        return self._call("GET", "/bundles/" + path).json()  # type: ignore[no-any-return]

    def pull(self, ref: str, dest: Path, *,
             limits: ArchiveLimits | None = None) -> tuple[Path, str]:
        """Download ``ref`` into the folder ``dest``, verified within ``limits`` (default:
        ArchiveLimits'); return the file and digest."""
        limits = limits or ArchiveLimits()
        info = self.show(ref)
        want = ref.partition("@")[2] if "@sha256:" in ref else info["digest"]
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{info['name']}-{info['version']}.baton"
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=".pull-")
        try:
            with os.fdopen(fd, "wb") as f, self.http.stream(
                    "GET", f"/bundles/{info['name']}/{info['version']}/archive") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise RegistryError(resp.status_code, resp.json())
                _download(resp, f, limits)
            got = verify_archive(Path(tmp), limits=limits)
            if got != want:
                raise DigestMismatchError(f"downloaded archive has digest {got}, expected "
                                          f"{want}", details={"expected": want, "actual": got})
            publish_archive(Path(tmp), target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target, want

    def promote(self, ref: str, to: str, reason: str = "") -> dict[str, Any]:
        return self._call("POST", f"/bundles/{_path(ref)}/promote",  # type: ignore[no-any-return]
                          json={"to": to, "reason": reason}).json()

    def decide(self, ref: str, decision: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/bundles/{_path(ref)}/{decision}",  # type: ignore[no-any-return]
                          json={"reason": reason}).json()

    def history(self, name: str) -> builtins.list[dict[str, Any]]:
        return self._call("GET", f"/history/{name}").json()["events"]  # type: ignore[no-any-return]

    def audit_jsonl(self, page: int = AUDIT_PAGE_MAX) -> str:
        """The whole audit log as JSON Lines, read ``page`` events at a time."""
        pages, after = [], "0"
        while after:
            resp = self._call("GET", "/audit", params={"format": "jsonl", "after": after,
                                                       "limit": page})
            pages.append(resp.text)
            after = resp.headers.get("x-next-after", "")
        return "".join(pages)

    def audit(self, page: int = AUDIT_PAGE_MAX) -> dict[str, Any]:
        """The whole audit log, read ``page`` events at a time, with the signed head
        checkpoint given with the first page: {"events", "head"}."""
        first = self._call("GET", "/audit", params={"limit": page}).json()
        events, after = first["events"], first.get("next")
        while after is not None:
            more = self._call("GET", "/audit", params={"after": after, "limit": page}).json()
            events += more["events"]
            after = more["next"]
        return {"events": events, "head": first["head"]}

    def create_user(self, name: str, role: str) -> dict[str, Any]:
        return self._call("POST", "/users", json={"name": name, "role": role}).json()  # type: ignore[no-any-return]

    def create_token(self, user: str, days: float | None = None) -> str:
        """A token for ``user`` valid ``days`` (None: the registry's maximum)."""
        return str(self.issue_token(user, days=days)["token"])

    def issue_token(self, user: str, *, days: float | None = None,
                    scopes: builtins.list[str] | None = None, service: bool = False,
                    label: str = "", never_expires: bool = False) -> dict[str, Any]:
        """The registry's answer: the token (shown once), its id, scopes, expiry."""
        body: dict[str, Any] = {"service": service, "label": label}
        if days is not None or never_expires:
            body["days"] = days
        if scopes is not None:
            body["scopes"] = scopes
        return self._call("POST", f"/users/{user}/tokens",  # type: ignore[no-any-return]
                          json=body).json()

    def list_tokens(self, user: str | None = None,
                    all_users: bool = False) -> builtins.list[dict[str, Any]]:
        params = {"all": "1"} if all_users else ({"user": user} if user else {})
        return self._call("GET", "/tokens", params=params).json()["tokens"]  # type: ignore[no-any-return]

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/tokens/{token_id}").json()  # type: ignore[no-any-return]


def _download(resp: httpx.Response, f: BinaryIO, limits: ArchiveLimits) -> None:
    """Write the body, stopping past what an archive within ``limits`` can weigh: no more
    than what it unpacks to, plus gzip's framing (under 1/64 of it) and 64 KiB."""
    cap, written = limits.max_bytes + limits.max_bytes // 64 + (1 << 16), 0
    for chunk in resp.iter_bytes():
        written += len(chunk)
        if written > cap:
            raise limits.exceeded("max_bytes", written, "the downloaded archive")
        f.write(chunk)


def tls_options(ca: Path | None, cert: tuple[Path, Path] | None) -> dict[str, Any]:
    """httpx's ``verify``/``cert`` for a registry: the same for the CLI, engines and the
    dashboard's proxy."""
    import ssl

    if ca is None and cert is None:
        return {}
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return {"verify": context}


def _path(ref: str) -> str:
    name, _, version = ref.partition("@")
    if not version:
        raise BatonError(f"{ref!r} needs a version: NAME@VERSION or NAME@sha256:...",
                         code="INVALID_REFERENCE")
    return f"{name}/{version}"
