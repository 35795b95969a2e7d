"""Start-up and restart of `baton serve` for the example bundle (issue 15), see README.md.

One command (``.venv/bin/python bench/startup.py``): build (or find cached) the penguins
example's environment, then, ``--rounds`` times: launch ``baton serve BUNDLE --workers 1``,
time the first 200 on the predict route (polled every 10 ms; with ``--busy``, a 503 is sent
again at once, as until 2026-12-07), SIGKILL its worker ``--kills`` times and time a request
sent right after each kill (it waits for the restarted worker), stop the engine with
SIGTERM and check that none of its processes outlived it. Then, once, the worker alone,
driven over the protocol: interpreter to ``hello``, ``load``, the first ``predict``, and the
imports inside the load (``-X importtime``). Results go to build/bench/startup/results.json.
Exit status 1 when a process outlived the engine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, machine, source_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "startup"
BATON = Path(sys.executable).parent / "baton"
BUNDLE = ROOT / "examples" / "penguins" / "bundle"
RUNNER = ROOT / "src" / "baton" / "runtime" / "runner.py"
TARGETS = {"first_prediction_s": 1.0, "restart_s": 0.3}
#: A log line's time: "2026-12-07 17:21:28,694 INFO logger: message".
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ([\w.]+): (.*)$")


def environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Baton's home for this benchmark; bytecode is written and read (the machine sets
    PYTHONDONTWRITEBYTECODE, which would make every start compile the engine anew)."""
    env = dict(os.environ, BATON_HOME=str(WORK / "home"), UV_PYTHON_DOWNLOADS="never",
               **(extra or {}))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Variant:
    """What is measured: ``NAME[=SRC][,VAR=VALUE...]``: Baton from the source folder SRC
    (``python -m baton`` with it first on PYTHONPATH; default: the project's), with the
    variables given (e.g. ``spawn,BATON_WORKER_TEMPLATE=false``)."""

    def __init__(self, text: str) -> None:
        head, *pairs = text.split(",")
        self.name, _, src = head.partition("=")
        self.env = dict(p.split("=", 1) for p in pairs)
        self.command = [str(BATON)]
        if src:
            self.env["PYTHONPATH"] = str(Path(src).resolve())
            self.command = [sys.executable, "-m", "baton"]


def body() -> bytes:
    return json.dumps(json.loads((BUNDLE / "samples" / "input.json").read_text())[:1]).encode()


