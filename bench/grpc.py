"""gRPC and HTTP V2 side by side: one `baton serve` with both, the same rows, Triton's clients.

One command::

    .venv/bin/python bench/grpc.py        # about 3 minutes

starts `baton serve examples/penguins/bundle --grpc-port G` (default settings, its
environment in build/bench/baton-home), checks that gRPC and HTTP V2 give the same answer to
the same rows, then, for 1-row and 100-row requests, loads each protocol with Triton's own
asyncio client (tritonclient.grpc.aio: raw_input_contents in, raw outputs back;
tritonclient.http.aio: the binary tensor data extension both ways), ``--concurrency``
requests in flight, in short runs that alternate between the two protocols (the machine is
shared: whatever else it does falls on both alike). It reports requests/s, rows/s, p50 and
p99 (client side), and CPU per request of the server (engine and workers) and of the client
process. Results: build/bench/grpc.json and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# This file is bench/grpc.py, and Python puts its folder first on sys.path: the grpc package
# (which tritonclient imports) must not resolve to this script. bench/ goes last instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tritonclient.grpc.aio as grpcclient  # noqa: E402
import tritonclient.http.aio as httpclient  # noqa: E402
import uvloop  # noqa: E402
from benchlib import free_port, machine, source_state, tree_cpu, wait_for_quiet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench"
BATON = Path(sys.executable).parent / "baton"
PENGUINS = ROOT / "examples" / "penguins" / "bundle"
INPUTS = [("island", "BYTES"), ("sex", "BYTES"), ("bill_length_mm", "FP64"),
          ("bill_depth_mm", "FP64"), ("flipper_length_mm", "FP64"), ("body_mass_g", "FP64"),
          ("year", "INT64")]
OUTPUTS = ["prediction", "proba_Adelie", "proba_Chinstrap", "proba_Gentoo"]


def log(msg: str) -> None:
    print(f"[grpc bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rows(n: int) -> list[dict[str, Any]]:
    """``n`` of the example's sample rows, cycling through those without a null."""
    samples = json.loads((PENGUINS / "samples" / "input.json").read_text())
    full = [r for r in samples if all(v is not None for v in r.values())]
    return [full[i % len(full)] for i in range(n)]


def inputs(module: Any, n: int) -> list[Any]:
    kinds = {"BYTES": object, "FP64": np.float64, "INT64": np.int64}
    out = []
    for name, datatype in INPUTS:
        values = np.array([r[name] for r in rows(n)], dtype=kinds[datatype])
        inp = module.InferInput(name, [n], datatype)
        inp.set_data_from_numpy(values)
        out.append(inp)
    return out


class Engine:
    """`baton serve` with HTTP and gRPC, in its own session, stopped by PID."""

    def __init__(self, workers: int) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        env = dict(os.environ, BATON_HOME=str(WORK / "baton-home"), UV_PYTHON_DOWNLOADS="never")
        env.pop("VIRTUAL_ENV", None)
        cmd = [str(BATON), "serve", str(PENGUINS), "--port", str(self.port),
               "--grpc-port", str(self.grpc_port)]
        if workers:
            cmd += ["--workers", str(workers)]
        self.log_path = WORK / "logs" / "grpc-bench.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"baton serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        sys.exit(f"baton serve not ready after {timeout}s; see {self.log_path}")

    def cpu(self) -> float:
        """CPU seconds of the engine and its workers so far."""
        return tree_cpu(self.ps.pid)

    def workers(self) -> int:
        import httpx

        model = httpx.get(f"http://127.0.0.1:{self.port}/v2/models/penguins").json()
        return len(model["parameters"]["workers"])

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            return self.proc.wait()


