"""Side-by-side benchmark: Baton vs MLServer 1.7.1 vs a thin raw-ASGI floor (see README.md).

One command (``make bench``) trains the model, packages it for each system, starts each
system as its own server on 127.0.0.1, checks its answers, loads it with wrk using
identical settings, stops it by PID, then measures Baton's memory, start-up time and a
cold environment build. Results go to build/bench/results.json (and results.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    _busy,
    free_port,
    machine,
    set_autogroup_nice,
    source_state,
    wait_for_quiet,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = ROOT / "build" / "bench"
BIN = Path(sys.executable).parent
BATON = BIN / "baton"
UV = BIN / "uv"
MODEL_NAME = "logreg"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
MLSERVER_VERSION = "1.7.1"
UVLOOP_PIN = "0.21.0"  # MLServer's worker breaks with newer uvloop (see shared/INFRA.md)
PENGUINS = ROOT / "examples" / "penguins" / "bundle"

TARGETS = {
    "rps_1_vs_mlserver": 3.0,        # Baton 1-row req/s >= 3x MLServer
    "p99_1_vs_mlserver": 3.0,        # MLServer p99 / Baton p99 >= 3 (Baton p99 <= 1/3)
    "rows_100_vs_mlserver": 3.0,     # Baton 100-row rows/s >= 3x MLServer
    "peak_rss_mb": 250.0,            # engine + one worker, during the 1-row run
    "startup_s": 2.5,                # launch to first prediction, env cached, median of 3
    "cold_build_s": 10.0,            # penguins env from an empty uv cache
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- setup ------------------------------------------------------------------------------

def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    log("wrk is missing: apt-get install -y wrk")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True,
                         text=True)
    if res.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, check=True,
                       capture_output=True)
    path = shutil.which("wrk")
    if not path:
        sys.exit("wrk could not be installed")
    return path


def make_model() -> tuple[Any, np.ndarray]:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=2000, n_features=20, random_state=42)
    model = LogisticRegression().fit(X, y)
    return model, X.astype("float64")


def package_all(model: Any, X: np.ndarray) -> dict[str, Path]:
    """The Baton bundle, the MLServer model folder and the floor's joblib file."""
    import joblib

    import baton

    bundle = baton.package(model, sample=X, name=MODEL_NAME, version="1.0.0",
                           path=WORK / "logreg-bundle", overwrite=True)
    ml_models = WORK / "mlserver-models"
    if ml_models.exists():
        shutil.rmtree(ml_models)
    (ml_models / MODEL_NAME).mkdir(parents=True)
    joblib.dump(model, ml_models / MODEL_NAME / "model.joblib")
    (ml_models / MODEL_NAME / "model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}, indent=2) + "\n")
    floor_model = WORK / "floor-model.joblib"
    joblib.dump(model, floor_model)
    return {"bundle": bundle, "mlserver_models": ml_models, "floor_model": floor_model}


def ensure_mlserver_env() -> Path:
    import sklearn

    env_dir = WORK / "envs" / "mlserver"
    reqs = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}",
            f"uvloop=={UVLOOP_PIN}", f"scikit-learn=={sklearn.__version__}"]
    marker = env_dir / ".bench-requirements"
    if marker.exists() and marker.read_text().split() == reqs:
        return env_dir
    log(f"creating MLServer environment {env_dir.relative_to(ROOT)}: {' '.join(reqs)}")
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    if env_dir.exists():
        shutil.rmtree(env_dir)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(UV), "venv", "--quiet", "--python", py, str(env_dir)], env=env,
                   check=True)
    subprocess.run([str(UV), "pip", "install", "--quiet", "--python",
                    str(env_dir / "bin" / "python"), *reqs], env=env, check=True)
    marker.write_text("\n".join(reqs) + "\n")
    return env_dir


