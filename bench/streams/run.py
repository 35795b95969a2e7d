"""Streams benchmark: Baton's stream bindings vs a hand-written floor, per broker (README.md).

    .venv/bin/python bench/streams/run.py [--records N] [--only redis,nats,amqp,mqtt,kafka]

For each broker it pre-loads a fresh input (stream / subject / queue / topic, random suffix)
with N JSON records, starts the consumer under test as its own process, and polls the
output destination until N outputs are there. Two consumers, one after the other:

- floor: bench/streams/floor.py, a minimal consume -> predict_proba -> produce -> ack loop
  with the client library Baton's connector uses, the model in-process;
- baton: ``baton serve BUNDLE --input URL --output URL --dead-letter URL``, default settings.

Records/s are counted from the first output seen at the destination to the last (start-up
excluded, the same way for both). It checks N outputs, 0 dead letters, nothing left
unacknowledged on the input and a few outputs against the model, then prints a table and
writes build/bench-streams/results.json and results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # bench/benchlib.py
import brokers as brokers_mod  # noqa: E402 - bench/streams/brokers.py
from benchlib import machine, set_autogroup_nice, source_state, wait_for_quiet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "bench" / "streams"
WORK = ROOT / "build" / "bench-streams"
BIN = Path(sys.executable).parent
BATON = BIN / "baton"
MODEL_NAME = "logreg-records"
COLUMNS = [f"f{i}" for i in range(20)]
TARGET = 0.8  # Baton records/s >= 0.8 x the floor's, per broker
ALL_BROKERS = ["redis", "nats", "amqp", "mqtt", "kafka"]
CONNECTOR_MODULE = {"redis": "redis_streams", "nats": "nats_jetstream", "amqp": "rabbitmq",
                    "mqtt": "mqtt", "kafka": "kafka"}

#: Niceness of the benchmark and everything it starts (set by --nice).
NICE = 0


def log(msg: str) -> None:
    print(f"[bench-streams {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- model, bundle, records -------------------------------------------------------------

def make_model() -> tuple[Any, Any]:
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=2000, n_features=20, random_state=42)
    frame = pd.DataFrame(X.astype("float64"), columns=COLUMNS)
    return LogisticRegression().fit(frame, y), frame


def package(model: Any, frame: Any) -> dict[str, Path]:
    import joblib

    import baton

    bundle = baton.package(model, sample=frame, name=MODEL_NAME, version="1.0.0",
                           path=WORK / "logreg-records-bundle", overwrite=True)
    floor_model = WORK / "floor-model.joblib"
    joblib.dump(model, floor_model)
    return {"bundle": bundle, "floor_model": floor_model}


def baton_env() -> dict[str, str]:
    env = dict(os.environ, BATON_HOME=str(WORK / "baton-home"), UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure_baton_env(bundle: Path) -> dict[str, Any]:
    """Build (or find cached) the bundle's environment with ``baton check`` before timing."""
    report = WORK / "logreg-records-check.json"
    res = subprocess.run([str(BATON), "check", str(bundle), "--iterations", "10",
                          "--report", str(report)], env=baton_env(), capture_output=True,
                         text=True)
    if res.returncode != 0:
        sys.exit(f"baton check {bundle} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return json.loads(report.read_text())


def make_records(frame: Any, model: Any, n: int) -> tuple[list[tuple[str, bytes]],
                                                          np.ndarray]:
    """N records ``{"f0": ..., "f19": ...}`` keyed "0".."N-1" (rows of the training data,
    cycled), and the model's proba_1 for each key."""
    rows = frame.to_dict("records")
    records = [(str(i), orjson.dumps(rows[i % len(rows)])) for i in range(n)]
    proba_1 = model.predict_proba(frame)[:, 1]
    return records, np.array([proba_1[i % len(rows)] for i in range(n)])


def check_samples(samples: list[bytes], expected: np.ndarray) -> str | None:
    """None when every sampled output holds its record's proba_1 (within 1e-9)."""
    if not samples:
        return "no output could be read back"
    for raw in samples:
        try:
            body = orjson.loads(raw)
            got, key = float(body["output"]["proba_1"]), int(body["key"])
        except (KeyError, TypeError, ValueError) as exc:
            return f"malformed output ({exc!r}): {raw[:200]!r}"
        if abs(got - expected[key]) > 1e-9:
            return f"key {key}: proba_1 {got} != {expected[key]}"
    return None


# -- the consumer under test ------------------------------------------------------------

class Consumer:
    """floor.py or ``baton serve``: its own session, output to a log file, stopped by PID."""

    def __init__(self, system: str, cmd: list[str], env: dict[str, str], grace: float,
                 http_port: int | None = None) -> None:
        self.system, self.cmd, self.env, self.grace = system, cmd, env, grace
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = WORK / "logs" / f"{system}.log"
        self._known: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        logf.write(f"\n==== {dt.datetime.now().isoformat()} {' '.join(self.cmd)}\n".encode())
        logf.flush()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        self.tree()

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (Baton: engine and worker); new ones reniced."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            if p.pid not in self._known:
                self._known[p.pid] = p
                set_autogroup_nice(p.pid, NICE)  # Baton's worker has a session of its own
        return procs

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds so far of the process itself and of its descendants."""
        main = kids = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if self.proc is not None and p.pid == self.proc.pid:
                main += t.user + t.system
            else:
                kids += t.user + t.system
        return main, kids

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the session, SIGKILL it after the grace period, then any straggler seen
        in the tree (Baton's worker runs in its own session)."""
        if self.proc is None:
            return
        self.tree()
        pid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)  # the leader is not reaped: still our group
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


