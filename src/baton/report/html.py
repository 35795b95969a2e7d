"""The handoff report as one self-contained HTML page.

No script and no external asset of any kind: inline CSS and SVG only, and a Content
Security Policy (``default-src 'none'``) that keeps it so even if a value in the report
tried to load something. Every value from the bundle is escaped; the page is safe to open
from an e-mail or a registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from baton.report.svg import bars, histogram_labels

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#d5d9e0;padding-bottom:4px}.summary{background:#fff;border-left:4px solid #2f6fdf;padding:10px
14px;margin:12px 0}table{border-collapse:collapse;background:#fff;margin:6px 0;width:100%}
th,td{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}code{font-size:12px;word-break:break-all}.ok{color:#137333}
.bad{color:#b3261e;font-weight:600}.muted{color:#69707d}.charts{display:flex;flex-wrap:wrap;
gap:12px}.chart{background:#fff;border:1px solid #dde1e7}.chart rect{fill:#2f6fdf}
.chart text{font-size:9px;fill:#1d2430;text-anchor:middle}.chart .axis{stroke:#69707d}
figure{margin:0}figcaption{font-size:12px;color:#69707d}
"""


def render_html(report: dict[str, Any]) -> str:
    ident = report["identity"]
    title = f"{ident['name']}@{ident['version']}"
    body = [f"<h1>Handoff report: {escape(title)}</h1>",
            f'<p class="summary" data-testid="summary">{escape(report["summary"])}</p>',
            _identity(report), _check(report["check"]), _performance(report),
            _quality(report.get("quality")), _contract(report["contract"]),
            _dependencies(report["dependencies"]), _sbom(report["sbom"]),
            _drift(report.get("drift_reference")), _registry(report.get("registry"))]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Baton handoff report: {escape(title)}</title><style>{_CSS}</style>"
            f"</head><body><main>{''.join(body)}</main></body></html>\n")


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], testid: str = "") -> str:
    attr = f' data-testid="{escape(testid)}"' if testid else ""
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                  for row in rows)
    return f"<table{attr}><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"


class Raw(str):
    """Markup built here, already escaped."""


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, float):
        return f"{value:g}"
    return escape(str(value))


def _section(title: str, testid: str, *content: str) -> str:
    return f'<section data-testid="{testid}"><h2>{escape(title)}</h2>{"".join(content)}</section>'


def _status(ok: bool, text: str) -> Raw:
    return Raw(f'<span class="{"ok" if ok else "bad"}">{escape(text)}</span>')


def _identity(report: dict[str, Any]) -> str:
    i = report["identity"]
    rows = [("digest", Raw(f"<code>{escape(i['digest'])}</code>")),
            ("description", i["description"]), ("owner", i["owner"]),
            ("model", f"{i['runner']} {i['entrypoint']} ({i['method']})"),
            ("source", i["source"]), ("environment", i["environment_key"]),
            ("isolation asked", i["isolation"]["summary"]),
            ("report", f"{report['generated_at']} by Baton {i['baton_version']}")]
    return _section("Identity", "identity", _table(("", ""), rows))


def _check(check: dict[str, Any]) -> str:
    rows = [(s["stage"], _status(s["ok"], "ok" if s["ok"] else "FAILED"),
             f"{s['seconds']:.3f}", s.get("note", "")) for s in check.get("stages") or []]
    verdict = "passed" if check.get("passed") else f"FAILED at {check.get('failed_stage')}"
    head = f"<p>baton check {_status(bool(check.get('passed')), verdict)}</p>"
    err = check.get("error")
    if err:
        head += f"<p class=\"bad\">[{escape(str(err.get('code')))}] " \
                f"{escape(str(err.get('message', ''))[:2000])}</p>"
    m = check.get("measurements") or {}
    if m.get("load_seconds") is not None:
        head += f"<p>start and load: {m['load_seconds']} s</p>"
    return _section("Check", "check", head,
                    _table(("stage", "result", "seconds", "note"), rows, "stages"))


def _performance(report: dict[str, Any]) -> str:
    perf = report.get("performance")
    if not perf or not perf.get("grid"):
        why = (perf or {}).get("note", "not measured: the check did not pass")
        return _section("Performance", "performance", f'<p class="muted">{escape(why)}</p>')
    grid = perf["grid"]
    rows = [(c["rows"], c["concurrency"], c["requests"], c["requests_per_s"], c["rows_per_s"],
             c["p50_ms"], c["p99_ms"], c["worker_cpu_cores"]) for c in grid]
    charts = "".join(
        f"<figure>{bars([str(c['concurrency']) for c in grid if c['rows'] == n], [c['rows_per_s'] for c in grid if c['rows'] == n], f'rows/s at {n} rows per request')}"  # noqa: E501
        f"<figcaption>rows/s at {n} row(s) per request, by concurrent callers</figcaption>"
        "</figure>" for n in sorted({c["rows"] for c in grid}))
    mem = _table(("worker pid", "RSS MiB", "peak RSS MiB"),
                 [(m["pid"], m["rss_mb"], m["peak_rss_mb"]) for m in perf.get("memory", [])],
                 "memory")
    res = report.get("resources") or {}
    if "requests" in res:
        req, lim = res["requests"], res["limits"]
        requested = (f"<p data-testid=\"resources\">'baton deploy kubernetes' requests "
                     f"<strong>{escape(req['memory'])}</strong> and <strong>"
                     f"{escape(req['cpu'])}</strong> CPU (limits {escape(lim['memory'])}, "
                     f"{escape(lim['cpu'])}) for {res['workers']} worker(s), and allows "
                     f"{res['startup_probe_seconds']} s to start. <span class=\"muted\">"
                     f"{escape(res['rule'])}</span></p>")
    else:
        requested = (f'<p data-testid="resources" class="muted">'
                     f"{escape(str(res.get('note', 'not sized')))}</p>")
    return _section(
        "Performance", "performance",
        f"<p>One worker, through the service's request path (no HTTP), each cell for "
        f"{perf['cell_seconds']} s.</p>",
        _table(("rows", "concurrency", "requests", "requests/s", "rows/s", "p50 ms",
                "p99 ms", "worker CPU cores"), rows, "grid"),
        f'<div class="charts">{charts}</div>', "<h3>Memory per worker</h3>", mem, requested)