def post(port: int, data: bytes, timeout: float = 30.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/models/penguins/predict", body=data,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def model(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/v2/models/penguins")
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def log_lines(path: Path) -> list[tuple[float, str, str]]:
    """(wall-clock time, logger, message) of each timestamped line of the engine's log."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if m := _STAMP.match(line):
            when = dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(m[2]) / 1e3
            out.append((when, m[4], m[5]))
    return out


def phases(lines: list[tuple[float, str, str]], launched: float) -> dict[str, float]:
    """Seconds from launch to what the engine logged on its way to the first prediction."""
    marks = {"environment_checked": "environment ", "template_warm": "imported the model's",
             "app_started": "Application startup complete", "worker_ready": " ready in ",
             "model_ready": "@1.0.0 ready"}
    out: dict[str, float] = {}
    for when, _, message in lines:
        for name, words in marks.items():
            if name not in out and words in message:
                out[name] = round(when - launched, 3)
    return out


def memory(root: int) -> dict[str, float]:
    """MB of the engine's process tree: the sum of each process's peak resident set (how
    bench/run.py counts), of its resident set now, and of its proportional set (PSS: a page
    shared by n processes counts 1/n in each, so shared pages count once)."""
    out = {"peak_rss_mb": 0.0, "rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            full = p.memory_full_info()
            hwm = next(int(line.split()[1]) for line in Path(f"/proc/{p.pid}/status")
                       .read_text().splitlines() if line.startswith("VmHWM:"))
        except (psutil.Error, OSError, StopIteration):
            continue
        out["peak_rss_mb"] += hwm / 1024
        out["rss_mb"] += full.rss / 2**20
        out["pss_mb"] += full.pss / 2**20
        out["processes"] += 1
    return {k: round(v, 1) for k, v in out.items()}


def one_round(variant: Variant, port: int, kills: int, data: bytes, log: Path,
              busy: bool = False) -> dict[str, Any]:
    with open(log, "w") as f:
        launched = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen([*variant.command, "serve", str(BUNDLE), "--port", str(port),
                                 "--workers", "1"], cwd=ROOT, env=environ(variant.env),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    first, tries = None, 0
    while first is None:
        try:
            tries += 1
            if post(port, data, timeout=10) == 200:
                first = time.perf_counter() - started
            elif not busy:  # a 503 before the model is ready: polled every 10 ms, too
                time.sleep(0.01)
        except OSError:
            time.sleep(0.01)
        if proc.poll() is not None:
            raise SystemExit(f"baton serve exited with {proc.returncode}; see {log}")
    seen = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    for _ in range(20):  # after 20 more answers
        post(port, data)
    mem = memory(proc.pid)
    restarts = []
    for _ in range(kills):
        time.sleep(0.3)
        [worker] = [w for w in model(port)["parameters"]["workers"] if w["state"] == "ready"]
        killed = time.perf_counter()
        os.kill(worker["pid"], signal.SIGKILL)
        status = post(port, data)
        answered = time.perf_counter() - killed
        now = [w for w in model(port)["parameters"]["workers"] if w["state"] == "ready"]
        restarts.append({"answered_s": round(answered, 3), "status": status,
                         "new_pid": now[0]["pid"] if now else None, "old_pid": worker["pid"]})
        seen |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    stopping = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    stopped = time.perf_counter() - stopping
    deadline = time.monotonic() + 2
    while (left := [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status()
                    != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log_lines(log)
    workers = [m for _, lg, m in lines if lg == "baton.worker" and " ready in " in m]
    return {"variant": variant.name, "first_prediction_s": round(first, 3), "tries": tries,
            "phases": phases(lines, launched), "memory": mem,
            "restarts": restarts, "worker_ready_lines": workers, "exit_code": code,
            "stop_s": round(stopped, 3), "processes_seen": sorted(seen), "left": left}


# -- the worker alone, over the protocol ---------------------------------------------------

def frame(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">II", 4 + len(raw), len(raw)) + raw


def read(stream: Any) -> dict[str, Any]:
    size, hlen = struct.unpack(">II", stream.read(8))
    rest = stream.read(size - 4)
    return json.loads(rest[:hlen])  # type: ignore[no-any-return]


def environment_python() -> Path:
    envs = sorted((WORK / "home" / "envs").glob("*/bin/python"))
    if not envs:
        raise SystemExit("no environment: run without --worker-only first")
    return envs[0]


def load_message() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from baton.bundle.loader import open_bundle

    m = open_bundle(BUNDLE, WORK / "home" / "bundles").manifest
    return {"op": "load", "bundle_dir": str(BUNDLE), "model": m.model.to_dict(),
            "kind": m.contract.kind, "inputs": m.contract.input_names,
            "outputs": m.contract.output_names,
            "fields": [s.to_dict() for s in m.contract.inputs]}


def worker_alone(importtime: bool) -> dict[str, Any]:
    """The runner in the model's environment: seconds to hello, load, first and second
    predict; with ``importtime``, the load's imports by top-level package."""
    record = json.loads((BUNDLE / "samples" / "input.json").read_text())[0]
    columns = [{"name": k, "datatype": "JSON", "values": [v]} for k, v in record.items()]
    predict = {"op": "predict", "id": 1, "rows": 1, "columns": columns}
    flags = ["-X", "importtime"] if importtime else []
    env = dict(environ(), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    errors = WORK / "worker-stderr.txt"
    with open(errors, "wb") as err:  # a file: -X importtime would fill a pipe
        started = time.perf_counter()
        proc = subprocess.Popen([str(environment_python()), "-I", "-B", *flags, str(RUNNER)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                cwd=BUNDLE, env=env)
    assert proc.stdin and proc.stdout
    out: dict[str, Any] = {}
    read(proc.stdout)
    out["hello_s"] = round(time.perf_counter() - started, 3)
    t = time.perf_counter()
    proc.stdin.write(frame(load_message()))
    proc.stdin.flush()
    loaded = read(proc.stdout)
    out["load_s"] = round(time.perf_counter() - t, 3)
    assert loaded["ok"], loaded
    for name in ("first_predict_s", "second_predict_s"):
        t = time.perf_counter()
        proc.stdin.write(frame(predict))
        proc.stdin.flush()
        assert read(proc.stdout)["ok"]
        out[name] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    proc.stdin.close()
    proc.wait()
    out["exit_s"] = round(time.perf_counter() - t, 3)
    if importtime:
        tops: dict[str, float] = {}
        for line in errors.read_text().splitlines():
            parts = line.split("|")
            if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
                name = parts[2].rstrip()
                if not name.startswith("  ") and name.strip():  # top level: no indent
                    top = name.strip().split(".")[0]
                    tops[top] = tops.get(top, 0.0) + int(parts[1]) / 1e6
        out["imports_s"] = {k: round(v, 3) for k, v in sorted(tops.items(), key=lambda kv:
                                                               -kv[1])[:8]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--worker-rounds", type=int, default=3)
    ap.add_argument("--label", default="", help="a name for this run in results.json")
    ap.add_argument("--busy", action="store_true",
                    help="send the next request at once after a non-200 answer, as this "
                         "script did until 2026-12-07 (about 2,000 503s a second until the "
                         "model is ready, taking a core from the engine and the template)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME[=SRC][,VAR=VALUE...], repeatable: measured in turn each round "
                         "(default: the project's Baton, as 'baton')")
    args = ap.parse_args()
    variants = [Variant(v) for v in args.variant] or [Variant("baton")]
    WORK.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([str(BATON), "check", str(BUNDLE), "--iterations", "1", "--report",
                          str(WORK / "check.json")], env=environ(), capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(f"baton check failed:\n{res.stdout}\n{res.stderr}")
    data = body()
    rounds = []
    for i in range(args.rounds):
        for v in variants:
            r = one_round(v, free_port(), args.kills, data, WORK / f"serve-{v.name}-{i}.log",
                          args.busy)
            r["load_average"] = os.getloadavg()
            rounds.append(r)
            print(f"round {i + 1} {v.name}: first prediction {r['first_prediction_s']:.3f}s "
                  f"({r['tries']} tries) "
                  f"{r['phases']}; restarts answered after "
                  f"{[x['answered_s'] for x in r['restarts']]}s; {r['memory']}; stop "
                  f"{r['stop_s']}s; left {r['left']}", flush=True)
    alone = [worker_alone(importtime=False) for _ in range(args.worker_rounds)]
    alone.append(worker_alone(importtime=True))
    for a in alone:
        print(f"worker alone: {a}", flush=True)
    summary: dict[str, Any] = {"targets": TARGETS,
                               "leaked": [p for r in rounds for p in r["left"]]}
    for v in variants:
        mine = [r for r in rounds if r["variant"] == v.name]
        firsts = [r["first_prediction_s"] for r in mine]
        restarts = [x["answered_s"] for r in mine for x in r["restarts"]]
        summary[v.name] = {
            "first_prediction_s": {"median": statistics.median(firsts), "rounds": firsts},
            "restart_answered_s": {"median": statistics.median(restarts) if restarts else None,
                                   "all": restarts},
            "memory_mb": {k: statistics.median(r["memory"][k] for r in mine)
                          for k in ("peak_rss_mb", "rss_mb", "pss_mb", "processes")},
        }
    print(json.dumps(summary, indent=1))
    results = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "label": args.label, "busy_poll": args.busy, "machine": machine(),
               "source": source_state(), "load_average": os.getloadavg(),
               "summary": summary, "rounds": rounds,
               "worker_alone": alone}
    name = f"results-{args.label}.json" if args.label else "results.json"
    (WORK / name).write_text(json.dumps(results, indent=1))
    return 1 if summary["leaked"] else 0


if __name__ == "__main__":
    sys.exit(main())
