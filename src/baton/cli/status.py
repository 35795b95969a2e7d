"""``baton status`` and ``baton top``: the engine's live figures in the terminal."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from baton.cli.main import errors_to_exit, main
from baton.errors import BatonError, Forbidden, Unauthorized

if TYPE_CHECKING:  # imported by the commands: `baton serve` starts without httpx and rich
    import httpx
    from rich.console import Group

_ENGINE_OPTIONS = [
    click.option("--url", default="http://127.0.0.1:8000", show_default=True,
                 envvar="BATON_URL", help="The engine to ask."),
    click.option("--token", envvar="BATON_TOKEN", help="A token with the 'read' scope, "
                 "for an engine that asks for one.", show_default="BATON_TOKEN"),
    click.option("--cacert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="The certificate authority (PEM) of an https engine.",
                 show_default="the system's"),
]


def engine_options(fn: Any) -> Any:
    for opt in reversed(_ENGINE_OPTIONS):
        fn = opt(fn)
    return fn


def engine_client(token: str | None, cacert: Path | None) -> httpx.Client:
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    verify: Any = True
    if cacert is not None:
        import ssl

        try:
            verify = ssl.create_default_context(cafile=str(cacert))
        except (OSError, ssl.SSLError) as exc:
            raise BatonError(f"cannot use {cacert} as a certificate authority: {exc}",
                             code="INVALID_CACERT", details={"field": "cacert"}) from None
    return httpx.Client(headers=headers, verify=verify, timeout=5)


def fetch(url: str, client: httpx.Client | None = None) -> dict[str, Any]:
    import httpx

    target = url.rstrip("/") + "/v1/stats"
    try:
        resp = (client or httpx).get(target, timeout=5)
    except httpx.HTTPError as exc:
        raise BatonError(f"cannot read {target}: {exc}", code="ENGINE_UNREACHABLE") \
            from None
    if resp.status_code in (401, 403):
        raise _refused(target, resp)
    if resp.status_code != 200:
        raise BatonError(f"cannot read {target}: HTTP {resp.status_code}",
                         code="ENGINE_UNREACHABLE")
    return resp.json()  # type: ignore[no-any-return]


def _refused(target: str, resp: httpx.Response) -> BatonError:
    """A 401/403 as a clear error (exit 6) with the engine's own code and reason."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code, reason = str(body.get("code", "UNAUTHORIZED")), str(body.get("error", ""))
    if resp.status_code == 401:
        return Unauthorized(f"the engine refused to show {target}: {reason or 'no token'} "
                            "(pass --token or set BATON_TOKEN to a token with the 'read' "
                            "scope)", code=code)
    return Forbidden(f"the engine refused to show {target}: {reason} (it needs a token with "
                     "the 'read' scope)", code=code, details=body.get("details") or {})


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return ">10s" if seconds == float("inf") else f"{seconds * 1000:.1f}"


def version_label(m: dict[str, Any]) -> str:
    """The version and, when a candidate runs beside it, its role: ``1.1.0 (canary 10%)``,
    ``1.1.0 (shadow)``, ``1.0.0 (live)``; a version served alone is just ``1.0.0``."""
    role, traffic = m.get("role", "live"), m.get("traffic")
    if role == "canary":
        weight = (traffic or {}).get("weight")
        share = "" if weight is None else f" {weight * 100:.4g}%"
        return f"{m['version']} (canary{share})"
    if role == "shadow":
        return f"{m['version']} (shadow)"
    return f"{m['version']} (live)" if traffic else m["version"]


def _key(m: dict[str, Any]) -> tuple[str, str, str, str]:
    return m["name"], m["version"], m.get("role", "live"), m.get("replica", "")


