"""Side-by-side benchmark: Baton vs MLServer 1.7.1 vs a thin raw-ASGI floor (see README.md).

One command (``make bench``) trains the models (``logreg``: LogisticRegression, ``gbm``:
GradientBoostingClassifier), packages each for each system, starts each system as its own
server on 127.0.0.1, checks its answers, loads it with wrk using identical settings, stops
it by PID, then measures Baton's memory (peak RSS and PSS), start-up time and a cold
environment build. Results go to build/bench/results.json (and results.md), per model.
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
#: The models a run can measure (``--models``), each fitted on the same make_classification
#: data with scikit-learn's default settings.
MODELS = ("logreg", "gbm")
#: The default model (bench/faults.py and bench/profile.py import these two).
MODEL_NAME = "logreg"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
MLSERVER_VERSION = "1.7.1"
UVLOOP_PIN = "0.21.0"  # MLServer's worker breaks with newer uvloop (see shared/INFRA.md)
PENGUINS = ROOT / "examples" / "penguins" / "bundle"

TARGETS = {
    "rps_1_vs_mlserver": 3.0,        # Baton 1-row req/s >= 3x MLServer
    "p99_1_vs_mlserver": 3.0,        # MLServer p99 / Baton p99 >= 3 (Baton p99 <= 1/3)
    "rows_100_vs_mlserver": 3.0,     # Baton 100-row rows/s >= 3x MLServer
    "peak_rss_mb": 250.0,            # sum of VmHWM over Baton's tree, after the 1-row run
    # issue 15, per model:
    "rows_100_vs_floor": 1.5,        # Baton 100-row rows/s >= 1.5x the floor's
    "rps_1_vs_floor": 2.5,           # Baton 1-row req/s >= 2.5x the floor's
    "p99_1_vs_floor": 1.0,           # Baton 1-row p99 / floor 1-row p99 <= 1
    "p99_100_vs_floor": 1.0,         # Baton 100-row p99 / floor 100-row p99 <= 1
    "pss_mb": 200.0,                 # engine + template + worker(s), PSS sum, same moment
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


def make_models(names: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The named models, each fitted on make_classification(2000, 20, random_state=42)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=2000, n_features=20, random_state=42)
    factories = {"logreg": LogisticRegression,
                 "gbm": lambda: GradientBoostingClassifier(random_state=42)}
    return {name: factories[name]().fit(X, y) for name in names}, X.astype("float64")


def make_model() -> tuple[Any, np.ndarray]:
    """The default model, ``logreg`` (bench/faults.py uses it)."""
    models, X = make_models([MODEL_NAME])
    return models[MODEL_NAME], X


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def package_all(models: dict[str, Any], X: np.ndarray) -> dict[str, dict[str, Path]]:
    """Per model: its Baton bundle, the MLServer model folder (one folder holds every model;
    MLServer loads them all) and the floor's joblib file."""
    import joblib

    import baton

    ml_models = WORK / "mlserver-models"
    if ml_models.exists():
        shutil.rmtree(ml_models)
    paths: dict[str, dict[str, Path]] = {}
    for name, model in models.items():
        bundle = baton.package(model, sample=X, name=name, version="1.0.0",
                               path=WORK / f"{name}-bundle", overwrite=True)
        (ml_models / name).mkdir(parents=True)
        joblib.dump(model, ml_models / name / "model.joblib")
        (ml_models / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"}}, indent=2) + "\n")
        floor_model = WORK / f"floor-{name}.joblib"
        joblib.dump(model, floor_model)
        paths[name] = {"bundle": bundle, "mlserver_models": ml_models,
                       "floor_model": floor_model}
    return paths


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


def ensure_baton_env(bundle: Path, model: str = MODEL_NAME) -> dict[str, Any]:
    """Build (or find cached) the bundle's environment with ``baton check``; return its report."""
    report = WORK / f"{model}-check.json"
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


def post(port: int, body: bytes, timeout: float = 5.0,
         path: str = INFER_PATH) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body,
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
                 grace: float, path: str = INFER_PATH) -> None:
        self.name, self.cmd, self.port, self.env, self.grace = name, cmd, port, env, grace
        self.path = path  # the model's infer route
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
                status, _ = post(self.port, body, timeout=2.0, path=self.path)
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
        """VmHWM (peak RSS) and VmRSS (/proc/PID/status), PSS and USS (/proc/PID/smaps_rollup)
        of every process in the tree, in MB. Baton's tree is engine + worker template + the
        workers forked from it: the sum of peak RSS counts the pages a worker still shares
        with the template once in each; PSS counts a page shared by n processes 1/n in each,
        so the sum of PSS counts it once."""
        procs = []
        root_pid = self.proc.pid if self.proc is not None else None
        tree = self.tree()
        for p in tree:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                cmd = " ".join(p.cmdline())[:120]
                ppid = p.ppid()
            except (OSError, psutil.NoSuchProcess):
                continue
            try:
                rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
            except OSError:  # gone meanwhile, or not ours to read: no PSS for it
                rollup = ""
            fields = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M))
            pss = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
            private = re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+) kB", rollup, re.M)
            if p.pid == root_pid:
                role = "main"
            else:  # Baton: the template has a child (the forked worker), the worker none
                role = "parent" if any(q.pid != p.pid and _ppid(q) == p.pid
                                       for q in tree) else "leaf"
            procs.append({"pid": p.pid, "ppid": ppid, "role": role, "cmd": cmd,
                          "hwm_mb": round(int(fields.get("VmHWM", 0)) / 1024, 1),
                          "rss_mb": round(int(fields.get("VmRSS", 0)) / 1024, 1),
                          "pss_mb": round(int(pss.group(1)) / 1024, 1) if pss else None,
                          # USS: the pages only this process maps (what it alone costs)
                          "uss_mb": round(sum(map(int, private)) / 1024, 1) if pss else None})
        return {"processes": procs,
                "peak_rss_mb": round(sum(p["hwm_mb"] for p in procs), 1),
                "rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
                "pss_mb": round(sum(p["pss_mb"] or 0.0 for p in procs), 1)}

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