def _quality(quality: dict[str, Any] | None) -> str:
    if not quality:
        return _section("Quality on the samples", "quality",
                        '<p class="muted">not measured</p>')
    rows = []
    for f in quality["fields"]:
        if f["kind"] == "numeric":
            rows.append((f["field"], f"max |Δ| {f['max_abs_diff']:.3g}, mean |Δ| "
                         f"{f['mean_abs_diff']:.3g}", f"{f['within_tolerance']:.0%}"))
        else:
            dist = ", ".join(f"{k}: {v}" for k, v in f["distribution"].items())
            rows.append((f["field"], f"predicted {dist}", f"{f['agreement']:.0%}"))
    diffs = quality["differences"]
    return _section(
        "Quality on the samples", "quality",
        f"<p>{quality['rows']} sample rows the data scientist recorded, scored again: "
        f"{_status(diffs == 0, f'{diffs} value(s) differ')} beyond the tolerance "
        f"{quality['tolerance']:g}.</p>",
        _table(("output", "expected vs actual", "agreement"), rows, "quality-fields"))


def _contract(contract: dict[str, Any]) -> str:
    def rows(specs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        out = []
        for s in specs:
            rng = None
            if "min" in s or "max" in s:
                rng = f"[{s.get('min', '−∞')}, {s.get('max', '∞')}]"
            out.append((s["name"], s.get("type") or s.get("datatype"),
                        "yes" if s.get("nullable") else "no",
                        ", ".join(map(str, s["categories"])) if "categories" in s else
                        (f"shape {s['shape']}" if "shape" in s else None), rng))
        return out

    head = ("field", "type", "nullable", "categories", "range")
    return _section("Contract", "contract",
                    f"<p>{escape(contract['kind'])}; unknown fields: "
                    f"{escape(contract.get('unknown_fields', 'reject'))}</p><h3>Inputs</h3>",
                    _table(head, rows(contract["inputs"]), "inputs"), "<h3>Outputs</h3>",
                    _table(head, rows(contract["outputs"]), "outputs"))


def _dependencies(deps: dict[str, Any]) -> str:
    language = "R" if "r" in deps else "Python"
    py = deps[language.lower()]
    rows = [(p["name"], p["pinned"], p["installed"], _status(p["status"] == "same", p["status"]))
            for p in deps["packages"]]
    n = len(deps["differences"])
    return _section(
        "Dependencies", "dependencies",
        f"<p>{language}: packaged with {escape(py['packaged'])}, environment "
        f"{escape(py['environment'])} {_status(py['status'] == 'same', py['status'])}. "
        f"{_status(n == 0, f'{n} package(s) differ')} from what the model was packaged "
        "with.</p>",
        _table(("package", "packaged with", "installed", "status"), rows, "packages"))


def _sbom(sbom: dict[str, Any]) -> str:
    rows = [(c["name"], c["version"], Raw(f"<code>{escape(c['purl'])}</code>"))
            for c in sbom["components"]]
    return _section("Software bill of materials", "sbom",
                    f"<p>{sbom['count']} packages in the model's environment.</p>",
                    _table(("package", "version", "package URL"), rows))


def _drift(ref: dict[str, Any] | None) -> str:
    if not ref:
        return _section("Drift reference", "drift",
                        '<p class="muted">the bundle has no reference profile</p>')
    figures = []
    for name, f in ref["features"].items():
        props = f.get("proportions", {})
        if f.get("kind") == "numeric":
            labels, values = histogram_labels(f.get("edges", [])), list(props)
        else:
            labels, values = list(props), list(props.values())
        caption = f"{name} ({f.get('kind')}, {f.get('missing', 0):.0%} missing)"
        figures.append(f'<figure data-testid="histogram">{bars(labels, values, caption)}'
                       f"<figcaption>{escape(caption)}</figcaption></figure>")
    return _section("Drift reference", "drift",
                    f"<p>Shares of the {ref.get('rows')} training rows per bin; live traffic "
                    f"is compared with them (drift above PSI {ref['threshold']:g}).</p>",
                    f'<div class="charts">{"".join(figures)}</div>')


def _registry(reg: dict[str, Any] | None) -> str:
    if not reg:
        return _section("Approvals and audit trail", "registry",
                        '<p class="muted">none in this page: a local bundle, or the page '
                        "the registry wrote when it validated the version (its approvals and "
                        "audit trail as they are now: 'baton show NAME@VERSION', or the page "
                        "'baton report NAME@VERSION' writes)</p>")
    approvals = _table(("user", "decision", "reason", "time"),
                       [(a["user"], a["decision"], a["reason"], a["time"])
                        for a in reg.get("approvals", [])], "approvals")
    trail = _table(("time", "actor", "action", "from", "to", "reason"),
                   [(e.get("time"), e.get("actor"), e.get("action"), e.get("from"),
                     e.get("to"), e.get("reason")) for e in reg.get("audit", [])], "audit")
    return _section("Approvals and audit trail", "registry",
                    f"<p>{escape(str(reg.get('url', '')))}: stage "
                    f"<strong>{escape(str(reg.get('stage')))}</strong>, pushed by "
                    f"{escape(str(reg.get('author')))}</p>", approvals, "<h3>Audit trail</h3>",
                    trail)
