"""``baton serve --ray`` against one machine, and a node lost under load (see README.md).

One command (``.venv/bin/python bench/cluster_serve.py``, about 4 minutes on 2 cores): the
penguins example served (1) by ``baton serve`` on this machine, (2) by ``baton serve --ray``
on a local Ray cluster of one node with one replica, (3) on one of two nodes with two
replicas; each driven by the same keep-alive load (``--connections`` connections posting
3 records to ``/v1/models/penguins/predict`` without pause) for ``--seconds``: requests/s,
p50 and p99. Then, on the two-node cluster under the same load, every process of the worker
node is SIGKILLed: failed requests, how long after the kill the last one failed, and when a
replacement replica ran. Results: build/bench/cluster-serve/results.json.

All of it shares this machine's cores: a cluster of nodes on one machine measures the
overhead of Ray's proxy, the ingress hop and the replicas, not the scale-out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import free_port, machine, source_state  # noqa: E402
from faults import Load, Sample, p99_ms, window  # noqa: E402

from baton.cluster.local import LocalCluster, ray_environment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "cluster-serve"
BUNDLE = ROOT / "examples" / "penguins" / "bundle"
BATON = [sys.executable, "-m", "baton"]
PATH = "/v1/models/penguins/predict"


def body() -> bytes:
    rows = json.loads((BUNDLE / "samples" / "input.json").read_text())[:3]
    return json.dumps(rows).encode()


def load_for(port: int, connections: int) -> Load:
    load = Load(port, b"", connections)
    data = body()
    load.request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
    return load


def start(args: list[str], port: int, env: dict[str, str], log: Path,
          announce: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([*BATON, "serve", str(BUNDLE), "--port", str(port), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while announce not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"baton serve did not start: see {log}")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def figures(samples: list[Sample], seconds: float) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    times = sorted(s.seconds for s in ok)
    return {"requests": len(samples), "failed": len(samples) - len(ok),
            "req_s": round(len(ok) / seconds, 1),
            "p50_ms": round(times[len(times) // 2] * 1000, 1) if times else None,
            "p99_ms": p99_ms(ok)}


async def measure(port: int, connections: int, seconds: float) -> dict[str, Any]:
    load = load_for(port, connections)
    task = asyncio.get_running_loop().create_task(load.run())
    await asyncio.sleep(2.0)  # warm-up, not counted
    begin = time.monotonic()
    await asyncio.sleep(seconds)
    load.stopping = True
    await task
    return figures(window(load.samples, begin, begin + seconds), seconds)


def running_nodes(port: int) -> set[str]:
    info = httpx.get(f"http://127.0.0.1:{port}/v1/cluster", timeout=10).json()
    return {r["node"] for r in info["deployments"]["model-penguins"]["replicas"]
            if r["state"] == "RUNNING"}


def replica_count(port: int) -> int:
    info = httpx.get(f"http://127.0.0.1:{port}/v1/cluster", timeout=10).json()
    return sum(r["state"] == "RUNNING" for r in info["deployments"]["model-penguins"]["replicas"])


async def node_loss(port: int, cluster: LocalCluster, connections: int) -> dict[str, Any]:
    load = load_for(port, connections)
    task = asyncio.get_running_loop().create_task(load.run())
    await asyncio.sleep(3.0)
    killed = time.monotonic()
    cluster.nodes[1].kill()
    replaced = None
    while time.monotonic() - killed < 300:
        nodes = await asyncio.to_thread(running_nodes, port)
        if len(nodes) == 1 and await asyncio.to_thread(replica_count, port) == 2:
            replaced = time.monotonic() - killed
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(5.0)
    load.stopping = True
    await task
    after = [s for s in load.samples if s.start >= killed]
    failed = [s for s in after if s.status != 200]
    return {"requests_after_kill": len(after), "failed": len(failed),
            "last_failure_s": round(max(s.start + s.seconds for s in failed) - killed, 2)
            if failed else 0.0,
            "replacement_running_s": round(replaced, 1) if replaced is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--base", type=int, default=27000, help="The clusters' first port.")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **ray_environment(), BATON_WORKERS="1",
               UV_PYTHON_DOWNLOADS="never")
    results: dict[str, Any] = {"machine": machine(), "source": source_state(),
                               "connections": args.connections, "seconds": args.seconds}
    port = free_port()
    proc = start([], port, env, WORK / "local.log", "Baton is serving at")
    try:
        results["one machine"] = asyncio.run(measure(port, args.connections, args.seconds))
    finally:
        stop(proc)
    for nodes in (1, 2):
        cluster = LocalCluster(WORK / f"ray-{nodes}", base=args.base, cpus=4)
        try:
            cluster.start(workers=nodes - 1)
            port = free_port()
            proc = start(["--ray", cluster.address, "--ray-proxy", "head-only",
                          "--replicas", str(nodes)], port, env, WORK / f"ray-{nodes}.log",
                         "Baton is serving on the Ray cluster")
            try:
                key = f"ray, {nodes} node(s), {nodes} replica(s)"
                results[key] = asyncio.run(measure(port, args.connections, args.seconds))
                if nodes == 2:
                    results["node lost"] = asyncio.run(node_loss(port, cluster,
                                                                 args.connections))
            finally:
                stop(proc)
        finally:
            cluster.stop()
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    base = results["one machine"]["req_s"]
    print(f"{'run':<34} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}")
    for key in ("one machine", "ray, 1 node(s), 1 replica(s)", "ray, 2 node(s), 2 replica(s)"):
        r = results[key]
        print(f"{key:<34} {r['req_s']:>8} {r['req_s'] / base:>6.2f} {r['p50_ms']:>7} "
              f"{r['p99_ms']:>7} {r['failed']:>6}")
    print("node lost under load:", json.dumps(results["node lost"]))


if __name__ == "__main__":
    main()