def baton_env() -> dict[str, str]:
    env = dict(os.environ, BATON_HOME=str(WORK / "baton-home"), UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure_baton_env(bundle: Path) -> dict[str, Any]:
    """Build (or find cached) the bundle's environment with ``baton check``; return its report."""
    report = WORK / "logreg-check.json"
    res = subprocess.run([str(BATON), "check", str(bundle), "--iterations", "10",
                          "--report", str(report)], env=baton_env(), capture_output=True,
                         text=True)
    if res.returncode != 0:
        sys.exit(f"baton check {bundle} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return json.loads(report.read_text())


# -- requests ---------------------------------------------------------------------------

def make_body(X: np.ndarray, rows: int) -> bytes:
    x = X[:rows]
    return orjson.dumps({"inputs": [{"name": "input-0", "shape": [rows, x.shape[1]],
                                     "datatype": "FP64", "data": x.reshape(-1).tolist()}],
                         "outputs": [{"name": "predict_proba"}]})


def post(port: int, body: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", INFER_PATH, body=body,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_answer(status: int, raw: bytes, expected: np.ndarray) -> str | None:
    """None when the answer is a 200 holding ``expected`` as predict_proba; else why not."""
    if status != 200:
        return f"HTTP {status}: {raw[:300]!r}"
    try:
        outs = {o["name"]: o for o in orjson.loads(raw)["outputs"]}
        out = outs["predict_proba"]
        got = np.asarray(out["data"], dtype=np.float64).reshape(-1)
    except (KeyError, ValueError, TypeError) as exc:
        return f"malformed answer ({exc!r}): {raw[:300]!r}"
    if list(out.get("shape", [])) != list(expected.shape):
        return f"shape {out.get('shape')} != {list(expected.shape)}"
    if got.size != expected.size or not np.allclose(got, expected.reshape(-1), rtol=0,
                                                    atol=1e-9):
        return f"probabilities differ: {got[:4]} vs {expected.reshape(-1)[:4]}"
    return None


# -- servers ----------------------------------------------------------------------------

class Server:
    """A system under test: its own process group, logs to a file, stopped by PID."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str],
                 grace: float) -> None:
        self.name, self.cmd, self.port, self.env, self.grace = name, cmd, port, env, grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = WORK / "logs" / f"{name}.log"
        self.started = 0.0
        self._known: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        logf.write(f"\n==== {dt.datetime.now().isoformat()} {' '.join(self.cmd)}\n".encode())
        logf.flush()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        self.remember()  # its new session is its own scheduling group: renice that too

    def wait_first_prediction(self, body: bytes, timeout: float = 120.0,
                              every: float = 0.02) -> float:
        """Seconds from launch to the first 200 on the infer route (polled every ``every``)."""
        assert self.proc is not None
        deadline = self.started + timeout
        while True:
            try:
                status, _ = post(self.port, body, timeout=2.0)
                if status == 200:
                    elapsed = time.perf_counter() - self.started
                    self.remember()
                    return elapsed
            except (OSError, http.client.HTTPException):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see "
                                   f"{self.log_path}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} gave no prediction within {timeout:.0f}s:\n"
                                   f"{self.log_tail()}")
            self.remember()
            time.sleep(every)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def tree(self) -> list[psutil.Process]:
        """The server process and all its descendants (e.g. Baton's worker)."""
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            if p.pid not in self._known:
                self._known[p.pid] = p
                set_autogroup_nice(p.pid, NICE)
        return procs

    def remember(self) -> None:
        self.tree()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds used so far by the server process itself and by its descendants
        (Baton: engine and worker; MLServer: main process and its workers)."""
        root = children = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if self.proc is not None and p.pid == self.proc.pid:
                root += t.user + t.system
            else:
                children += t.user + t.system
        return root, children

    def memory(self) -> dict[str, Any]:
        """VmHWM (peak RSS) and VmRSS of every process in the tree, in MB."""
        procs = []
        for p in self.tree():
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                cmd = " ".join(p.cmdline())[:120]
            except (OSError, psutil.NoSuchProcess):
                continue
            fields = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M))
            procs.append({"pid": p.pid, "cmd": cmd,
                          "hwm_mb": round(int(fields.get("VmHWM", 0)) / 1024, 1),
                          "rss_mb": round(int(fields.get("VmRSS", 0)) / 1024, 1)})
        return {"processes": procs,
                "peak_rss_mb": round(sum(p["hwm_mb"] for p in procs), 1),
                "rss_mb": round(sum(p["rss_mb"] for p in procs), 1)}

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period, then any straggler
        seen in the tree (Baton's workers run in their own sessions)."""
        if self.proc is None:
            return
        self.remember()
        pid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                # The leader is alive and not reaped, so its group id is still ours.
                os.killpg(pid, signal.SIGKILL)
                self.proc.wait()
        leftovers = [p for p in self._known.values() if p.is_running()]
        for p in leftovers:
            try:
                p.kill()  # psutil checks the create time: never a recycled PID
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=5)
        self.proc = None
        self._known.clear()


#: Niceness of the benchmark, its servers and wrk (set by --nice).
NICE = 0


def make_server(system: str, paths: dict[str, Path], ml_env: Path | None) -> Server:
    if system == "baton":
        port = free_port()
        return Server("baton", [str(BATON), "serve", str(paths["bundle"]), "--port", str(port)],
                      port, baton_env(), grace=15.0)
    if system == "mlserver":
        assert ml_env is not None
        port, grpc, metrics = free_port(), free_port(), free_port()
        env = dict(os.environ, MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(port),
                   MLSERVER_GRPC_PORT=str(grpc), MLSERVER_METRICS_PORT=str(metrics),
                   PATH=f"{ml_env / 'bin'}:{os.environ.get('PATH', '')}",
                   VIRTUAL_ENV=str(ml_env))
        return Server("mlserver", [str(ml_env / "bin" / "mlserver"), "start",
                                   str(paths["mlserver_models"])], port, env, grace=3.0)
    if system == "floor":
        port = free_port()
        env = dict(os.environ, FLOOR_MODEL=str(paths["floor_model"]), FLOOR_NAME=MODEL_NAME)
        return Server("floor", [str(BIN / "uvicorn"), "floor:app", "--app-dir", str(BENCH),
                                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                                "--log-level", "warning"], port, env, grace=5.0)
    raise ValueError(system)


# -- load -------------------------------------------------------------------------------

LUA = """\
-- POST one fixed V2 body; print wrk's own summary as JSON at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"mean_us":%.1f,"max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
"""


def write_lua(rows: int, body: bytes) -> Path:
    body_path = WORK / f"body-{rows}.json"
    body_path.write_bytes(body)
    lua = WORK / f"post-{rows}.lua"
    lua.write_text(LUA.format(body=body_path))
    return lua


def run_wrk(wrk: str, port: int, lua: Path, duration: int, threads: int,
            connections: int) -> dict[str, Any]:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
           "-s", str(lua), f"http://127.0.0.1:{port}{INFER_PATH}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = res.stdout
    m = re.search(r"^WRK_JSON (\{.*\})$", out, re.M)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({res.returncode}):\n{out}\n{res.stderr}")
    s = json.loads(m.group(1))
    text_rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    secs = s["duration_us"] / 1e6
    errors = {"non_2xx": max(int(non2xx.group(1)) if non2xx else 0, s["status"]),
              "connect": s["connect"], "read": s["read"], "write": s["write"],
              "timeout": s["timeout"]}
    if sock:  # the text summary and the Lua summary must agree
        errors["socket_text"] = [int(g) for g in sock.groups()]
    return {
        "requests": s["requests"], "seconds": round(secs, 3),
        "rps": round(s["requests"] / secs, 1),
        "rps_wrk_text": float(text_rps.group(1)) if text_rps else None,
        "p50_ms": s["p50_us"] / 1000, "p90_ms": s["p90_us"] / 1000,
        "p99_ms": s["p99_us"] / 1000, "p999_ms": s["p999_us"] / 1000,
        "mean_ms": round(s["mean_us"] / 1000, 3), "max_ms": s["max_us"] / 1000,
        "errors": errors,
        "error_count": errors["non_2xx"] + s["connect"] + s["read"] + s["write"] + s["timeout"],
        "wrk_cpu_s": round((after.ru_utime - before.ru_utime)
                           + (after.ru_stime - before.ru_stime), 2),
        "raw": out,
    }


def bench_system(system: str, server: Server, wrk: str, bodies: dict[int, bytes],
                 expected: dict[int, np.ndarray], luas: dict[int, Path],
                 args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"sizes": {}}
    server.start()
    try:
        result["first_prediction_s"] = round(
            server.wait_first_prediction(bodies[min(bodies)]), 3)
        log(f"{system}: first prediction {result['first_prediction_s']:.2f}s after launch "
            f"(pid {server.proc.pid if server.proc else '?'})")
        for rows, body in bodies.items():  # answers must be right before any load
            why = check_answer(*post(server.port, body), expected[rows])
            if why:
                raise RuntimeError(f"{system} answered {rows}-row request wrongly: {why}")
        result["correct"] = True
        for rows in bodies:
            if args.quiet_wait > 0:
                quiet = wait_for_quiet(args.quiet_wait)
                if quiet["background_before_pct"] >= 25:
                    log(f"the machine is still busy ({quiet['background_before_pct']:.0f}% of "
                        f"a core) after {quiet['quiet_wait_s']:.0f}s: measuring anyway")
            if args.warmup > 0:
                run_wrk(wrk, server.port, luas[rows], args.warmup, args.threads,
                        args.connections)
            (root0, kids0), sys0 = server.cpu_seconds(), psutil.cpu_times()
            r = run_wrk(wrk, server.port, luas[rows], args.duration, args.threads,
                        args.connections)
            root1, kids1 = server.cpu_seconds()
            r["server_cpu_s"] = round(root1 - root0 + kids1 - kids0, 2)
            r["main_process_cpu_pct"] = round(100 * (root1 - root0) / r["seconds"], 1)
            r["child_processes_cpu_pct"] = round(100 * (kids1 - kids0) / r["seconds"], 1)
            r.update(machine_cpu(sys0, psutil.cpu_times(), r["seconds"],
                                 r["server_cpu_s"] + r["wrk_cpu_s"]))
            r["server_cpu_pct"] = round(100 * r["server_cpu_s"] / r["seconds"], 1)
            r["server_cpu_us_per_req"] = round(1e6 * r["server_cpu_s"] / max(r["requests"], 1),
                                               1)
            if args.quiet_wait > 0:
                r.update(quiet)
            r["rows"] = rows
            r["rows_per_s"] = round(r["rps"] * rows, 1)
            r["flagged"] = r["error_count"] > 0
            if rows == 1:
                r["memory"] = server.memory()
            # a last answer after the load: still correct?
            why = check_answer(*post(server.port, bodies[rows]), expected[rows])
            r["correct_after"] = why is None
            if why:
                r["flagged"] = True
                r["after_error"] = why
            result["sizes"][str(rows)] = r
            flag = "  ** FLAGGED: errors **" if r["flagged"] else ""
            log(f"{system} {rows:>3} rows: {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                f"p99 {r['p99_ms']:.2f} ms  errors {r['error_count']}  server CPU "
                f"{r['server_cpu_pct']:.0f}% ({r['server_cpu_us_per_req']:.0f} us/req)  "
                f"background CPU {r['background_cpu_pct']:.0f}%{flag}")
        result["processes"] = len(server.tree())
    finally:
        server.stop()
    return result


def machine_cpu(t0: Any, t1: Any, seconds: float, ours: float) -> dict[str, float]:
    """CPU the rest of the machine used during a run (other tenants, noisy neighbours), in
    % of one core, and the hypervisor's steal time: both make a run less trustworthy."""
    total = _busy(t1) - _busy(t0)  # process time only: softirq (loopback TCP) is ours too
    return {"machine_cpu_pct": round(100 * total / seconds, 1),
            "background_cpu_pct": round(max(0.0, 100 * (total - ours) / seconds), 1),
            "softirq_pct": round(100 * (t1.softirq - t0.softirq) / seconds, 1),
            "steal_pct": round(100 * (t1.steal - t0.steal) / seconds, 1)}


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per system and size: the round with the median req/s (every round's
    req/s, p99 and background CPU are kept beside it)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    out: dict[str, Any] = {
        "rounds": len(runs), "failed_rounds": len(runs) - len(ok),
        "errors": [r["error"] for r in runs if "error" in r],
        "correct": all(r.get("correct") for r in ok),
        "first_prediction_s": round(statistics.median(r["first_prediction_s"] for r in ok), 3),
        "first_prediction_all_s": [r["first_prediction_s"] for r in ok],
        "processes": ok[0].get("processes"), "sizes": {}}
    for size in ok[0]["sizes"]:
        per = sorted((r["sizes"][size] for r in ok if size in r["sizes"]),
                     key=lambda x: x["rps"])
        chosen = dict(per[(len(per) - 1) // 2])
        chosen["all_rounds"] = [{k: x[k] for k in ("rps", "p50_ms", "p99_ms", "error_count",
                                                   "server_cpu_us_per_req",
                                                   "background_cpu_pct", "steal_pct")}
                                for x in per]
        chosen["flagged"] = any(x["flagged"] for x in per)
        out["sizes"][size] = chosen
    return out


# -- Baton extras ----------------------------------------------------------------------

def measure_startup(paths: dict[str, Path], body: bytes, runs: int) -> dict[str, Any]:
    times = []
    for i in range(runs):
        server = make_server("baton", paths, None)
        server.start()
        try:
            times.append(round(server.wait_first_prediction(body, every=0.02), 3))
        finally:
            server.stop()
        log(f"baton start {i + 1}/{runs}: first prediction after {times[-1]:.2f}s")
    return {"runs_s": times, "median_s": statistics.median(times)}


def measure_cold_build() -> dict[str, Any]:
    tmp_cache = Path(tempfile.mkdtemp(prefix="bench-uv-cache-"))
    tmp_home = Path(tempfile.mkdtemp(prefix="bench-baton-home-"))
    report = WORK / "check.json"
    env = dict(os.environ, UV_CACHE_DIR=str(tmp_cache), BATON_HOME=str(tmp_home),
               UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    try:
        t0 = time.perf_counter()
        res = subprocess.run([str(BATON), "check", str(PENGUINS), "--iterations", "10",
                              "--report", str(report)], env=env, capture_output=True, text=True,
                             cwd=ROOT)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp_cache, ignore_errors=True)
        shutil.rmtree(tmp_home, ignore_errors=True)
    out: dict[str, Any] = {"exit_code": res.returncode, "check_wall_s": round(wall, 2),
                           "report": str(report.relative_to(ROOT))}
    try:
        rep = json.loads(report.read_text())
        envm = rep["measurements"]["environment"]
        out["build_seconds"] = envm["build_seconds"]
        out["cached"] = envm["cached"]
        out["passed"] = rep.get("passed")
    except (OSError, KeyError, ValueError) as exc:
        out["error"] = f"no build_seconds in the report ({exc!r}): {res.stderr[-800:]}"
    return out


# -- report -----------------------------------------------------------------------------

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def compute_ratios(systems: dict[str, Any]) -> dict[str, Any]:
    def get(system: str, rows: int, key: str) -> float | None:
        return systems.get(system, {}).get("sizes", {}).get(str(rows), {}).get(key)

    r: dict[str, Any] = {}
    r["rps_1_baton_over_mlserver"] = ratio(get("baton", 1, "rps"), get("mlserver", 1, "rps"))
    r["p99_1_mlserver_over_baton"] = ratio(get("mlserver", 1, "p99_ms"),
                                           get("baton", 1, "p99_ms"))
    r["rows_100_baton_over_mlserver"] = ratio(get("baton", 100, "rows_per_s"),
                                              get("mlserver", 100, "rows_per_s"))
    r["p99_100_mlserver_over_baton"] = ratio(get("mlserver", 100, "p99_ms"),
                                             get("baton", 100, "p99_ms"))
    for rows in (1, 100):
        r[f"rps_{rows}_baton_over_floor"] = ratio(get("baton", rows, "rps"),
                                                  get("floor", rows, "rps"))
        r[f"p99_{rows}_baton_over_floor"] = ratio(get("baton", rows, "p99_ms"),
                                                  get("floor", rows, "p99_ms"))
    return r


def verdicts(ratios: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    def at_least(v: float | None, t: float) -> dict[str, Any]:
        return {"measured": v, "target": f">= {t:g}", "met": None if v is None else v >= t}

    def at_most(v: float | None, t: float) -> dict[str, Any]:
        return {"measured": v, "target": f"<= {t:g}", "met": None if v is None else v <= t}

    return {
        "1-row req/s, Baton / MLServer": at_least(ratios.get("rps_1_baton_over_mlserver"),
                                                  TARGETS["rps_1_vs_mlserver"]),
        "1-row p99, MLServer / Baton": at_least(ratios.get("p99_1_mlserver_over_baton"),
                                                TARGETS["p99_1_vs_mlserver"]),
        "100-row rows/s, Baton / MLServer": at_least(
            ratios.get("rows_100_baton_over_mlserver"), TARGETS["rows_100_vs_mlserver"]),
        "Baton peak RSS, engine + worker (MB)": at_most(extras.get("peak_rss_mb"),
                                                        TARGETS["peak_rss_mb"]),
        "Baton launch to first prediction (s, median)": at_most(
            extras.get("startup", {}).get("median_s"), TARGETS["startup_s"]),
        "penguins env cold build (s)": at_most(extras.get("cold_build", {}).get("build_seconds"),
                                              TARGETS["cold_build_s"]),
    }


def render(results: dict[str, Any]) -> str:
    src = results.get("baton_source", {})
    dirty = src.get("uncommitted_changes") or []
    lines = [f"Baton at commit {src.get('commit', '?')[:12]}"
             + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "") + ".",
             f"Measured {results['date']} on {results['machine']['description']}; wrk "
             f"-t{results['settings']['threads']} -c{results['settings']['connections']} "
             f"-d{results['settings']['duration_s']:g}s --latency (after a "
             f"{results['settings']['warmup_s']:g}s warm-up), same bodies for every system; "
             f"median of {results['settings']['repeat']} round(s); niceness "
             f"{results['settings']['nice']}. 'other CPU' is what the rest of the machine "
             "used during the run, in % of one core.", "",
             "| system | rows/req | req/s | rows/s | p50 ms | p99 ms | errors | server CPU % "
             "(main + children) | server CPU µs/req | other CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for system, res in results["systems"].items():
        for rows, r in res.get("sizes", {}).items():
            err = f"{r['error_count']}" + (" FLAGGED" if r["flagged"] else "")
            lines.append(f"| {system} | {rows} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {err} | "
                         f"{r['server_cpu_pct']:.0f} ({r['main_process_cpu_pct']:.0f} + "
                         f"{r['child_processes_cpu_pct']:.0f}) | "
                         f"{r['server_cpu_us_per_req']:.0f} | "
                         f"{r['background_cpu_pct']:.0f} |")
    lines += ["", "| target | measured | target | met |", "|---|---:|---:|---|"]
    for name, v in results["targets"].items():
        met = {True: "yes", False: "**NO**", None: "not measured"}[v["met"]]
        meas = "—" if v["measured"] is None else f"{v['measured']:g}"
        lines.append(f"| {name} | {meas} | {v['target']} | {met} |")
    r = results["ratios"]
    def x(key: str) -> str:
        return "—" if r.get(key) is None else f"{r[key]}"

    lines += ["", f"Baton / floor: 1-row req/s {x('rps_1_baton_over_floor')}, p99 "
              f"{x('p99_1_baton_over_floor')}; 100-row req/s {x('rps_100_baton_over_floor')}, "
              f"p99 {x('p99_100_baton_over_floor')}."]
    by_round = results.get("ratios_by_round", [])
    if len(by_round) > 1:
        keys = [("rps_1_baton_over_mlserver", "1-row req/s Baton/MLServer"),
                ("p99_1_mlserver_over_baton", "1-row p99 MLServer/Baton"),
                ("rows_100_baton_over_mlserver", "100-row rows/s Baton/MLServer")]
        lines.append("Same ratios round by round: " + "; ".join(
            f"{label} {[x.get(k) for x in by_round]}" for k, label in keys) + ".")
    ex = results.get("baton_extras", {})
    if ex.get("memory"):
        procs = ", ".join(f"pid {p['pid']} {p['hwm_mb']} MB" for p in ex["memory"]["processes"])
        lines.append(f"Baton peak RSS (VmHWM) during the 1-row run: "
                     f"{ex['memory']['peak_rss_mb']} MB ({procs}).")
    if ex.get("startup"):
        lines.append(f"Baton launch to first prediction: {ex['startup']['runs_s']} s, "
                     f"median {ex['startup']['median_s']} s.")
    if ex.get("cold_build"):
        cb = ex["cold_build"]
        lines.append(f"Penguins environment, cold uv cache: build_seconds "
                     f"{cb.get('build_seconds')} s (whole check {cb.get('check_wall_s')} s, "
                     f"exit {cb.get('exit_code')}).")
    for system, res in results["systems"].items():
        mem = res.get("sizes", {}).get("1", {}).get("memory")
        if mem and system != "baton":
            lines.append(f"{system} peak RSS (VmHWM, all {len(mem['processes'])} processes) "
                         f"during the 1-row run: {mem['peak_rss_mb']} MB.")
    firsts = {s: r.get("first_prediction_s") for s, r in results["systems"].items()}
    lines.append("Launch to first prediction (load-test starts, median of rounds): "
                 + ", ".join(f"{s} {v} s" for s, v in firsts.items()) + ".")
    return "\n".join(lines)


def versions(ml_env: Path | None, wrk: str) -> dict[str, str]:
    import importlib.metadata as md

    v = {d: md.version(d) for d in ("baton", "scikit-learn", "numpy", "uvicorn", "uvloop",
                                    "orjson")}
    wrk_v = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    v["wrk"] = (wrk_v.stdout or wrk_v.stderr).split("\n")[0].strip()
    if ml_env is not None:
        v["mlserver"] = MLSERVER_VERSION
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="seconds of unmeasured wrk load before each run (2; 0: none)")
    ap.add_argument("--only", default="baton,mlserver,floor",
                    help="systems to measure, comma-separated (baton,mlserver,floor)")
    ap.add_argument("--sizes", default="1,100", help="rows per request, comma-separated (1,100)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds over every system; the median round is reported (3)")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each run, wait up to this many seconds for other processes "
                         "to use < 25%% of a core (0: don't wait)")
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="run the benchmark, every server and wrk at this niceness, so that "
                         "other tenants of a shared machine disturb it less (-10 as root; "
                         "0: unchanged)")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    ap.add_argument("--startup-runs", type=int, default=3,
                    help="Baton starts timed for launch-to-first-prediction (3; 0: skip)")
    ap.add_argument("--no-cold-build", action="store_true",
                    help="skip the cold-cache environment build of examples/penguins")
    ap.add_argument("--output", type=Path, default=WORK / "results.json")
    args = ap.parse_args(argv)

    systems = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(systems) - {"baton", "mlserver", "floor"}
    if unknown:
        ap.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if args.duration < 1 or args.warmup < 0 or args.repeat < 1:
        ap.error("--duration and --repeat must be >= 1, --warmup >= 0 (whole seconds)")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes needs positive row counts")

    global NICE
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
        set_autogroup_nice("self", args.nice)  # wrk runs in this session's group
        NICE = args.nice
    WORK.mkdir(parents=True, exist_ok=True)
    wrk = ensure_wrk()
    log("training LogisticRegression on make_classification(2000, 20, random_state=42)")
    model, X = make_model()
    paths = package_all(model, X)
    bodies = {n: make_body(X, n) for n in sizes}
    expected = {n: model.predict_proba(X[:n]) for n in sizes}
    luas = {n: write_lua(n, bodies[n]) for n in sizes}

    ml_env = ensure_mlserver_env() if "mlserver" in systems else None
    if "baton" in systems or args.startup_runs:
        log("building/finding the bundle's environment with baton check")
        check = ensure_baton_env(paths["bundle"])
        log(f"baton check passed: environment {check['measurements']['environment']}")

    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(ml_env, wrk), "baton_source": source_state(),
        "load_before": list(os.getloadavg()),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "repeat": args.repeat, "nice": os.getpriority(os.PRIO_PROCESS, 0),
                     "threads": args.threads, "connections": args.connections,
                     "sizes": sizes, "request": "V2 infer, FP64 [N,20], flat data",
                     "body_bytes": {str(n): len(b) for n, b in bodies.items()}},
        "systems": {}, "baton_extras": {},
    }
    failed = False
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for n in range(args.repeat):  # whole rounds, so that noise spreads over every system
        for system in systems:
            server = make_server(system, paths, ml_env)
            log(f"round {n + 1}/{args.repeat}: starting {system} on port {server.port}")
            try:
                rounds[system].append(bench_system(system, server, wrk, bodies, expected,
                                                   luas, args))
            except Exception as exc:  # noqa: BLE001 - report it and go on with the others
                failed = True
                log(f"{system} FAILED: {exc}")
                rounds[system].append({"error": str(exc), "sizes": {}})
    for system, runs in rounds.items():
        results["systems"][system] = merge_rounds(runs)
    extras = results["baton_extras"]
    mems = [r["sizes"]["1"]["memory"] for r in rounds.get("baton", []) if "1" in r["sizes"]]
    if mems:
        worst = max(mems, key=lambda m: m["peak_rss_mb"])  # the largest peak of any round
        extras["memory"] = worst
        extras["peak_rss_mb"] = worst["peak_rss_mb"]
    if args.startup_runs > 0:
        extras["startup"] = measure_startup(paths, bodies[min(sizes)], args.startup_runs)
    if not args.no_cold_build:
        log("building examples/penguins/bundle's environment from an empty uv cache")
        extras["cold_build"] = measure_cold_build()
        log(f"cold build: {extras['cold_build']}")

    results["ratios"] = compute_ratios(results["systems"])
    results["ratios_by_round"] = [compute_ratios({s: rounds[s][i] for s in systems})
                                  for i in range(args.repeat)]
    results["targets"] = verdicts(results["ratios"], extras)
    flagged = [f"{s} {n}" for s, r in results["systems"].items()
               for n, x in r.get("sizes", {}).items() if x["flagged"]]
    results["flagged_runs"] = flagged
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    args.output.with_suffix(".md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nresults: {args.output}")
    if flagged:
        print(f"FLAGGED runs (non-2xx or socket errors, or wrong answers): {', '.join(flagged)}")
    return 1 if failed or flagged else 0


if __name__ == "__main__":
    sys.exit(main())
