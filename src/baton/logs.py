"""How Baton's processes log: plain text lines for a terminal, or one JSON object per line
for a log pipeline (``--log-format json``).

A JSON line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``, then whatever the record carries of ``model``, ``version``, ``digest``,
``request_id``, ``stage``, ``status``, ``duration_ms``, ``rows``, ``method`` and ``path`` (a
record's ``extra``), and ``exception`` with the traceback. The request id of the HTTP request
being handled is added to every record logged while it is handled (a context variable, so
also from the engine's and the worker pool's code), in text and in JSON.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import itertools
import logging
import secrets
from typing import Any

import orjson

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The request being handled, for every record logged meanwhile ("" outside a request).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("baton_request_id",
                                                                 default="")
#: Record attributes a JSON line carries when a record has them.
FIELDS = ("model", "version", "digest", "request_id", "stage", "status", "duration_ms", "rows",
          "method", "path")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


#: A new id is this process's random prefix and a counter: unique in the process, unlikely
#: to repeat across processes, and about 0.15 µs (a random id from os.urandom is 0.5 µs).
_PREFIX = secrets.token_hex(4)
_COUNT = itertools.count()


def request_id(given: bytes | None) -> str:
    """The id of a request: the caller's ``X-Request-Id`` when it is a sane one (1 to 128
    letters, digits, ``-_.:``: it is echoed into headers and logs), else a new one (16 hex
    digits)."""
    if given and len(given) <= 128:
        text = given.decode("latin-1")
        if _ID_CHARS.issuperset(text):
            return text
    return f"{_PREFIX}{next(_COUNT) & 0xFFFFFFFF:08x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The usual line, with ``[request ID]`` after the logger when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", "")
        if rid:
            head = f" {record.name}: "
            line = line.replace(head, f" {record.name} [request {rid}]: ", 1)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line (no line breaks inside: a traceback is one string)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str, fmt: str = "text") -> None:
    """Log to standard error at ``level`` in ``fmt`` (``text`` or ``json``), for the
    process's every logger, uvicorn's included; replaces any handler set before."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers would write its lines as text: they go through ours.
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