#: Consumers: the floor, Baton with default settings, and diagnostic variants of Baton
#: (settings changed through its environment variables) to see where its time goes.
SYSTEMS: dict[str, dict[str, str]] = {
    "floor": {},
    "floor-asyncio": {},  # redis only: the floor with redis-py's asyncio client
    "baton": {},
    "baton-nolog": {"BATON_PREDICTION_LOG_SAMPLE": "0"},
    "baton-nometrics": {"BATON_PREDICTION_LOG_SAMPLE": "0", "BATON_METRICS": "false"},
}


def forget_predictions() -> None:
    """Baton's prediction log (on by default) is a SQLite file under BATON_HOME: start each
    run from none, so runs never share it and the disk does not fill up."""
    for f in (WORK / "baton-home").glob("predictions.sqlite*"):
        f.unlink(missing_ok=True)


def make_consumer(system: str, urls: dict[str, str], paths: dict[str, Path]) -> Consumer:
    if system.startswith("baton"):
        port = brokers_mod.free_port()
        return Consumer(system, [str(BATON), "serve", str(paths["bundle"]), "--port",
                                 str(port), "--input", urls["input"], "--output",
                                 urls["output"], "--dead-letter", urls["dead_letter"]],
                        {**baton_env(), **SYSTEMS[system]}, grace=15.0, http_port=port)
    return Consumer(system, [sys.executable, str(HERE / "floor.py"), "--model",
                             str(paths["floor_model"]), "--input", urls["input"],
                             "--output", urls["output"],
                             *(["--asyncio"] if system == "floor-asyncio" else [])],
                    dict(os.environ), grace=5.0)


def baton_streams(port: int, timeout: float = 10.0) -> list[dict[str, Any]] | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                return json.loads(r.read()).get("streams")
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


# -- one measurement --------------------------------------------------------------------

class CpuSnap:
    """CPU seconds of the consumer (main, children), the broker, this process (pre-loader
    and observer) and the whole machine, at one instant."""

    def __init__(self, consumer: Consumer, broker_procs: list[psutil.Process]) -> None:
        self.at = time.perf_counter()
        self.main, self.kids = consumer.cpu_seconds()
        self.broker = 0.0
        for p in broker_procs:
            try:
                t = p.cpu_times()
                self.broker += t.user + t.system
                for c in p.children(recursive=True):  # RabbitMQ's helpers, if any
                    ct = c.cpu_times()
                    self.broker += ct.user + ct.system
            except psutil.NoSuchProcess:
                pass
        me = resource.getrusage(resource.RUSAGE_SELF)
        self.me = me.ru_utime + me.ru_stime
        self.machine = psutil.cpu_times()


def cpu_figures(a: CpuSnap, b: CpuSnap, records: int) -> dict[str, float]:
    secs = b.at - a.at
    main, kids = b.main - a.main, b.kids - a.kids
    broker, me = b.broker - a.broker, b.me - a.me
    busy = sum(getattr(b.machine, f) - getattr(a.machine, f) for f in ("user", "nice", "system"))
    pct = lambda v: round(100 * v / secs, 1) if secs > 0 else 0.0  # noqa: E731
    return {"consumer_cpu_pct": pct(main + kids), "consumer_main_cpu_pct": pct(main),
            "consumer_children_cpu_pct": pct(kids),
            "consumer_cpu_us_per_record": round(1e6 * (main + kids) / max(records, 1), 1),
            "broker_cpu_pct": pct(broker), "bench_cpu_pct": pct(me),
            "other_cpu_pct": max(0.0, pct(busy - main - kids - broker - me)),
            "steal_pct": pct(b.machine.steal - a.machine.steal)}


