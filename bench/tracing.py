"""What tracing costs (issue 15): the same bundle, wrk -t1 -c16, 1-row and 100-row V2 requests.

States, each `baton serve` of the benchmark's logistic regression with its defaults:

* ``off``: the source measured (``--after``, default HEAD, run from a copy of its ``src/``
  with this venv, ``PYTHONPATH``; ``worktree``: this checkout), tracing off, its default;
* ``before``: the same source without tracing: every commit that touched
  src/baton/tracing.py reverted in that copy (``--before REV``: another commit's ``src/``),
  so that only tracing differs;
* ``1%``: the same with ``BATON_OTLP_ENDPOINT`` naming an OTLP/HTTP receiver in this process
  (a thread that decodes every export, on the same 2 cores) and ``BATON_TRACE_SAMPLE=0.01``;
* ``100%`` (only with ``--states``): every request traced, to show what a trace costs.

Rounds alternate the states, their order rotating from round to round; each state's server
is started afresh in every round, checked with one request, warmed up 2 s, then measured
(``--duration`` s) at 1 and at 100 rows. Reported per state: req/s, p99, the server's CPU
(engine and worker processes) per request, and the spans received; then the medians, the
ratios off/before and 1%/off, and each round's ratio.

``--in-process N``: the same states without HTTP or wrk, for figures the shared machine
blurs less: the engine's ASGI app called directly by 16 concurrent callers (N requests,
V2 infer, after 800 unmeasured), in a process of its own per state and round, reporting the
event loop thread's CPU per request (``time.thread_time``) and the whole process's
(exporter thread included; the worker process not). Everything runs at niceness -10
(``--nice``, as bench/run.py does) on this shared machine. Needs the bundle and bodies of a
previous `make bench` or of ``bench/run.py --only baton --repeat 1 --duration 2
--startup-runs 1 --no-cold-build``. Results: build/bench/tracing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, machine, set_autogroup_nice, tree_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench"
BUNDLE = WORK / "logreg-bundle"
URL = "/v2/models/logreg/infer"


class Receiver:
    """OTLP/HTTP on 127.0.0.1: decodes each ExportTraceServiceRequest, counts its spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.spans += sum(len(ss.spans) for rs in request.resource_spans
                                      for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def source(rev: str, into: Path) -> Path:
    """``src/`` of ``rev`` (or of this checkout, ``worktree``) as a folder to run from."""
    if rev == "worktree":
        return ROOT / "src"
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def without_tracing(after: Path, into: Path) -> Path:
    """A copy of the ``src/`` folder ``after`` with the tracing commits' changes reverted."""
    subprocess.run(["cp", "-a", str(after), str(into)], check=True)
    for commit in git("log", "--format=%H", "--", "src/baton/tracing.py").split():
        diff = subprocess.run(["git", "diff", commit, f"{commit}^", "--", "src"], cwd=ROOT,
                              check=True, capture_output=True).stdout
        subprocess.run(["git", "apply", "-p2", "-C1"], cwd=into, input=diff, check=True)
    return into


def wrk(port: int, rows: int, seconds: int) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", "-s",
                          str(WORK / f"post-{rows}.lua"), f"http://127.0.0.1:{port}{URL}"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"WRK_JSON (\{.*\})", out)
    assert m, out
    result: dict[str, Any] = json.loads(m.group(1))
    return result


