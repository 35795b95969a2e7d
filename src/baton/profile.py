"""The user's login profile: registry URL, token and pinned key, in a file only they can read.

Read by the CLI and by engines that serve from a registry (not a CLI module: the serving
layer needs it too)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from baton.errors import BatonError

if TYPE_CHECKING:
    from baton.registry.client import RegistryClient
    from baton.settings import Settings


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "baton" / "config.toml"


def load() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BatonError(f"{path} is not valid TOML: {exc}", code="INVALID_CONFIG") from None


def save_login(url: str, token: str, key: str | None = None) -> Path:
    """Save the registry URL, token and (when given) its pinned public key."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load()
    data["registry"] = {"url": url.rstrip("/"), "token": token}
    if key:
        data["registry"]["key"] = key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tomli_w.dumps(data))
    os.chmod(path, 0o600)
    return path


def registry_credentials(url: str | None) -> tuple[str, str | None]:
    """URL and token: options and BATON_REGISTRY / BATON_TOKEN first, then the config file."""
    saved = load().get("registry", {})
    url = (url or os.environ.get("BATON_REGISTRY") or saved.get("url") or "").rstrip("/")
    if not url:
        raise BatonError("no registry given: pass --registry URL, set BATON_REGISTRY, or run "
                         "'baton login URL --token TOKEN'", code="NO_REGISTRY")
    token = os.environ.get("BATON_TOKEN") or (
        saved.get("token") if str(saved.get("url", "")).rstrip("/") == url else None)
    return url, token


def registry_key(url: str, explicit: str = "") -> str | None:
    """The registry public key to pin: ``explicit`` (``--registry-key`` or
    BATON_REGISTRY_KEY), else the one ``baton login`` saved for this same URL."""
    if explicit:
        return explicit
    saved = load().get("registry", {})
    if str(saved.get("url", "")).rstrip("/") == url.rstrip("/"):
        key = saved.get("key")
        return str(key) if key else None
    return None


def open_registry_client(url: str | None, settings: Settings) -> RegistryClient:
    """A client for the registry at ``url`` (or the saved one) with the settings' TLS
    options (``registry_ca``, ``registry_client_cert``/``_key``)."""
    from baton.registry.client import RegistryClient

    # Settings refuse a certificate without its key, and a key without its certificate.
    cert, key = settings.registry_client_cert, settings.registry_client_key
    return RegistryClient(*registry_credentials(url), ca=settings.registry_ca,
                          cert=(cert, key) if cert and key else None)
