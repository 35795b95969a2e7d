"""Fault benchmark: worker faults under load, one model at default settings (see README.md).

One command (``.venv/bin/python bench/faults.py``): package a model with ``baton.package``
defaults, ``baton check`` it with its report next to the bundle (as docs/operations.md says),
serve it with no option but the port, load it with 16 keep-alive connections, SIGKILL a
worker three times, then SIGSTOP one. For each kill: failed requests, p99 latency during
recovery; for the stop: time to detect the hung worker against its timeout. Results go to
build/bench/faults/results.json. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, source_state  # noqa: E402
from run import (  # noqa: E402
    BATON,
    INFER_PATH,
    MODEL_NAME,
    Server,
    free_port,
    make_body,
    make_model,
)

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "faults"
TARGETS = {"failed_per_kill_pct": 0.1, "recovery_p99_ms": 1000.0, "hang_detect_s": 2.0}


@dataclass
class Sample:
    start: float
    seconds: float
    status: int


class Load:
    """``connections`` keep-alive HTTP/1.1 connections, each sending the same POST in a
    loop; every answer is recorded with its start time, latency and status (0: no answer)."""

    def __init__(self, port: int, body: bytes, connections: int) -> None:
        self.port, self.connections = port, connections
        self.request = (f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        f"\r\n").encode() + body
        self.samples: list[Sample] = []
        self.stopping = False

    async def run(self) -> None:
        await asyncio.gather(*(self._connection() for _ in range(self.connections)))

    async def _connection(self) -> None:
        reader = writer = None
        while not self.stopping:
            start = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                assert reader is not None
                writer.write(self.request)
                status = await self._response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
                if writer is not None:
                    writer.close()
                reader = writer = None
            self.samples.append(Sample(start, time.monotonic() - start, status))
        if writer is not None:
            writer.close()

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines
                      if line.lower().startswith("content-length:"))
        await reader.readexactly(length)
        return status


def model_parameters(client: httpx.Client) -> dict[str, Any]:
    return client.get(f"/v2/models/{MODEL_NAME}").json()["parameters"]  # type: ignore[no-any-return]


async def wait_for(cond: Any, what: str, timeout: float = 120.0) -> float:
    """Poll ``cond`` (run in a thread) every 20 ms; return the monotonic time it held."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f}s")
        await asyncio.sleep(0.02)
    return time.monotonic()


def ready_pids(client: httpx.Client) -> list[int]:
    return [w["pid"] for w in model_parameters(client)["workers"] if w["state"] == "ready"]


def p99_ms(samples: list[Sample]) -> float | None:
    times = sorted(s.seconds for s in samples)
    if not times:
        return None
    return round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 1)


def window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.start < end]


async def faults(port: int, load: Load, args: argparse.Namespace) -> dict[str, Any]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    workers = model_parameters(client)["sizing"]["workers"]
    await wait_for(lambda: len(ready_pids(client)) == workers, "every worker ready")
    task = asyncio.get_running_loop().create_task(load.run())
    await asyncio.sleep(args.settle)  # unmeasured warm-up of the load
    base_start = time.monotonic()
    await asyncio.sleep(args.settle)
    baseline = window(load.samples, base_start, time.monotonic())
    kills = []
    for _ in range(args.kills):
        params = model_parameters(client)
        busy = [w for w in params["workers"] if w["state"] == "ready" and w["in_flight"]]
        victim = (busy or [w for w in params["workers"] if w["state"] == "ready"])[0]
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        back = await wait_for(lambda v=victim: victim_replaced(client, v["pid"], workers),
                              "the killed worker replaced")
        await asyncio.sleep(args.settle)
        during = window(load.samples, killed, back)
        after = window(load.samples, killed, time.monotonic())
        failed = sum(1 for s in after if s.status != 200)
        kills.append({"pid": victim["pid"], "had_in_flight": victim["in_flight"],
                      "replaced_after_s": round(back - killed, 3),
                      "requests": len(after), "failed": failed,
                      "failed_pct": round(100 * failed / max(1, len(after)), 4),
                      "recovery_requests": len(during), "recovery_p99_ms": p99_ms(during)})
    params = model_parameters(client)
    timeout = float(params["timeout"])
    victim = ready_pids(client)[0]
    restarts = params["restarts"]
    stopped = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    detected = await wait_for(lambda: model_parameters(client)["restarts"] > restarts,
                              "the stopped worker detected", timeout + 60)
    reason = model_parameters(client)["last_failure"]["reason"]
    await wait_for(lambda: len(ready_pids(client)) == workers, "every worker ready again")
    during_hang = window(load.samples, stopped, detected)
    load.stopping = True
    await task
    client.close()
    return {
        "workers": workers, "timeout_s": timeout, "timeout_from": params["timeout_from"],
        "sizing": params["sizing"], "retried_requests": params["retried_requests"],
        "baseline": {"requests": len(baseline), "p99_ms": p99_ms(baseline),
                     "rps": round(len(baseline) / args.settle, 1)},
        "kills": kills,
        "hang": {"detected_after_s": round(detected - stopped, 3),
                 "beyond_timeout_s": round(detected - stopped - timeout, 3),
                 "reason": reason, "requests_during": len(during_hang),
                 "failed_during": sum(1 for s in window(load.samples, stopped,
                                                        time.monotonic()) if s.status != 200),
                 "p99_ms_during": p99_ms(during_hang)},
        "total": {"requests": len(load.samples),
                  "failed": sum(1 for s in load.samples if s.status != 200)},
    }