async def measure(broker: brokers_mod.Broker, system: str, records: list[tuple[str, bytes]],
                  expected: np.ndarray, paths: dict[str, Path],
                  args: argparse.Namespace) -> dict[str, Any]:
    n_records = len(records)
    names = broker.names(uuid.uuid4().hex[:10])
    urls = broker.urls(names, system)
    result: dict[str, Any] = {"system": system, "broker": broker.name, "records": n_records,
                              "names": [names.input, names.output, names.dead]}
    consumer: Consumer | None = None
    try:
        t0 = time.perf_counter()
        await broker.prepare(names, system, records)
        result["preload_s"] = round(time.perf_counter() - t0, 2)
        if await broker.counts(names) != (0, 0):
            raise RuntimeError("the fresh output/dead-letter destinations are not empty")
        broker_procs = [psutil.Process(p) for p in broker.pids()]
        forget_predictions()
        consumer = make_consumer(system, urls, paths)
        launched = time.perf_counter()
        consumer.start()
        deadline = launched + args.timeout
        first: tuple[float, int] | None = None
        snap0: CpuSnap | None = None
        polls = 0
        while True:
            out, dead = await broker.counts(names)
            polls += 1
            now = time.perf_counter()
            if first is None and out + dead > 0:
                first = (now, out + dead)
                snap0 = CpuSnap(consumer, broker_procs)
            if out + dead >= n_records:
                snap1 = CpuSnap(consumer, broker_procs)
                break
            if consumer.proc is not None and consumer.proc.poll() is not None:
                raise RuntimeError(f"{system} exited with {consumer.proc.returncode} after "
                                   f"{out} outputs; see {consumer.log_path}:\n"
                                   f"{consumer.log_tail()}")
            if now > deadline:
                raise RuntimeError(f"{system}: only {out} outputs and {dead} dead letters of "
                                   f"{n_records} after {args.timeout:.0f}s; see "
                                   f"{consumer.log_path}:\n{consumer.log_tail()}")
            if first is None:
                consumer.tree()  # renice Baton's worker as soon as it appears
            await asyncio.sleep(args.poll)
        assert first is not None and snap0 is not None
        measured = n_records - first[1]
        secs = now - first[0]
        result.update({
            "launch_to_first_output_s": round(first[0] - launched, 3),
            "first_count": first[1], "measured_records": measured,
            "measured_s": round(secs, 4),
            "records_per_s": round(measured / secs, 1) if secs > 0 else None,
            "records_per_s_incl_startup": round(n_records / (now - launched), 1),
            "polls": polls, **cpu_figures(snap0, snap1, measured)})
        await asyncio.sleep(args.settle)  # anything beyond N would be a duplicate
        out, dead = await broker.counts(names)
        result.update({"outputs": out, "dead_letters": dead,
                       "duplicates": max(0, out - n_records)})
        if system.startswith("baton") and consumer.http_port:
            streams = await asyncio.to_thread(baton_streams, consumer.http_port)
            result["baton_stats"] = streams[0] if streams else None
        result["processes"] = len(consumer.tree())
        consumer.stop()
        consumer = None
        result["unacknowledged"] = await broker.unacked(names, system)
        why = check_samples(await broker.samples(names, 5), expected)
        result["outputs_correct"] = why is None
        problems = []
        if out != n_records:
            problems.append(f"{out} outputs, not {n_records}")
        if dead:
            problems.append(f"{dead} dead letters")
        if result["unacknowledged"]:
            problems.append(f"{result['unacknowledged']} inputs left unacknowledged")
        if why:
            problems.append(f"wrong output: {why}")
        stats = result.get("baton_stats")
        if system.startswith("baton") and stats is not None and (
                stats.get("produced") != n_records or stats.get("dead_lettered")):
            problems.append(f"/v1/models stats: produced {stats.get('produced')}, "
                            f"dead_lettered {stats.get('dead_lettered')}")
        result["problems"] = problems
        result["flagged"] = bool(problems)
    except Exception as exc:  # noqa: BLE001 - reported, and the other runs go on
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["flagged"] = True
    finally:
        if consumer is not None:
            consumer.stop()
        forget_predictions()
        try:
            await broker.cleanup(names)
        except Exception as exc:  # noqa: BLE001
            log(f"cleanup of {broker.name} {names.suffix} failed: {exc}")
    return result