async def load(call: Callable[[], Awaitable[Any]], seconds: float, concurrency: int
               ) -> tuple[list[float], int, float]:
    """``concurrency`` callers, each sending its next request as soon as one is answered:
    the latencies, the errors and the seconds it took."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < stop:
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def own_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)  # every thread, gRPC's own included
    return use.ru_utime + use.ru_stime


async def check(grpc: Any, http: Any) -> None:
    """Both protocols give the same answer to the same rows (1 and 100)."""
    for n in (1, 100):
        a = await grpc.infer("penguins", inputs(grpcclient, n))
        b = await http.infer("penguins", inputs(httpclient, n))
        for name in OUTPUTS:
            if not np.array_equal(a.as_numpy(name), b.as_numpy(name)):
                sys.exit(f"gRPC and HTTP differ on {name} for {n} rows")


async def bench(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """Per size: both protocols warmed up, then ``slices`` short runs of each, alternating
    (gRPC first in even slices, HTTP first in odd ones), so that whatever else the machine
    does falls on both alike."""
    clients = {"grpc": (grpcclient.InferenceServerClient(f"127.0.0.1:{engine.grpc_port}"),
                        grpcclient),
               "http": (httpclient.InferenceServerClient(f"127.0.0.1:{engine.port}",
                                                         conn_limit=args.concurrency),
                        httpclient)}
    await check(clients["grpc"][0], clients["http"][0])
    results: dict[str, Any] = {}
    for n in args.sizes:
        calls = {}
        for proto, (client, module) in clients.items():
            request = inputs(module, n)

            def call(client: Any = client, request: list[Any] = request) -> Awaitable[Any]:
                return client.infer("penguins", request)  # type: ignore[no-any-return]

            calls[proto] = call
        if args.quiet_wait:
            wait_for_quiet(args.quiet_wait)
        for proto in calls:
            await load(calls[proto], args.warmup, args.concurrency)
        acc = {proto: {"latencies": [], "errors": 0, "seconds": 0.0, "server_cpu": 0.0,
                       "client_cpu": 0.0, "slice_rps": []} for proto in calls}
        for i in range(args.slices):
            for proto in (("grpc", "http") if i % 2 == 0 else ("http", "grpc")):
                cpu0, own0 = engine.cpu(), own_cpu()
                lat, errors, seconds = await load(calls[proto], args.slice, args.concurrency)
                a = acc[proto]
                a["server_cpu"] += engine.cpu() - cpu0
                a["client_cpu"] += own_cpu() - own0
                a["latencies"] += lat
                a["errors"] += errors
                a["seconds"] += seconds
                a["slice_rps"].append(round(len(lat) / seconds, 1))
        for proto, a in acc.items():
            ms = np.array(a["latencies"]) * 1000
            count = max(len(ms), 1)
            r = {"protocol": proto, "rows": n, "requests": len(ms), "errors": a["errors"],
                 "seconds": round(a["seconds"], 2), "rps": len(ms) / a["seconds"],
                 "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                 "server_cpu_ms_per_request": 1000 * a["server_cpu"] / count,
                 "client_cpu_ms_per_request": 1000 * a["client_cpu"] / count,
                 "slice_rps": a["slice_rps"]}
            r["rows_per_s"] = r["rps"] * n
            results[f"{proto}-{n}"] = r
            log(f"{proto:4} {n:3} rows: {r['rps']:8.1f} req/s, p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, server CPU {r['server_cpu_ms_per_request']:.2f} "
                f"ms/req, {r['errors']} errors")
    for client, _ in clients.values():
        await client.close()
    return results


def render(results: dict[str, Any], sizes: list[int]) -> str:
    lines = ["| rows | protocol | requests/s | rows/s | p50 ms | p99 ms | server CPU ms/req "
             "| client CPU ms/req | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        g, h = results[f"grpc-{n}"], results[f"http-{n}"]
        for label, r in (("gRPC", g), ("HTTP V2", h)):
            lines.append(f"| {n} | {label} | {r['rps']:.0f} | {r['rows_per_s']:.0f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['server_cpu_ms_per_request']:.2f} | "
                         f"{r['client_cpu_ms_per_request']:.2f} | {r['errors']} |")
        lines.append(f"| {n} | gRPC / HTTP | {g['rps'] / h['rps']:.2f}x | | "
                     f"{g['p50_ms'] / h['p50_ms']:.2f}x | {g['p99_ms'] / h['p99_ms']:.2f}x | "
                     f"{g['server_cpu_ms_per_request'] / h['server_cpu_ms_per_request']:.2f}x "
                     "| | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=10,
                        help="measured runs of each protocol per size, alternating")
    parser.add_argument("--slice", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unmeasured seconds of each protocol first")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--sizes", default="1,100", help="rows per request")
    parser.add_argument("--workers", type=int, default=0,
                        help="--workers of baton serve (0: its default)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="wait up to S seconds for a quiet machine before each size")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"starting baton serve {PENGUINS.relative_to(ROOT)} with --grpc-port")
    engine = Engine(args.workers)
    try:
        engine.wait_ready()
        workers = engine.workers()
        log(f"ready: HTTP :{engine.port}, gRPC :{engine.grpc_port}, {workers} worker(s)")
        results = uvloop.run(bench(engine, args))
    finally:
        code = engine.stop()
    table = render(results, args.sizes)
    print(table)
    out = {"machine": machine(), "source": source_state(), "settings": vars(args),
           "workers": workers, "stop_exit_code": code, "results": results, "table": table,
           "load_average": os.getloadavg()}
    (WORK / "grpc.json").write_text(json.dumps(out, indent=2))
    log(f"results in {(WORK / 'grpc.json').relative_to(ROOT)}; load average at the end "
        f"{os.getloadavg()[0]:.1f}")
    return 1 if any(r["errors"] for r in results.values()) or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