def victim_replaced(client: httpx.Client, pid: int, workers: int) -> bool:
    pids = ready_pids(client)
    return pid not in pids and len(pids) == workers


def prepare() -> tuple[Path, dict[str, str]]:
    """The bundle with baton.package defaults, checked, its report next to its files."""
    import baton

    model, X = make_model()
    bundle = baton.package(model, sample=X, name=MODEL_NAME, version="1.0.0",
                           path=WORK / "logreg-bundle", overwrite=True)
    env = dict(os.environ, BATON_HOME=str(WORK / "baton-home"), UV_PYTHON_DOWNLOADS="never")
    env.pop("VIRTUAL_ENV", None)
    res = subprocess.run([str(BATON), "check", str(bundle), "--iterations", "50", "--report",
                          str(bundle / "check-report.json")], env=env, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(f"baton check failed:\n{res.stdout}\n{res.stderr}")
    return bundle, env


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    worst_fail = max(k["failed_pct"] for k in result["kills"])
    worst_p99 = max(k["recovery_p99_ms"] or 0.0 for k in result["kills"])
    return {"failed_per_kill_pct": worst_fail <= TARGETS["failed_per_kill_pct"],
            "recovery_p99_ms": worst_p99 <= TARGETS["recovery_p99_ms"],
            "hang_detect_s": result["hang"]["beyond_timeout_s"] <= TARGETS["hang_detect_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of load before the first fault and after each recovery")
    parser.add_argument("--workers", type=int, default=None,
                        help="pass --workers N to baton serve (default: none, the engine's "
                             "own sizing), to compare")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    bundle, env = prepare()
    port = free_port()
    extra = ["--workers", str(args.workers)] if args.workers else []
    server = Server("baton-faults", [str(BATON), "serve", str(bundle), "--port", str(port),
                                     *extra], port, env, grace=30)
    body = make_body(make_model()[1], 1)
    server.start()
    try:
        server.wait_first_prediction(body)
        result = asyncio.run(faults(port, Load(port, body, args.connections), args))
    finally:
        server.stop()
    result.update({"time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                   "machine": machine(), "source": source_state(),
                   "connections": args.connections, "serve_options": extra,
                   "targets": TARGETS,
                   "met": verdicts(result)})
    name = f"results-workers-{args.workers}.json" if args.workers else "results.json"
    (WORK / name).write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0 if all(result["met"].values()) else 1


def render(r: dict[str, Any]) -> str:
    lines = [f"{r['workers']} worker(s) ({r['sizing']}), timeout {r['timeout_s']:g}s "
             f"({r['timeout_from']}), {r['connections']} connections",
             f"baseline: {r['baseline']['rps']} req/s, p99 {r['baseline']['p99_ms']} ms",
             "kill  in-flight  requests  failed  failed%  replaced-after-s  recovery-p99-ms"]
    for i, k in enumerate(r["kills"], 1):
        lines.append(f"{i:>4}  {k['had_in_flight']:>9}  {k['requests']:>8}  {k['failed']:>6}  "
                     f"{k['failed_pct']:>7}  {k['replaced_after_s']:>16}  "
                     f"{k['recovery_p99_ms']:>15}")
    h = r["hang"]
    lines.append(f"SIGSTOP: detected after {h['detected_after_s']}s "
                 f"({h['beyond_timeout_s']:+}s beyond the {r['timeout_s']:g}s timeout), "
                 f"{h['failed_during']} failed, p99 {h['p99_ms_during']} ms while hung")
    lines.append(f"total: {r['total']['requests']} requests, {r['total']['failed']} failed; "
                 f"retried after a kill: {r['retried_requests']}")
    lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                          for k, v in r["met"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