def run_state(state: str, src: Path, receiver: Receiver, duration: int) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(src), BATON_HOME=str(WORK / "baton-home"))
    for k in ("BATON_OTLP_ENDPOINT", "BATON_TRACE_SAMPLE", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env.pop(k, None)
    if state.endswith("%"):
        env["BATON_OTLP_ENDPOINT"] = receiver.url
        env["BATON_TRACE_SAMPLE"] = str(float(state[:-1]) / 100)
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "baton", "serve", str(BUNDLE), "--port",
                               str(port), "--log-level", "warning"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "not ready"
            time.sleep(0.1)
        proc = psutil.Process(server.pid)
        for p in [proc, *proc.children(recursive=True)]:  # each its own session: renice
            set_autogroup_nice(p.pid, os.getpriority(os.PRIO_PROCESS, 0))
        for rows in (1, 100):
            answer = httpx.post(base + URL, content=(WORK / f"body-{rows}.json").read_bytes(),
                                headers={"content-type": "application/json"})
            assert answer.status_code == 200, answer.text  # a refusal would count as fast
            wrk(port, rows, 2)
            spans, before = receiver.spans, tree_cpu(proc.pid)
            r = wrk(port, rows, duration)
            used = tree_cpu(proc.pid) - before
            assert r["status"] == 0 and r["connect"] == 0, r
            seconds = r["duration_us"] / 1e6
            out[str(rows)] = {"rps": r["requests"] / seconds, "p99_ms": r["p99_us"] / 1e3,
                              "cpu_us": used / r["requests"] * 1e6,
                              "spans": receiver.spans - spans}
    finally:
        server.terminate()
        server.wait(60)
    return out


def asgi(state: str, rows: int, n: int) -> None:
    """One in-process measurement (run in a child process: ``--asgi STATE ROWS N``)."""
    import asyncio
    import gc
    import resource

    from baton.deployment import DeploymentSpec, EngineSpec
    from baton.server.app import BatonApp
    from baton.serving.assembly import build_engine
    from baton.settings import Settings

    kw: dict[str, Any] = {}
    if state.endswith("%"):
        receiver = Receiver()
        kw = {"otlp_endpoint": receiver.url, "trace_sample": float(state[:-1]) / 100}
        from baton import tracing

        tracing.configure(Settings(**kw))
    body = (WORK / f"body-{rows}.json").read_bytes()
    scope = {"type": "http", "method": "POST", "path": URL, "scheme": "http",
             "http_version": "1.1", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 1), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    async def run() -> dict[str, float]:
        engine = build_engine(EngineSpec((DeploymentSpec(str(BUNDLE)),)),
                              Settings.from_env(**kw))
        app = BatonApp(engine, max_body_bytes=8 << 20)
        await engine.start()
        gc.freeze()  # as baton serve does once its models are up

        async def caller(k: int) -> None:
            for _ in range(k):
                await app(dict(scope), receive, send)

        await asyncio.gather(*(caller(50) for _ in range(16)))
        statuses.clear()
        t0, r0 = time.thread_time(), resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(caller(n // 16) for _ in range(16)))
        t1, r1 = time.thread_time(), resource.getrusage(resource.RUSAGE_SELF)
        assert set(statuses) == {200}, set(statuses)
        await engine.close()
        used = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        return {"loop_us": (t1 - t0) / len(statuses) * 1e6,
                "process_us": used / len(statuses) * 1e6}

    print("ASGI_JSON " + json.dumps(asyncio.run(run())), flush=True)


def in_process(srcs: dict[str, Path], after: Path, states: list[str], rounds: int,
               n: int) -> None:
    runs: dict[str, list[dict[str, float]]] = {f"{s}/{r}": [] for s in states
                                               for r in (1, 100)}
    for r in range(rounds):
        for state in states[r % len(states):] + states[:r % len(states)]:
            for rows in (1, 100):
                env = dict(os.environ, PYTHONPATH=str(srcs.get(state, after)),
                           BATON_HOME=str(WORK / "baton-home"))
                out = subprocess.run([sys.executable, __file__, "--asgi", state, str(rows),
                                      str(n if rows == 1 else n // 4)], env=env,
                                     capture_output=True, text=True, check=True).stdout
                got = json.loads(out.split("ASGI_JSON ", 1)[1])
                runs[f"{state}/{rows}"].append(got)
                print(f"round {r + 1} {state:>6} {rows:>3} row(s): loop {got['loop_us']:.1f} "
                      f"µs/req, process {got['process_us']:.1f} µs/req", flush=True)
    med = statistics.median
    print("\nrows  state   loop µs/req (median)  process µs/req (median)  vs off (loop, process)")
    for rows in (1, 100):
        off = runs.get(f"off/{rows}")
        for s in states:
            got = runs[f"{s}/{rows}"]
            loop, proc = med(g["loop_us"] for g in got), med(g["process_us"] for g in got)
            vs = "" if not off else (f"{loop / med(g['loop_us'] for g in off):.3f} "
                                     f"{proc / med(g['process_us'] for g in off):.3f}")
            print(f"{rows:>4}  {s:>6}  {loop:>20.1f}  {proc:>23.1f}  {vs}")
    (WORK / "tracing-in-process.json").write_text(json.dumps(runs, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=6, help="seconds per measured wrk run")
    ap.add_argument("--before", help="the source without tracing (a commit; default: the "
                    "measured source with the tracing commits reverted)")
    ap.add_argument("--after", default="HEAD", help="the source measured (or 'worktree')")
    ap.add_argument("--states", default="before,off,1%", help="any of before,off,1%%,100%%")
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="niceness of this script, its servers, their workers and wrk, as "
                    "bench/run.py (the machine is shared)")
    ap.add_argument("--in-process", type=int, metavar="N",
                    help="measure in process (no HTTP), N requests per 1-row run")
    ap.add_argument("--asgi", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.asgi:
        asgi(args.asgi[0], int(args.asgi[1]), int(args.asgi[2]))
        return 0
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
        set_autogroup_nice("self", args.nice)
    for f in (BUNDLE, WORK / "post-1.lua", WORK / "post-100.lua"):
        if not f.exists():
            sys.exit(f"missing {f}: run make bench (or bench/run.py --only baton) first")
    states = args.states.split(",")
    receiver = Receiver()
    tmp = Path(tempfile.mkdtemp(prefix="baton-tracing-bench-"))
    after = source(args.after, tmp / "after")
    srcs = {"before": source(args.before, tmp / "before") if args.before
            else without_tracing(after, tmp / "before-src")}
    if args.in_process:
        in_process(srcs, after, states, args.rounds, args.in_process)
        return 0
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in states}
    revs = {"before": git("rev-parse", "--short", args.before) if args.before
            else "after, tracing reverted",
            "after": args.after if args.after == "worktree" else git("rev-parse", "--short",
                                                                      args.after)}
    print(f"before = {revs['before']}, after = {revs['after']}; {args.rounds} rounds of "
          f"{', '.join(states)}; wrk -t1 -c16, {args.duration} s", flush=True)
    for r in range(args.rounds):
        order = states[r % len(states):] + states[:r % len(states)]
        for state in order:
            got = run_state(state, srcs.get(state, after), receiver, args.duration)
            runs[state].append(got)
            print(f"round {r + 1} {state:>6}: " + "  ".join(
                f"{rows} row(s) {v['rps']:,.0f} req/s p99 {v['p99_ms']:.2f} ms "
                f"{v['cpu_us']:.0f} µs CPU/req {v['spans']} spans"
                for rows, v in got.items()), flush=True)
    summary = report(runs, states)
    path = WORK / "tracing.json"
    path.write_text(json.dumps({"machine": machine(), "revisions": revs, "rounds": runs,
                                "duration_s": args.duration, "summary": summary}, indent=1))
    print(f"results: {path}")
    return 0


def report(runs: dict[str, list[dict[str, Any]]], states: list[str]) -> dict[str, Any]:
    med = statistics.median
    summary: dict[str, Any] = {}
    print("\nrows  state    req/s (median)  p99 ms  CPU µs/req  spans/run  req/s by round")
    for rows in ("1", "100"):
        for s in states:
            rps = [x[rows]["rps"] for x in runs[s]]
            summary[f"{s}/{rows}"] = {"rps": med(rps), "cpu_us": med(x[rows]["cpu_us"]
                                                                     for x in runs[s])}
            print(f"{rows:>4}  {s:>6}  {med(rps):>14,.0f}  "
                  f"{med(x[rows]['p99_ms'] for x in runs[s]):>6.2f}  "
                  f"{summary[f'{s}/{rows}']['cpu_us']:>10.0f}  "
                  f"{med(x[rows]['spans'] for x in runs[s]):>9.0f}  "
                  + " ".join(f"{v:,.0f}" for v in rps))
    print("\nratio         rows  of medians  by round (same round)")
    for a, b in (("off", "before"), ("1%", "off"), ("100%", "off")):
        if a not in states or b not in states:
            continue
        for rows in ("1", "100"):
            by_round = [x[rows]["rps"] / y[rows]["rps"] for x, y in zip(runs[a], runs[b],
                                                                        strict=True)]
            ratio = summary[f"{a}/{rows}"]["rps"] / summary[f"{b}/{rows}"]["rps"]
            summary[f"{a}/{b}/{rows}"] = {"ratio": ratio, "rounds": by_round}
            print(f"{a + '/' + b:>12}  {rows:>4}  {ratio:>10.3f}  "
                  + " ".join(f"{v:.2f}" for v in by_round))
    return summary


if __name__ == "__main__":
    sys.exit(main())
