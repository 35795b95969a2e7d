"""Where Baton spends its time under load: py-spy on the engine and on its worker.

    .venv/bin/python bench/profile.py [--sizes 1,100] [--seconds 8]

Uses the bundle and request bodies that bench/run.py wrote to build/bench/ (run it first).
py-spy is installed into a throwaway environment (build/bench/envs/tools). For each size it
starts ``baton serve``, puts wrk load on it (same settings as run.py), records both
processes for a few seconds (raw folded stacks in build/bench/profile-*.txt) and prints the
share of samples per self (leaf) function and per stage of the request path.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402 - the benchmark's own helpers
from benchlib import ensure_py_spy  # noqa: E402

TOOLS = run.WORK / "envs" / "tools"

#: Stages of the request path, by the first matching frame (innermost first wins).
STAGES = [
    ("worker: predict_proba (scikit-learn)", ("predict_proba (sklearn",)),
    ("worker: frame decode/encode + json header", ("Runner.decode_columns", "Runner.send",
                                                   "Runner.encode_columns",
                                                   "read_frame (baton/runtime/runner.py:5")),
    ("worker: waiting for a frame", ("read_frame (baton/runtime/runner.py:4",)),
    ("engine: V2 JSON decode (msgspec + np.array)", ("parse_request", "_decode_tensor")),
    ("engine: contract checks (inputs, outputs)", ("tensor_problem", "check_outputs")),
    ("engine: V2 response encode (orjson)", ("encode_response",)),
    ("engine: pool, batching, IPC to worker", ("WorkerPool.", "Worker.", "_Pipes.",
                                               "encode_predict", "decode_columns",
                                               "concat_batches", "split_batch")),
    ("engine: HTTP (uvicorn + httptools, ASGI)", ("uvicorn/", "BatonApp.")),
]


def summarize(path: Path, top: int = 12) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    stage: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf[frames[-1]] += count
        for name, needles in STAGES:
            if any(any(nd in f for nd in needles) for f in frames):
                stage[name] += count
                break
        else:
            stage["other (event loop, GC, ...)"] += count
    if not total:
        return f"{path.name}: no samples"
    out = [f"{path.name}: {total} samples"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in stage.most_common()]
    out.append("  top self functions:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,100")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--idle", action="store_true", help="also sample idle (waiting) stacks")
    args = ap.parse_args()
    py_spy = ensure_py_spy(TOOLS)
    wrk = run.ensure_wrk()
    paths = {"bundle": run.WORK / "logreg-bundle"}
    for rows in (int(s) for s in args.sizes.split(",")):
        lua = run.WORK / f"post-{rows}.lua"
        if not lua.exists() or not paths["bundle"].exists():
            sys.exit("run bench/run.py first (it writes the bundle and the request bodies)")
        body = (run.WORK / f"body-{rows}.json").read_bytes()
        server = run.make_server("baton", paths, None)
        server.start()
        try:
            server.wait_first_prediction(body)
            procs = server.tree()
            engine = procs[0].pid
            # Workers forked from a worker template are the engine's grandchildren (the
            # template, a child, only forks them); spawned ones are its children.
            forked = [p.pid for p in procs[1:] if p.ppid() != engine]
            workers = forked or [p.pid for p in procs[1:]]
            load = subprocess.Popen([wrk, "-t1", "-c16", f"-d{args.seconds + 3:g}s", "-s",
                                     str(lua), f"http://127.0.0.1:{server.port}{run.INFER_PATH}"],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)
            spies = []
            roles = [("engine", engine)] + [(f"worker{i}" if len(workers) > 1 else "worker",
                                              pid) for i, pid in enumerate(workers)]
            for role, pid in roles:
                out = run.WORK / f"profile-{rows}-{role}.txt"
                cmd = [str(py_spy), "record", "-p", str(pid), "-d", f"{args.seconds:g}",
                       "-r", "200", "--nonblocking", "--format", "raw", "-o", str(out)]
                if args.idle:
                    cmd.append("--idle")
                spies.append((out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)))
            for _, spy in spies:
                spy.wait()
            wrk_out, _ = load.communicate()
        finally:
            server.stop()
        rps = next((line for line in wrk_out.splitlines() if "Requests/sec" in line), "")
        print(f"\n=== {rows} row(s) per request, wrk -c16 ({rps.strip()}; includes py-spy "
              "overhead) ===")
        for out, _ in spies:
            print(summarize(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
