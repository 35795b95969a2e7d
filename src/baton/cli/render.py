"""Readable terminal output for check reports."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from baton.check import CheckReport
from baton.runtime.runner import cut_lines


def render_check(report: CheckReport) -> None:
    console = Console(stderr=False, highlight=False)
    b = report.bundle
    if b:
        console.print(f"[bold]{b['name']} {b['version']}[/bold]  {b['digest']}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("note")
    for s in report.stages:
        table.add_row(s["stage"], "[green]ok[/green]" if s["ok"] else "[red]FAILED[/red]",
                      f"{s['seconds']:.3f}", escape(s["note"]))
    console.print(table)
    m = report.measurements
    if "latency" in m:
        env = m["environment"]
        console.print(f"environment: {'cached' if env['cached'] else 'built'} "
                      f"({env['build_seconds']:.2f}s)   start+load: {m['load_seconds']:.2f}s   "
                      f"memory: {m.get('memory_mb', {}).get('worker_rss_mb', '?')} MB "
                      f"(peak {m.get('memory_mb', {}).get('worker_peak_rss_mb', '?')} MB)")
        for label, lat in m["latency"].items():
            console.print(f"latency {label.replace('_', ' ')}: p50 {lat['p50_ms']:.2f} ms, "
                          f"p99 {lat['p99_ms']:.2f} ms")
    for mm in report.mismatches[:10]:
        console.print(escape(f"  mismatch: record {mm['record']}, field {mm['field']!r}: "
                             f"expected {mm['expected']!r}, got {mm['got']!r}"))
    if report.passed:
        console.print("[bold green]PASS[/bold green]")
    else:
        _print_why(console, report)
        console.print(f"[bold red]FAIL[/bold red] at stage [bold]{report.failed_stage}"
                      f"[/bold]: {escape(report.message)}")


def _print_why(console: Console, report: CheckReport) -> None:
    """The traceback of a failure, and what the worker and the pool logged, cut to size."""
    traceback = ((report.error or {}).get("details") or {}).get("traceback")
    if traceback:
        console.print(traceback.rstrip("\n"), markup=False, soft_wrap=True)
    if report.log:
        console.print("log of the check:")
        console.print(cut_lines("\n".join(report.log)), markup=False, soft_wrap=True)
