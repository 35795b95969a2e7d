#!/usr/bin/env python3
"""Does ``baton plan`` predict what the engine does? One command, this machine.

    .venv/bin/python bench/plan.py                 # about 5 minutes
    .venv/bin/python bench/plan.py --rps 100,400 --duration 15 --repeat 3

1. ``baton check examples/penguins/bundle --iterations 1000`` writes the report the plan reads.
2. Calibration: ``baton serve`` with one worker, driven open-loop at the two rates of
   --calibrate-rps; the slope of the front process's CPU (user + system of the main process,
   not its workers) between them, per request, is what ``baton plan`` is told with
   --front-us-per-request.
3. For each target rate: ``baton plan --node-cpus 2`` (this machine), ``baton serve`` with the
   recommended workers, an open-loop load at the target rate (requests leave on a fixed
   schedule whatever the answers do, latency counted from the scheduled time, so queueing
   is real) --repeat times, then predicted vs measured p50, p99 and throughput; last, the
   same at the plan's predicted capacity.

The load generator is asyncio on keep-alive connections (a new connection only when every
open one is waiting). It shares the two cores with the engine. Writes
build/bench/plan/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import _busy, free_port, set_autogroup_nice, tree_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "examples" / "penguins" / "bundle"
OUT = ROOT / "build" / "bench" / "plan"
BATON = str(ROOT / ".venv" / "bin" / "baton")
PATH = "/v1/models/penguins/predict"


NICE = -10 if os.geteuid() == 0 else 0


def renice_tree(pid: int) -> None:
    """``pid`` and its descendants at :data:`NICE`, their sessions' groups too (the engine
    starts each worker in a session of its own; see bench/README.md, "Noise")."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.nice(NICE)
        except psutil.Error:
            pass
        set_autogroup_nice(p.pid, NICE)