def _ppid(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.NoSuchProcess:
        return None


#: Niceness of the benchmark, its servers and wrk (set by --nice).
NICE = 0


def make_server(system: str, paths: dict[str, Path], ml_env: Path | None,
                model: str = MODEL_NAME) -> Server:
    """``system`` serving ``model``; ``paths`` are that model's (see package_all)."""
    path = infer_path(model)
    if system == "baton":
        port = free_port()
        return Server(f"baton-{model}", [str(BATON), "serve", str(paths["bundle"]), "--port",
                                         str(port)], port, baton_env(), grace=15.0, path=path)
    if system == "mlserver":
        assert ml_env is not None
        port, grpc, metrics = free_port(), free_port(), free_port()
        env = dict(os.environ, MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(port),
                   MLSERVER_GRPC_PORT=str(grpc), MLSERVER_METRICS_PORT=str(metrics),
                   PATH=f"{ml_env / 'bin'}:{os.environ.get('PATH', '')}",
                   VIRTUAL_ENV=str(ml_env))
        return Server(f"mlserver-{model}", [str(ml_env / "bin" / "mlserver"), "start",
                                            str(paths["mlserver_models"])], port, env,
                      grace=3.0, path=path)
    if system == "floor":
        port = free_port()
        env = dict(os.environ, FLOOR_MODEL=str(paths["floor_model"]), FLOOR_NAME=model)
        return Server(f"floor-{model}", [str(BIN / "uvicorn"), "floor:app", "--app-dir",
                                         str(BENCH), "--host", "127.0.0.1", "--port", str(port),
                                         "--workers", "1", "--loop", "uvloop", "--http",
                                         "httptools", "--no-access-log", "--log-level",
                                         "warning"], port, env, grace=5.0, path=path)
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


def write_lua(rows: int, body: bytes, model: str = MODEL_NAME) -> Path:
    # The default model's files keep their old names: bench/profile.py, tracing.py and
    # overhead.sh read body-N.json and post-N.lua.
    stem = f"{rows}" if model == MODEL_NAME else f"{model}-{rows}"
    body_path = WORK / f"body-{stem}.json"
    body_path.write_bytes(body)
    lua = WORK / f"post-{stem}.lua"
    lua.write_text(LUA.format(body=body_path))
    return lua


def run_wrk(wrk: str, port: int, lua: Path, duration: int, threads: int,
            connections: int, path: str = INFER_PATH) -> dict[str, Any]:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
           "-s", str(lua), f"http://127.0.0.1:{port}{path}"]
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
        log(f"{server.name}: first prediction {result['first_prediction_s']:.2f}s after launch "
            f"(pid {server.proc.pid if server.proc else '?'})")
        for rows, body in bodies.items():  # answers must be right before any load
            why = check_answer(*post(server.port, body, path=server.path), expected[rows])
            if why:
                raise RuntimeError(f"{server.name} answered {rows}-row request wrongly: "
                                   f"{why}")
        result["correct"] = True
        for rows in bodies:
            if args.quiet_wait > 0:
                quiet = wait_for_quiet(args.quiet_wait)
                if quiet["background_before_pct"] >= 25:
                    log(f"the machine is still busy ({quiet['background_before_pct']:.0f}% of "
                        f"a core) after {quiet['quiet_wait_s']:.0f}s: measuring anyway")
            if args.warmup > 0:
                run_wrk(wrk, server.port, luas[rows], args.warmup, args.threads,
                        args.connections, server.path)
            (root0, kids0), sys0 = server.cpu_seconds(), psutil.cpu_times()
            r = run_wrk(wrk, server.port, luas[rows], args.duration, args.threads,
                        args.connections, server.path)
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
            why = check_answer(*post(server.port, bodies[rows], path=server.path),
                               expected[rows])
            r["correct_after"] = why is None
            if why:
                r["flagged"] = True
                r["after_error"] = why
            result["sizes"][str(rows)] = r
            flag = "  ** FLAGGED: errors **" if r["flagged"] else ""
            log(f"{server.name} {rows:>3} rows: {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
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
    return {"model": MODEL_NAME, "runs_s": times, "median_s": statistics.median(times)}


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
    r["rows_100_baton_over_floor"] = ratio(get("baton", 100, "rows_per_s"),
                                           get("floor", 100, "rows_per_s"))
    return r


def _at_least(v: float | None, t: float) -> dict[str, Any]:
    return {"measured": v, "target": f">= {t:g}", "met": None if v is None else v >= t}


def _at_most(v: float | None, t: float) -> dict[str, Any]:
    return {"measured": v, "target": f"<= {t:g}", "met": None if v is None else v <= t}


#: The memory verdicts' names (render_model() explains them below the targets table). Both
#: sums cover Baton's whole tree: engine + template + every worker (by default a second
#: worker is started when it fits, so the PSS sum is an upper bound for engine + one worker).
PEAK_RSS_TARGET = "Baton peak RSS, VmHWM sum: engine + template + worker(s) (MB)"
PSS_TARGET = "Baton engine + one worker: engine + template + worker(s), PSS sum (MB)"


def verdicts(ratios: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    """One model's targets: against MLServer, against the floor (issue 15) and memory."""
    return {
        "1-row req/s, Baton / MLServer": _at_least(ratios.get("rps_1_baton_over_mlserver"),
                                                   TARGETS["rps_1_vs_mlserver"]),
        "1-row p99, MLServer / Baton": _at_least(ratios.get("p99_1_mlserver_over_baton"),
                                                 TARGETS["p99_1_vs_mlserver"]),
        "100-row rows/s, Baton / MLServer": _at_least(
            ratios.get("rows_100_baton_over_mlserver"), TARGETS["rows_100_vs_mlserver"]),
        "100-row rows/s, Baton / floor": _at_least(ratios.get("rows_100_baton_over_floor"),
                                                   TARGETS["rows_100_vs_floor"]),
        "1-row req/s, Baton / floor": _at_least(ratios.get("rps_1_baton_over_floor"),
                                                TARGETS["rps_1_vs_floor"]),
        "1-row p99, Baton / floor": _at_most(ratios.get("p99_1_baton_over_floor"),
                                             TARGETS["p99_1_vs_floor"]),
        "100-row p99, Baton / floor": _at_most(ratios.get("p99_100_baton_over_floor"),
                                               TARGETS["p99_100_vs_floor"]),
        PEAK_RSS_TARGET: _at_most(memory.get("peak_rss_mb"), TARGETS["peak_rss_mb"]),
        PSS_TARGET: _at_most(memory.get("pss_mb"), TARGETS["pss_mb"]),
    }


def run_verdicts(extras: dict[str, Any]) -> dict[str, Any]:
    """The targets measured once per run (start-up with the logreg bundle, cold build)."""
    return {
        "Baton launch to first prediction (s, median)": _at_most(
            extras.get("startup", {}).get("median_s"), TARGETS["startup_s"]),
        "penguins env cold build (s)": _at_most(
            extras.get("cold_build", {}).get("build_seconds"), TARGETS["cold_build_s"]),
    }


def baton_memory(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Baton's memory after the 1-row run, worst round: the largest peak-RSS sum and,
    separately, the largest PSS sum (each with its round's per-process figures)."""
    mems = [r["sizes"]["1"]["memory"] for r in runs if "1" in r.get("sizes", {})]
    if not mems:
        return {}
    worst_rss = max(mems, key=lambda m: m["peak_rss_mb"])
    worst_pss = max(mems, key=lambda m: m["pss_mb"])
    workers = sorted((p for p in worst_pss["processes"] if p["role"] == "leaf"),
                     key=lambda p: p["pid"])
    # Engine + template + the first worker alone: the tree's PSS less what only the other
    # workers map (their USS); the pages they share with the template stay counted.
    one = worst_pss["pss_mb"] - sum(p["uss_mb"] or 0.0 for p in workers[1:])
    return {"peak_rss_mb": worst_rss["peak_rss_mb"], "pss_mb": worst_pss["pss_mb"],
            "workers": len(workers), "pss_one_worker_mb": round(one, 1),
            "peak_rss_rounds_mb": [m["peak_rss_mb"] for m in mems],
            "pss_rounds_mb": [m["pss_mb"] for m in mems],
            "memory": worst_rss, "memory_pss": worst_pss}


BATON_ROLES = {"main": "engine", "parent": "template", "leaf": "worker"}


def _targets_table(targets: dict[str, Any]) -> list[str]:
    lines = ["| target | measured | target | met |", "|---|---:|---:|---|"]
    for name, v in targets.items():
        met = {True: "yes", False: "**NO**", None: "not measured"}[v["met"]]
        meas = "—" if v["measured"] is None else f"{v['measured']:g}"
        lines.append(f"| {name} | {meas} | {v['target']} | {met} |")
    return lines


def render_model(model: str, res: dict[str, Any]) -> list[str]:
    lines = [f"### {model}", "",
             "| system | rows/req | req/s | rows/s | p50 ms | p99 ms | errors | server CPU % "
             "(main + children) | server CPU µs/req | other CPU % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for system, sres in res["systems"].items():
        if "error" in sres:
            lines.append(f"| {system} | — | FAILED: {sres['error'][:80]} | | | | | | | |")
        for rows, r in sres.get("sizes", {}).items():
            err = f"{r['error_count']}" + (" FLAGGED" if r["flagged"] else "")
            lines.append(f"| {system} | {rows} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {err} | "
                         f"{r['server_cpu_pct']:.0f} ({r['main_process_cpu_pct']:.0f} + "
                         f"{r['child_processes_cpu_pct']:.0f}) | "
                         f"{r['server_cpu_us_per_req']:.0f} | "
                         f"{r['background_cpu_pct']:.0f} |")
    lines += ["", *_targets_table(res["targets"])]
    r = res["ratios"]

    def x(key: str) -> str:
        return "—" if r.get(key) is None else f"{r[key]}"

    lines += ["", f"Baton / floor: 1-row req/s {x('rps_1_baton_over_floor')}, p99 "
              f"{x('p99_1_baton_over_floor')}; 100-row req/s {x('rps_100_baton_over_floor')}, "
              f"p99 {x('p99_100_baton_over_floor')}."]
    by_round = res.get("ratios_by_round", [])
    keys = [("rps_1_baton_over_floor", "1-row req/s Baton/floor"),
            ("p99_1_baton_over_floor", "1-row p99 Baton/floor"),
            ("rows_100_baton_over_floor", "100-row rows/s Baton/floor"),
            ("p99_100_baton_over_floor", "100-row p99 Baton/floor"),
            ("rps_1_baton_over_mlserver", "1-row req/s Baton/MLServer"),
            ("p99_1_mlserver_over_baton", "1-row p99 MLServer/Baton"),
            ("rows_100_baton_over_mlserver", "100-row rows/s Baton/MLServer")]
    shown = [(k, label) for k, label in keys if any(rr.get(k) is not None for rr in by_round)]
    if shown:
        lines.append("Round by round: " + "; ".join(
            f"{label} {[rr.get(k) for rr in by_round]}" for k, label in shown) + ".")
    mem = res.get("baton_memory", {})
    if mem:
        def procs(m: dict[str, Any], key: str) -> str:
            return ", ".join(f"{BATON_ROLES.get(p['role'], p['role'])} {p[key]}"
                             for p in m["processes"])

        lines.append(
            f"Baton memory right after the 1-row run (worst round): sum of peak RSS (VmHWM) "
            f"{mem['peak_rss_mb']} MB ({procs(mem['memory'], 'hwm_mb')}); sum of PSS "
            f"{mem['pss_mb']} MB ({procs(mem['memory_pss'], 'pss_mb')}). Rounds: peak RSS "
            f"{mem['peak_rss_rounds_mb']}, PSS {mem['pss_rounds_mb']}. Each worker is forked "
            "from the template, so the pages they share count in each process in the "
            "peak-RSS sum and once in the PSS sum (a page shared by n processes counts 1/n "
            "in each): the PSS sum is what Baton's processes cost the machine. "
            f"Baton started {mem['workers']} worker(s) (by default a second one when it "
            "fits), all counted in both sums; engine + template + the first worker alone "
            f"(the PSS sum less the other workers' USS): {mem['pss_one_worker_mb']} MB.")
    for system, sres in res["systems"].items():
        m = sres.get("sizes", {}).get("1", {}).get("memory")
        if m and system != "baton":
            lines.append(f"{system} memory (all {len(m['processes'])} processes) after the 1-row"
                         f" run: peak RSS sum {m['peak_rss_mb']} MB, PSS sum {m['pss_mb']} MB.")
    firsts = {s: sr.get("first_prediction_s") for s, sr in res["systems"].items()}
    lines.append("Launch to first prediction (load-test starts, median of rounds): "
                 + ", ".join(f"{s} {v} s" for s, v in firsts.items()) + ".")
    return lines


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
             "used during the run, in % of one core. Models: "
             + ", ".join(results["models"]) + "."]
    for model, res in results["models"].items():
        lines += ["", *render_model(model, res)]
    lines += ["", "### Once per run", "", *_targets_table(results["targets"])]
    ex = results.get("baton_extras", {})
    if ex.get("startup"):
        lines.append("")
        lines.append(f"Baton launch to first prediction ({ex['startup']['model']} bundle): "
                     f"{ex['startup']['runs_s']} s, median {ex['startup']['median_s']} s.")
    if ex.get("cold_build"):
        cb = ex["cold_build"]
        lines.append(f"Penguins environment, cold uv cache: build_seconds "
                     f"{cb.get('build_seconds')} s (whole check {cb.get('check_wall_s')} s, "
                     f"exit {cb.get('exit_code')}).")
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
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"models to measure, comma-separated ({','.join(MODELS)})")
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
    models = list(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    if not models or set(models) - set(MODELS):
        ap.error(f"--models takes one or more of {', '.join(MODELS)}")
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
    log(f"training {', '.join(models)} on make_classification(2000, 20, random_state=42)")
    # The start-up timing uses the logreg bundle, whatever --models says.
    needed = list(dict.fromkeys([*models, MODEL_NAME] if args.startup_runs > 0 else models))
    fitted, X = make_models(needed)
    paths = package_all(fitted, X)
    bodies = {n: make_body(X, n) for n in sizes}  # the same bytes for every model
    expected = {m: {n: fitted[m].predict_proba(X[:n]) for n in sizes} for m in models}
    luas = {m: {n: write_lua(n, bodies[n], m) for n in sizes} for m in models}

    ml_env = ensure_mlserver_env() if "mlserver" in systems else None
    if "baton" in systems or args.startup_runs:
        # The prediction log's SQLite file is created by the code under test: a new file
        # gets 64 KiB pages, while one left by an older engine keeps its 4 KiB pages (SQLite
        # cannot change a WAL database's page size). So remove it, with its -wal and -shm
        # files, before the first Baton process of the run.
        for suffix in ("", "-wal", "-shm"):
            (WORK / "baton-home" / f"predictions.sqlite{suffix}").unlink(missing_ok=True)
        for m in needed if "baton" in systems else [MODEL_NAME]:
            log(f"building/finding the {m} bundle's environment with baton check")
            check = ensure_baton_env(paths[m]["bundle"], m)
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
        "models": {m: {"systems": {}} for m in models}, "baton_extras": {},
    }
    failed = False
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {s: [] for s in systems} for m in models}
    for n in range(args.repeat):  # whole rounds, so that noise spreads over every system
        for m in models:
            for system in systems:
                server = make_server(system, paths[m], ml_env, m)
                log(f"round {n + 1}/{args.repeat}: starting {system} ({m}) on port "
                    f"{server.port}")
                try:
                    rounds[m][system].append(bench_system(system, server, wrk, bodies,
                                                          expected[m], luas[m], args))
                except Exception as exc:  # noqa: BLE001 - report it and go on with the others
                    failed = True
                    log(f"{system} ({m}) FAILED: {exc}")
                    rounds[m][system].append({"error": str(exc), "sizes": {}})
    for m in models:
        res = results["models"][m]
        for system, runs in rounds[m].items():
            res["systems"][system] = merge_rounds(runs)
        res["baton_memory"] = baton_memory(rounds[m].get("baton", []))
        res["ratios"] = compute_ratios(res["systems"])
        res["ratios_by_round"] = [compute_ratios({s: rounds[m][s][i] for s in systems})
                                  for i in range(args.repeat)]
        res["targets"] = verdicts(res["ratios"], res["baton_memory"])
    extras = results["baton_extras"]
    if args.startup_runs > 0:
        extras["startup"] = measure_startup(paths[MODEL_NAME], bodies[min(sizes)],
                                            args.startup_runs)
    if not args.no_cold_build:
        log("building examples/penguins/bundle's environment from an empty uv cache")
        extras["cold_build"] = measure_cold_build()
        log(f"cold build: {extras['cold_build']}")
    results["targets"] = run_verdicts(extras)
    flagged = [f"{m} {s} {n}" for m, res in results["models"].items()
               for s, r in res["systems"].items()
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
