"""Operator settings: one object, read once at the edge (CLI or app factory), passed down.

Every field can be set by an environment variable ``BATON_<FIELD>`` (upper case); CLI
options override those. A plain dataclass keeps start-up fast and the engine light
(pydantic-settings would add ~25 MB and ~150 ms to every start).
"""

from __future__ import annotations

import functools
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from baton.errors import SettingsError

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_PREDICTION_LOG_STORES = ("local", "registry")
#: Settings that hold a stream URL, checked by the streams package (which knows the schemes).
STREAM_URL_SETTINGS = ("prediction_log_sink",)


def _default_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "baton"


@dataclass(frozen=True)
class Settings:
    #: Folder for environments, extracted bundles and build locks.
    home: Path = field(default_factory=_default_home)
    #: Folder of wheels to install from, with no index (air-gapped production).
    wheelhouse: Path | None = None
    #: Install without network access, from uv's cache or ``wheelhouse`` only.
    offline: bool = False
    #: Folder of R package files (``name_version.tar.gz``, sources or binaries) an R model's
    #: library is installed from before the system's R packages; never a network repository.
    r_packages: Path | None = None
    #: Address and port the HTTP server binds to.
    host: str = "127.0.0.1"
    port: int = 8000
    #: Largest request body accepted, in bytes; larger ones get 413.
    max_body_bytes: int = 8 * 1024 * 1024
    #: Worker processes per model; 0: the bundle's, else decided by measured memory.
    workers: int = 0
    #: Seconds a worker may spend on one batch before it is killed and restarted; 0: the
    #: bundle's, else derived from the bundle's check report, else 30.
    timeout: float = 0.0
    #: Seconds a queued request waits for a restarting worker before it gets 503
    #: WORKER_UNAVAILABLE (0: it fails at once).
    restart_wait: float = 10.0
    #: Seconds a worker may take to start and load its model.
    load_timeout: float = 120.0
    #: Unknown fields in input records: 'reject' or 'ignore'; empty: the bundle's contract.
    unknown_fields: str = ""
    #: Most rows queued per model before requests get 503 (backpressure).
    max_queue_rows: int = 65536
    #: Seconds shutdown waits for in-flight work to drain.
    drain_timeout: float = 30.0
    #: Threads each worker's numeric libraries may use (OMP, BLAS).
    worker_threads: int = 1
    #: Fork workers from a per-model template that has imported the model's libraries
    #: (docs/protocol.md#worker-templates); false: spawn every worker from scratch.
    worker_template: bool = True
    #: Isolation level of every model's workers, 'process' or 'sandbox'; empty: each
    #: bundle's own. The stricter of this and the bundle's wins (docs/isolation.md).
    isolation: str = ""
    #: Whether a sandboxed model that asks for the network may have it (false: none may).
    model_network: bool = True
    #: Per-worker limits (0: the bundle's, if any); the lower of this and the bundle's wins.
    worker_memory_mb: int = 0
    worker_cpus: float = 0.0
    worker_open_files: int = 0
    worker_processes: int = 0
    log_level: str = "info"
    #: Log lines as ``text`` or ``json`` (one JSON object per line: baton.logs).
    log_format: str = "text"
    #: One log line per HTTP request (method, path, status, duration, model, request id).
    access_log: bool = False
    #: Expose Prometheus metrics at /metrics (and count every request).
    metrics: bool = True
    #: OTLP/HTTP collector that receives OpenTelemetry traces (``http://HOST:4318``);
    #: empty: tracing off (docs/operations.md#traces; needs ``baton[tracing]``).
    otlp_endpoint: str = ""
    #: Share of requests without a sampled caller's ``traceparent`` that are traced.
    trace_sample: float = 1.0
    #: Share of predictions whose inputs and outputs are logged (0 turns the log off).
    prediction_log_sample: float = 1.0
    #: Days a logged prediction (and its label) is kept.
    prediction_log_days: float = 7.0
    #: Where logged predictions are kept for feedback: 'local' (``home``/predictions.sqlite)
    #: or 'registry' (the registry's database, ``registry_db``).
    prediction_log_store: str = "local"
    #: A stream URL (file://, redis://, kafka://...) that also receives every logged
    #: prediction as one JSON record; empty: none.
    prediction_log_sink: str = ""
    #: Labelled predictions the quality figures are computed over.
    quality_window: int = 1000
    #: Seconds between drift checks; a feature that starts drifting raises an alert.
    drift_interval: float = 10.0
    #: URL that receives each drift alert as a JSON POST (empty: alerts are logged only).
    drift_webhook: str = ""
    #: Registry metadata database URL; empty: SQLite under ``home``.
    registry_db: str = ""
    #: Registry content folder; empty: ``home``/registry/blobs.
    registry_storage: Path | None = None
    #: Approvals a bundle needs before production.
    approvals: int = 1
    #: Isolation level the registry validates pushed bundles under: 'sandbox' keeps pushed
    #: code away from the signing key, the database and the registry's tokens.
    validation_isolation: str = "sandbox"
    #: The registry's Ed25519 signing key (PEM, created on first start); empty:
    #: ``home``/registry/signing.key. Keep it out of the database's reach.
    registry_key_file: Path | None = None
    #: Longest validity, in days, of a token a user asks for (admins' service tokens excepted).
    token_max_days: float = 90.0
    #: The registry public key an engine pins (``ed25519:BASE64`` or a file holding it): it
    #: serves only digests that key signed. Empty: the key saved by ``baton login``.
    registry_key: str = ""
    #: Certificate authority (PEM) that signed the registry's TLS certificate.
    registry_ca: Path | None = None
    #: Client certificate and key (PEM) this process shows a registry that asks for one.
    registry_client_cert: Path | None = None
    registry_client_key: Path | None = None
    #: Local engine tokens (TOML, sha256 of each token with its scopes; see docs/security.md).
    tokens_file: Path | None = None
    #: Seconds an engine trusts a registry-issued token it verified before asking again.
    auth_cache_seconds: float = 30.0
    #: TLS for the HTTP server (engine and registry): certificate and key files (PEM).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Certificate authority (PEM) whose client certificates the server requires.
    tls_client_ca: Path | None = None
    #: A second port serving only /metrics, without authentication, for Prometheus; 0: none.
    metrics_port: int = 0
    #: A port serving the Open Inference Protocol over gRPC (same host, TLS and tokens as
    #: HTTP; needs the ``grpc`` extra); 0: none.
    grpc_port: int = 0
    #: Limits on what a bundle archive may unpack to, enforced while it is read.
    archive_max_bytes: int = 8 * 1024**3
    archive_max_files: int = 10_000
    archive_max_file_bytes: int = 4 * 1024**3
    #: Largest unpacked/packed size ratio, checked once 64 MiB are unpacked.
    archive_max_ratio: float = 200.0

    def __post_init__(self) -> None:
        # Workers run in their bundle's folder: a relative home (BATON_HOME=build/home) must
        # not change meaning there.
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        checks = [
            ("workers", self.workers >= 0, "an integer >= 0 (0: the bundle's default)"),
            ("timeout", self.timeout >= 0, "a number of seconds >= 0 (0: the bundle's)"),
            ("restart_wait", self.restart_wait >= 0, "a number of seconds >= 0"),
            ("load_timeout", self.load_timeout > 0, "a number of seconds > 0"),
            ("max_body_bytes", self.max_body_bytes > 0, "a positive number of bytes"),
            ("max_queue_rows", self.max_queue_rows > 0, "a positive number of rows"),
            ("drain_timeout", self.drain_timeout >= 0, "a number of seconds >= 0"),
            ("worker_threads", self.worker_threads > 0, "a positive integer"),
            ("isolation", self.isolation in ("", "process", "sandbox"),
             "'process' or 'sandbox' (empty: the bundle's)"),
            ("validation_isolation", self.validation_isolation in ("process", "sandbox"),
             "'process' or 'sandbox'"),
            ("worker_memory_mb", self.worker_memory_mb >= 0, "a number of MiB >= 0"),
            ("worker_cpus", self.worker_cpus >= 0, "a number of CPUs >= 0"),
            ("worker_open_files", self.worker_open_files >= 0, "an integer >= 0"),
            ("worker_processes", self.worker_processes >= 0, "an integer >= 0"),
            ("port", 0 <= self.port <= 65535, "a TCP port (0-65535)"),
            ("approvals", self.approvals >= 1, "an integer >= 1"),
            ("prediction_log_sample", 0.0 <= self.prediction_log_sample <= 1.0,
             "a share between 0 and 1"),
            ("prediction_log_days", self.prediction_log_days > 0, "a number of days > 0"),
            ("prediction_log_store", self.prediction_log_store in _PREDICTION_LOG_STORES,
             "'local' or 'registry'"),
            ("quality_window", self.quality_window > 0, "a positive number of labels"),
            ("drift_interval", self.drift_interval > 0, "a number of seconds > 0"),
            ("unknown_fields", self.unknown_fields in ("", "reject", "ignore"),
             "'reject' or 'ignore'"),
            ("log_level", self.log_level.lower() in _LOG_LEVELS, ", ".join(_LOG_LEVELS)),
            ("log_format", self.log_format in ("text", "json"), "'text' or 'json'"),
            ("otlp_endpoint", not self.otlp_endpoint or self.otlp_endpoint.startswith(
                ("http://", "https://")), "an http:// or https:// URL (empty: tracing off)"),
            ("trace_sample", 0.0 <= self.trace_sample <= 1.0, "a share between 0 and 1"),
            ("token_max_days", 0 < self.token_max_days <= 36500, "a number of days in 0..36500"),
            ("auth_cache_seconds", 0 <= self.auth_cache_seconds <= 3600,
             "a number of seconds in 0..3600"),
            ("metrics_port", 0 <= self.metrics_port <= 65535, "a TCP port (0: none)"),
            ("grpc_port", 0 <= self.grpc_port <= 65535, "a TCP port (0: none)"),
            ("tls_key", (self.tls_cert is None) == (self.tls_key is None),
             "given together with tls_cert (BATON_TLS_CERT)"),
            ("tls_client_ca", self.tls_client_ca is None or self.tls_cert is not None,
             "given only with tls_cert and tls_key"),
            ("registry_client_key",
             (self.registry_client_cert is None) == (self.registry_client_key is None),
             "given together with registry_client_cert"),
            ("archive_max_bytes", self.archive_max_bytes > 0, "a positive number of bytes"),
            ("archive_max_files", self.archive_max_files > 0, "a positive number of files"),
            ("archive_max_file_bytes", self.archive_max_file_bytes > 0,
             "a positive number of bytes"),
            ("archive_max_ratio", self.archive_max_ratio >= 1, "a ratio >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise SettingsError(f"setting {name} (BATON_{name.upper()}) must be "
                                    f"{expected}, got {getattr(self, name)!r}",
                                    details={"field": name})
        self._check_prediction_log()

    def stream_urls(self) -> dict[str, str]:
        """The stream URLs set among these settings, by setting name."""
        return {n: getattr(self, n) for n in STREAM_URL_SETTINGS if getattr(self, n)}

    def _check_prediction_log(self) -> None:
        """The registry store needs a SQLite or PostgreSQL registry database (shown without
        its password). The sink's URL is checked by the streams package, which knows the
        schemes (:func:`baton.streams.base.check_settings`)."""
        if self.prediction_log_store == "registry" and self.registry_db:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                backend = make_url(self.registry_db).get_backend_name()
                shown = make_url(self.registry_db).render_as_string(hide_password=True)
            except ArgumentError:
                backend, shown = "", self.registry_db
            if backend not in ("sqlite", "postgresql"):
                raise SettingsError(
                    "setting prediction_log_store (BATON_PREDICTION_LOG_STORE) is 'registry', "
                    "which needs registry_db (BATON_REGISTRY_DB) to be a SQLite or PostgreSQL "
                    f"URL (postgresql+psycopg://USER@HOST/DB), got {shown!r}",
                    details={"field": "registry_db"})

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def bundles_dir(self) -> Path:
        return self.home / "bundles"

    @property
    def prediction_log_path(self) -> Path:
        return self.home / "predictions.sqlite"

    @property
    def registry_url(self) -> str:
        return self.registry_db or f"sqlite:///{self.home / 'registry' / 'registry.db'}"

    @property
    def registry_blobs(self) -> Path:
        return self.registry_storage or self.home / "registry" / "blobs"

    @property
    def registry_signing_key(self) -> Path:
        return self.registry_key_file or self.home / "registry" / "signing.key"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 defaults: Mapping[str, Any] | None = None, **overrides: Any) -> Settings:
        """The settings of a command: ``defaults`` (the command's own, where it differs
        from the field's), then ``BATON_<FIELD>`` variables parsed by the field's type,
        then ``overrides`` (its options; None means not given)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = dict(defaults or {})
        for name, kind in _field_types().items():
            raw = environ.get(f"BATON_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = _parse(name, kind, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@functools.cache
def _field_types() -> dict[str, type]:
    """Field name -> the type its variable is parsed into (``Path | None`` -> Path)."""
    hints = typing.get_type_hints(Settings)
    out = {}
    for f in fields(Settings):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[f.name] = args[0] if len(args) == 1 else hint
    return out


def _parse(name: str, kind: type, raw: str) -> Any:
    variable = f"BATON_{name.upper()}"
    if kind is Path:  # absolute: it means the same in a worker's folder
        return Path(raw).expanduser().absolute()
    if kind is bool:
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        expected = "a boolean: " + ", ".join(_TRUE + _FALSE) + " (any case)"
    elif kind is int:
        try:
            return int(raw)
        except ValueError:
            expected = "a whole number"
    elif kind is float:
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
        expected = "a finite number"
    elif kind is str:
        return raw
    else:  # a new field of a type this function does not know yet
        raise TypeError(f"setting {name}: no parser for {kind!r}")
    raise SettingsError(f"environment variable {variable}={raw!r} is not {expected}",
                        details={"field": name})