def run_reniced(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end, renicing the processes it starts as they appear."""
    with subprocess.Popen(cmd, text=True, **kwargs) as proc:
        while proc.poll() is None:
            renice_tree(proc.pid)
            time.sleep(0.1)
        out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def request_bytes(port: int) -> bytes:
    records = json.loads((BUNDLE / "samples" / "input.json").read_text())[:1]
    body = json.dumps(records).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    request: bytes) -> int:
    reader, writer = conn
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def open_loop(port: int, rate: float, duration: float) -> dict[str, Any]:
    """Send at ``rate`` req/s for ``duration`` s on a fixed schedule; latencies in ms from
    each request's scheduled time."""
    request = request_bytes(port)
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def one(scheduled: float) -> None:
        try:
            if idle:
                conn = idle.pop()
                try:
                    status = await _exchange(conn, request)
                except (OSError, IndexError, asyncio.IncompleteReadError):
                    # the server closed a connection left idle past its keep-alive timeout
                    conn[1].close()
                    conn = await asyncio.open_connection("127.0.0.1", port)
                    status = await _exchange(conn, request)
            else:
                conn = await asyncio.open_connection("127.0.0.1", port)
                status = await _exchange(conn, request)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
            return
        latencies.append((loop.time() - scheduled) * 1000)
        if status != 200:
            errors[f"HTTP {status}"] += 1
        idle.append(conn)

    tasks: set[asyncio.Task[None]] = set()
    start = loop.time()
    sent = 0
    while (scheduled := start + sent / rate) < start + duration:
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for _, writer in idle:
        writer.close()
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))], 2)

    return {"rate": rate, "sent": sent, "answered": len(latencies), "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "seconds": round(elapsed, 2), "throughput_rps": round(len(latencies) / elapsed, 1),
            "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(latencies[-1], 2)}


class Engine:
    """``baton serve`` on a free port, in its own session, stopped by PID."""

    def __init__(self, workers: int) -> None:
        self.port = free_port()
        OUT.mkdir(parents=True, exist_ok=True)
        self.log = (OUT / f"serve-{workers}w.log").open("w")
        self.proc = subprocess.Popen(
            [BATON, "serve", str(BUNDLE), "--port", str(self.port), "--workers", str(workers),
             "--log-level", "warning"], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"baton serve exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        renice_tree(self.proc.pid)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit("baton serve did not answer within 60 s")

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def calibrate(rates: tuple[float, float], duration: float) -> dict[str, Any]:
    """The front's CPU per request: the slope of its CPU between two rates (what it spends
    whatever the rate, its background loops, drops out)."""
    engine = Engine(1)
    runs = []
    try:
        asyncio.run(open_loop(engine.port, rates[0], 1.0))  # warm-up
        for rate in rates:
            before = engine.cpu_seconds()
            run = asyncio.run(open_loop(engine.port, rate, duration))
            runs.append({**run, "front_cpu_s": round(engine.cpu_seconds() - before, 3)})
    finally:
        engine.stop()
    low, high = runs
    slope = (high["front_cpu_s"] - low["front_cpu_s"]) / (high["answered"] - low["answered"])
    idle = (low["front_cpu_s"] - slope * low["answered"]) / low["seconds"]
    return {"runs": runs, "front_us_per_request": round(slope * 1e6, 1),
            "front_background_cores": round(idle, 3)}


def plan(check: Path, rps: float, p99: float, front_us: float) -> dict[str, Any]:
    out = run_reniced([BATON, "plan", str(BUNDLE), "--check-report", str(check), "--rps",
                          f"{rps:g}", "--p99", f"{p99:g}", "--node-cpus", "2",
                          "--front-us-per-request", f"{front_us:g}", "--json"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _busy_cores() -> float:
    return float(_busy(psutil.cpu_times()))


def measured_run(engine: Engine, rps: float, duration: float) -> dict[str, Any]:
    """One run, with the CPU that the engine, this load generator and everything else on
    the machine used meanwhile (in cores): the other tenants' share explains noisy runs."""
    me = psutil.Process()
    before = (_busy_cores(), tree_cpu(engine.proc.pid), sum(me.cpu_times()[:2]))
    run = asyncio.run(open_loop(engine.port, rps, duration))
    after = (_busy_cores(), tree_cpu(engine.proc.pid), sum(me.cpu_times()[:2]))
    machine, served, driver = ((a - b) / run["seconds"] for a, b in
                                zip(after, before, strict=True))
    return {**run, "engine_cores": round(served, 2), "generator_cores": round(driver, 2),
            "other_cores": round(max(0.0, machine - served - driver), 2)}


def measure(workers: int, rps: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.repeat`` runs at ``rps`` on one engine of ``workers`` workers, after a warm-up."""
    engine = Engine(workers)
    try:
        asyncio.run(open_loop(engine.port, rps, args.warmup))
        return [measured_run(engine, rps, args.duration) for _ in range(args.repeat)]
    finally:
        engine.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rps", default="100,400", help="target rates, comma-separated")
    ap.add_argument("--p99", type=float, default=60.0, help="target p99 in ms")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    ap.add_argument("--repeat", type=int, default=3,
                    help="measured runs per target, one after another; the table shows the "
                    "run with the median p99")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    ap.add_argument("--calibrate-rps", default="100,400",
                    help="the two rates the front's CPU per request is measured between")
    ap.add_argument("--check-iterations", type=int, default=1000,
                    help="calls per latency measurement of the check (its p99 is steadier "
                    "on 1,000 than on the default 200)")
    ap.add_argument("--no-capacity", action="store_true",
                    help="skip the run at the predicted capacity")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    check = OUT / "check.json"
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)  # inherited by every child
        set_autogroup_nice("self", NICE)  # the load generator runs in this session's group
    run_reniced([BATON, "check", str(BUNDLE), "--report", str(check), "--iterations",
                 str(args.check_iterations)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    low, high = (float(r) for r in args.calibrate_rps.split(","))
    cal = calibrate((low, high), 5.0)
    print(f"calibration between {low:g} and {high:g} req/s: front "
          f"{cal['front_us_per_request']} us/request, background "
          f"{cal['front_background_cores']} cores")
    rows = []
    for rps in (float(r) for r in args.rps.split(",")):
        rows.append(run_target(check, rps, args, cal["front_us_per_request"]))
    if not args.no_capacity:
        capacity = float(int(rows[-1]["plan"]["prediction"]["capacity_rps"]) - 1)
        rows.append(run_target(check, capacity, args, cal["front_us_per_request"],
                               p99=1e6, label="capacity"))
    results = {"time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "check": json.loads(check.read_text())["measurements"]["latency"],
               "calibration": cal, "runs": rows, "args": vars(args), "nice": NICE}
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| run | offered req/s | workers | predicted p50 / p99 ms | measured p50 / p99 ms "
          "(median run) | p99 measured / predicted (each run) | measured req/s / offered "
          "| errors | other tenants, cores |")
    print("|---|---:|---:|---|---|---|---|---:|---|")
    for r in rows:
        p, m = r["plan"]["prediction"], r["measured"]
        print(f"| {r['label']} | {r['rps']:,.0f} | {r['plan']['values']['workers']} | "
              f"{p['p50_ms']} / {p['p99_ms']} | {m['p50_ms']} / {m['p99_ms']} | "
              f"**{r['p99_ratio']}** ({', '.join(map(str, r['p99_ratios']))}) | "
              f"{m['throughput_rps']:,.1f} / {r['rps']:,.0f} = {r['throughput_ratio']} | "
              f"{sum(x['errors'] for x in r['rounds'])} | "
              f"{', '.join(str(x['other_cores']) for x in r['rounds'])} |")
    print(f"written to {OUT / 'results.json'}")


def run_target(check: Path, rps: float, args: argparse.Namespace, front_us: float,
               p99: float | None = None, label: str = "target") -> dict[str, Any]:
    """Plan for ``rps``, serve what the plan says, drive it at ``rps``, compare."""
    planned = plan(check, rps, p99 or args.p99, front_us)
    pred, values = planned["prediction"], planned["values"]
    if values["replicas"] != 1:
        sys.exit(f"{rps:g} req/s needs {values['replicas']} replicas: pick a lower rate")
    rounds = measure(values["workers"], rps, args)
    got = sorted(rounds, key=lambda r: r["p99_ms"])[len(rounds) // 2]  # the median round
    print(f"{label} {rps:,.0f} req/s: predicted p99 {pred['p99_ms']} ms, measured "
          f"{', '.join(str(r['p99_ms']) for r in rounds)} ms; "
          f"{', '.join(str(r['throughput_rps']) for r in rounds)} req/s answered; other "
          f"tenants {', '.join(str(r['other_cores']) for r in rounds)} cores")
    return {"label": label, "rps": rps, "plan": planned, "measured": got, "rounds": rounds,
            "p99_ratios": [round(r["p99_ms"] / pred["p99_ms"], 3) for r in rounds],
            "p99_ratio": round(got["p99_ms"] / pred["p99_ms"], 3),
            "p50_ratio": round(got["p50_ms"] / pred["p50_ms"], 3),
            "throughput_ratio": round(got["throughput_rps"] / rps, 3)}


if __name__ == "__main__":
    main()