# -- report -----------------------------------------------------------------------------

def median_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if "error" not in r and r.get("records_per_s")]
    if not ok:
        return None
    ok.sort(key=lambda r: r["records_per_s"])
    chosen = dict(ok[(len(ok) - 1) // 2])
    chosen["all_rounds_records_per_s"] = [r["records_per_s"] for r in runs
                                          if r.get("records_per_s")]
    chosen["flagged_rounds"] = sum(1 for r in runs if r.get("flagged"))
    return chosen


def summarize(rounds: dict[str, dict[str, list[dict[str, Any]]]],
              not_yet: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for broker, per_system in rounds.items():
        medians = {system: median_run(runs) for system, runs in per_system.items()}
        floor = medians.get("floor")
        ratios, by_round = {}, {}
        for system, med in medians.items():
            if system == "floor":
                continue
            ratios[system] = (round(med["records_per_s"] / floor["records_per_s"], 2)
                              if floor and med else None)
            by_round[system] = [round(b["records_per_s"] / f["records_per_s"], 2)
                                for f, b in zip(per_system.get("floor", []), per_system[system],
                                                strict=False)
                                if f.get("records_per_s") and b.get("records_per_s")]
        if medians.get("floor-asyncio") and medians.get("baton"):
            ratios["baton/floor-asyncio"] = round(medians["baton"]["records_per_s"]
                                                  / medians["floor-asyncio"]["records_per_s"], 2)
        errors = [f"{r['system']}: {r['error']}" for runs in per_system.values() for r in runs
                  if "error" in r]
        problems = [f"{r['system']}: {p}" for runs in per_system.values() for r in runs
                    for p in r.get("problems", [])]
        ratio = ratios.get("baton")
        out[broker] = {"floor": floor, "baton": medians.get("baton"), "ratio": ratio,
                       "ratio_by_round": by_round.get("baton", []),
                       "met": None if ratio is None else ratio >= TARGET,
                       "baton_over_floor_asyncio": ratios.get("baton/floor-asyncio"),
                       "variants": {s: {"median": m, "ratio": ratios.get(s),
                                        "ratio_by_round": by_round.get(s, [])}
                                    for s, m in medians.items()
                                    if s not in ("floor", "baton")},
                       "errors": errors, "problems": problems}
    for broker in not_yet:
        out[broker] = {"floor": None, "baton": None, "ratio": None, "met": None,
                       "not_yet": True, "variants": {}, "errors": [], "problems": []}
    return out


def render(results: dict[str, Any]) -> str:
    src = results.get("baton_source", {})
    dirty = src.get("uncommitted_changes") or []
    s = results["settings"]
    lines = [f"Baton at commit {src.get('commit', '?')[:12]}"
             + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "") + ".",
             f"Measured {results['date']} on {results['machine']['description']}; "
             f"{s['records']:,} records per run, median of {s['repeat']} round(s); niceness "
             f"{s['nice']}. Records/s from the first output seen at the destination to the "
             f"N-th (start-up excluded). CPU: µs per record of the consumer (Baton: engine + "
             "worker), broker and 'other' (rest of the machine) in % of one core.", "",
             "| broker | client | floor rec/s | Baton rec/s | Baton / floor | target ≥ "
             f"{TARGET} | rounds (Baton/floor) | floor CPU µs/rec | Baton CPU µs/rec "
             "(engine + worker %) | broker CPU % (floor, Baton) | other CPU % | checks |",
             "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for broker, r in results["summary"].items():
        lib = results["brokers"].get(broker, {}).get("library", "")
        if r.get("not_yet"):
            lines.append(f"| {broker} | {lib} | not yet | not yet | — | not measured | | | | "
                         "| | connector missing |")
            continue
        f, b = r["floor"], r["baton"]
        met = {True: "yes", False: "**NO**", None: "not measured"}[r["met"]]
        checks = "ok" if not r["errors"] and not r["problems"] else "**" + "; ".join(
            (r["errors"] + r["problems"])[:3]).replace("|", "/").replace("\n", " ")[:300] + "**"
        fmt = lambda x, k: "—" if x is None else f"{x[k]:,.0f}"  # noqa: E731
        bcpu = "—" if b is None else (f"{b['consumer_cpu_us_per_record']:,.0f} "
                                      f"({b['consumer_main_cpu_pct']:.0f} + "
                                      f"{b['consumer_children_cpu_pct']:.0f})")
        bro = (f"{f['broker_cpu_pct']:.0f}, {b['broker_cpu_pct']:.0f}" if f and b else "—")
        other = (f"{f['other_cpu_pct']:.0f}, {b['other_cpu_pct']:.0f}" if f and b else "—")
        lines.append(f"| {broker} | {lib} | {fmt(f, 'records_per_s')} | "
                     f"{fmt(b, 'records_per_s')} | "
                     f"{'—' if r['ratio'] is None else r['ratio']} | {met} | "
                     f"{r.get('ratio_by_round', [])} | "
                     f"{fmt(f, 'consumer_cpu_us_per_record')} | {bcpu} | {bro} | {other} | "
                     f"{checks} |")
    variants = [(broker, system, v) for broker, r in results["summary"].items()
                for system, v in r.get("variants", {}).items()]
    if variants:
        lines += ["", "Diagnostic variants of Baton (same runs, same floor): "
                  + "; ".join(f"{broker} {system} {v['median']['records_per_s']:,.0f} rec/s = "
                              f"{v['ratio']}x the floor (rounds {v['ratio_by_round']}), "
                              f"{v['median']['consumer_cpu_us_per_record']:,.0f} CPU µs/rec"
                              for broker, system, v in variants if v["median"]) + "."]
        for broker, r in results["summary"].items():
            if r.get("baton_over_floor_asyncio"):
                lines.append(f"{broker}: Baton / floor-asyncio = "
                             f"{r['baton_over_floor_asyncio']}.")
    lines += ["", "Brokers: " + "; ".join(f"{k}: {v['description']}"
                                           for k, v in results["brokers"].items()) + "."]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    v = {}
    for d in ("baton", "scikit-learn", "numpy", "pandas", "orjson", "uvloop", "redis",
              "nats-py", "aio-pika", "paho-mqtt", "confluent-kafka"):
        try:
            v[d] = md.version(d)
        except md.PackageNotFoundError:
            v[d] = "missing"
    for name, cmd in (("redis-server", ["redis-server", "--version"]),
                      ("nats-server", ["nats-server", "--version"]),
                      ("mosquitto", ["mosquitto", "-h"]),
                      ("tansu", [str(brokers_mod.TANSU), "--version"])):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            v[name] = (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            v[name] = "?"
    try:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
                             capture_output=True, text=True, timeout=10)
        v["rabbitmq-server"] = res.stdout.strip() or "?"
    except OSError:
        v["rabbitmq-server"] = "?"
    return v


def connector_exists(broker: str) -> bool:
    return importlib.util.find_spec(f"baton.streams.connectors.{CONNECTOR_MODULE[broker]}") \
        is not None


async def run_all(args: argparse.Namespace, selected: list[str], paths: dict[str, Path],
                  records: list[tuple[str, bytes]], expected: np.ndarray,
                  results: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started: list[brokers_mod.Broker] = []
    try:
        for name in selected:
            b = brokers_mod.make(name, WORK, mqtt_inflight=args.mqtt_inflight)
            try:
                b.start(NICE)
            except Exception as exc:  # noqa: BLE001
                log(f"{name}: cannot use the broker: {exc}")
                rounds[name] = {"floor": [{"system": "floor", "error": str(exc),
                                           "flagged": True}], "baton": []}
                continue
            started.append(b)
            results["brokers"][name] = {"library": b.library, "description": b.describe()}
            rounds[name] = {system: [] for system in args.systems}
        for i in range(args.repeat):
            for b in started:
                for system in args.systems:
                    if system == "floor-asyncio" and b.name != "redis":
                        continue  # the other floors already use the client Baton uses
                    quiet = None
                    if args.quiet_wait > 0:
                        quiet = await asyncio.to_thread(wait_for_quiet, args.quiet_wait)
                        if quiet["background_before_pct"] >= 25:
                            log(f"the machine is still busy ({quiet['background_before_pct']:.0f}"
                                f"% of a core) after {quiet['quiet_wait_s']:.0f}s: measuring "
                                "anyway")
                    log(f"round {i + 1}/{args.repeat}: {b.name} {system}: pre-loading "
                        f"{len(records):,} records")
                    r = await measure(b, system, records, expected, paths, args)
                    if quiet:
                        r.update(quiet)
                    rounds[b.name][system].append(r)
                    if "error" in r:
                        log(f"{b.name} {system} FAILED: {r['error']}")
                    else:
                        flag = ("  ** " + "; ".join(r["problems"]) + " **") if r["flagged"] \
                            else ""
                        log(f"{b.name} {system}: {r['records_per_s']:>9,.0f} records/s "
                            f"(first output {r['launch_to_first_output_s']:.2f}s after launch, "
                            f"{r['measured_records']:,} records in {r['measured_s']:.2f}s; "
                            f"consumer CPU {r['consumer_cpu_pct']:.0f}% = "
                            f"{r['consumer_cpu_us_per_record']:.0f} us/record, broker "
                            f"{r['broker_cpu_pct']:.0f}%, other {r['other_cpu_pct']:.0f}%)"
                            f"{flag}")
    finally:
        for b in started:
            try:
                await b.close()
            except Exception as exc:  # noqa: BLE001
                log(f"closing the {b.name} admin client: {exc}")
            b.stop()
    return rounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000,
                    help="records pre-loaded into each input (20000)")
    ap.add_argument("--only", default=",".join(ALL_BROKERS),
                    help="brokers, comma-separated (redis,nats,amqp,mqtt,kafka)")
    ap.add_argument("--systems", default="floor,baton",
                    help="consumers to measure, in this order each round (floor,baton); "
                         "diagnostic variants: baton-nolog (prediction log off), "
                         "baton-nometrics (prediction log and metrics off), floor-asyncio "
                         "(redis: the floor on redis-py's asyncio client, like Baton's)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds over every broker and consumer; the median is reported (3)")
    ap.add_argument("--poll", type=float, default=0.005,
                    help="seconds between two looks at the output destination (0.005)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to wait after the N-th output before the final count (0.5)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds a consumer may take for all N records (180)")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each run, wait up to this many seconds for the machine to "
                         "use < 25%% of a core (0: don't wait)")
    ap.add_argument("--mqtt-inflight", type=int, default=20,
                    help="max_inflight_messages of the private Mosquitto (20, its "
                         "default)")
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="run the benchmark and every process it starts at this niceness "
                         "(-10 as root; 0: unchanged); the shared brokers are left alone")
    ap.add_argument("--output", type=Path, default=WORK / "results.json")
    args = ap.parse_args(argv)

    selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(selected) - set(ALL_BROKERS)
    if unknown:
        ap.error(f"unknown broker(s): {', '.join(sorted(unknown))}")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(args.systems) - set(SYSTEMS) or not args.systems:
        ap.error(f"--systems takes {', '.join(SYSTEMS)}")
    if args.records < 1 or args.repeat < 1:
        ap.error("--records and --repeat must be >= 1")

    global NICE
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
        set_autogroup_nice("self", args.nice)
        NICE = args.nice
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    not_yet = [b for b in selected if not connector_exists(b)]
    for b in not_yet:
        log(f"{b}: Baton has no connector module yet (baton.streams.connectors."
            f"{CONNECTOR_MODULE[b]}): not measured")
    selected = [b for b in selected if b not in not_yet]

    log("training LogisticRegression on make_classification(2000, 20, random_state=42)")
    model, frame = make_model()
    paths = package(model, frame)
    if any(s.startswith("baton") for s in args.systems):
        log("building/finding the bundle's environment with baton check")
        check = ensure_baton_env(paths["bundle"])
        log(f"baton check passed: environment {check['measurements']['environment']}")
    records, expected = make_records(frame, model, args.records)
    log(f"{len(records):,} records of {len(records[0][1])} bytes (JSON, 20 float fields)")

    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "baton_source": source_state(),
        "load_before": list(os.getloadavg()),
        "settings": {"records": args.records, "repeat": args.repeat, "poll_s": args.poll,
                     "settle_s": args.settle, "quiet_wait_s": args.quiet_wait,
                     "nice": os.getpriority(os.PRIO_PROCESS, 0),
                     "systems": args.systems, "mqtt_max_inflight": args.mqtt_inflight,
                     "record_bytes": len(records[0][1]), "max_batch": 256},
        "target": f"Baton records/s >= {TARGET} x the floor's", "brokers": {},
    }
    rounds = asyncio.run(run_all(args, selected, paths, records, expected, results))
    results["summary"] = summarize(rounds, not_yet)
    results["runs"] = rounds
    results["load_after"] = list(os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = render(results)
    args.output.with_suffix(".md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nresults: {args.output}")
    bad = [b for b, r in results["summary"].items() if r["errors"] or r["problems"]]
    if bad:
        print(f"FAILED or FLAGGED: {', '.join(bad)} (see the checks column and the JSON)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