def render(now: dict[str, Any], before: dict[str, Any] | None) -> Group:
    """One table of models (with rates when ``before`` is given) and one of streams."""
    from rich.console import Group
    from rich.table import Table

    dt = (now["time"] - before["time"]) if before else 0.0
    prev = {_key(m): m for m in (before or {}).get("models", [])}
    cluster = bool(now.get("cluster"))
    table = Table(title="replicas" if cluster else "models", title_justify="left")
    where = ("replica", "node") if cluster else ()
    for col in ("model", "version", *where, "ready", "workers", "restarts", "req/s", "rec/s",
                "requests", "errors", "failing stage", "p50 ms", "p99 ms", "queue",
                "cpu %", "memory MB", "quality"):
        table.add_column(col, justify="left" if col in ("model", "version", *where,
                                                        "failing stage") else "right")
    for m in now["models"]:
        met = m.get("metrics") or {}
        old = (prev.get(_key(m)) or {}).get("metrics") or {}
        def rate(key: str, met: dict[str, Any] = met, old: dict[str, Any] = old) -> str:
            return f"{(met.get(key, 0) - old.get(key, 0)) / dt:.1f}" if dt > 0 else "-"

        errors = met.get("errors_by_stage", {})
        old_errors = old.get("errors_by_stage", {})
        failing = max(errors, key=lambda s: errors[s] - old_errors.get(s, 0), default="")
        rising = failing and errors[failing] - old_errors.get(failing, 0) > 0
        workers = m["workers"]
        cpu = sum(w.get("cpu_seconds", 0) for w in workers)
        old_cpu = sum(w.get("cpu_seconds", 0) for w in
                      (prev.get(_key(m)) or {}).get("workers", []))
        quality = met.get("quality") or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in quality.items()
                          if k not in ("labelled", "history") and isinstance(v, float))
        placed = (m.get("replica", ""), str(m.get("node", ""))[:12]) if cluster else ()
        table.add_row(
            m["name"], version_label(m), *placed, "yes" if m["ready"] else "[red]NO[/red]",
            f"{sum(w['state'] == 'ready' for w in workers)}/{len(workers)}",
            str(m["restarts"]), rate("requests"), rate("records"),
            str(met.get("requests", 0)), str(met.get("errors", 0)),
            f"[red]{failing}[/red]" if rising else "-",
            _ms((met.get("latency_seconds") or {}).get("p50")),
            _ms((met.get("latency_seconds") or {}).get("p99")), str(m["queued_rows"]),
            f"{(cpu - old_cpu) / dt * 100:.0f}" if dt > 0 else "-",
            f"{sum(w.get('rss_bytes', 0) for w in workers) / 2**20:.0f}", shown or "-")
    parts: list[Any] = [table]
    if now.get("streams"):
        st = Table(title="streams", title_justify="left")
        for col in ("model", "input", "consumed", "produced", "dead letters", "lag",
                    "in flight", "retries", "last error"):
            st.add_column(col)
        for s in now["streams"]:
            model = s["model"] + (" (labels)" if s.get("kind") == "labels" else "")
            lag = s.get("lag")
            st.add_row(model, s["input"], str(s["consumed"]), str(s["produced"]),
                       str(s["dead_lettered"]), "?" if lag is None else str(lag),
                       str(s.get("in_flight", 0)), str(s["retries"]), s["last_error"] or "-")
        parts.append(st)
    return Group(*parts)


@main.command()
@engine_options
@errors_to_exit
def status(url: str, token: str | None, cacert: Path | None) -> None:
    """The engine's models, workers, traffic, errors and latency, once."""
    from rich.console import Console

    with engine_client(token, cacert) as client:
        first = fetch(url, client)
        time.sleep(1.0)
        console = Console()
        if not console.is_terminal:
            console = Console(width=220)  # piped: keep every column
        console.print(render(fetch(url, client), first))


@main.command()
@engine_options
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between refreshes.")
@errors_to_exit
def top(url: str, token: str | None, cacert: Path | None, interval: float) -> None:
    """The same figures, live (Ctrl-C to quit)."""
    # Ctrl-C sets a flag rather than raising KeyboardInterrupt wherever the main thread is
    # (inside rich's locks or an HTTP call, where an exception can leave a lock held and the
    # refresh thread drawing forever): the loop ends at its next step and exits cleanly.
    from rich.live import Live

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with engine_client(token, cacert) as client:
            before = fetch(url, client)
            with Live(render(before, None), refresh_per_second=4, screen=False) as live:
                while not stop.wait(interval):
                    now = fetch(url, client)
                    live.update(render(now, before))
                    before = now
    finally:
        signal.signal(signal.SIGINT, previous)
