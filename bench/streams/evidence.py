"""Small reproductions behind two findings in README.md (not part of the benchmark).

    .venv/bin/python bench/streams/evidence.py stream-keys   # prediction ids of streamed records
    .venv/bin/python bench/streams/evidence.py redis-parse   # redis-py asyncio vs sync, hiredis

stream-keys: streams 1,000 records to ``baton serve`` through Redis, 100 records for each of
10 keys (as Kafka or Redis keys usually name an entity, not an event), then labels two events
of the same key by their prediction ids (the ``id`` of each output) and one by the key (its
latest event), and looks at what the prediction log kept. Before 4efe990/cc91028 the key was
the prediction id: a second label for a key was refused as a duplicate.

redis-parse: reads 256 stream entries like the benchmark's (XRANGE COUNT 256, 502-byte
values) with redis-py's sync and asyncio clients, without hiredis (the project venv) and
with it (a throwaway venv, build/bench-streams/envs/hiredis, created with uv). The project
now depends on redis[hiredis], so "without hiredis" needs a venv without it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # bench/benchlib.py
import brokers  # noqa: E402
import run  # noqa: E402

REDIS_MICRO = r"""
import asyncio, os, random, time, orjson, redis, redis.asyncio as aredis, uvloop
random.seed(1)
cols = [f"f{i}" for i in range(20)]
s = f"bench-micro-{os.urandom(4).hex()}"
r = redis.Redis()
p = r.pipeline(transaction=False)
for i in range(256):
    p.xadd(s, {"key": str(i), "value": orjson.dumps({c: random.gauss(0, 1) for c in cols})})
p.execute()
def sync_read(n=300):
    t = time.perf_counter()
    for _ in range(n):
        r.xrange(s, count=256)
    return (time.perf_counter() - t) / n * 1000
async def async_read(n=300):
    ar = aredis.Redis()
    t = time.perf_counter()
    for _ in range(n):
        await ar.xrange(s, count=256)
    dt = (time.perf_counter() - t) / n * 1000
    await ar.aclose()
    return dt
try:
    import hiredis
    h = "with hiredis " + hiredis.__version__
except ImportError:
    h = "without hiredis"
try:
    sync_read(20)
    out = [(sync_read(), uvloop.run(async_read())) for _ in range(3)]
    print(f"redis-py {redis.__version__} {h}: XRANGE COUNT 256, ms per call: sync "
          f"{sorted(o[0] for o in out)[1]:.2f}, asyncio {sorted(o[1] for o in out)[1]:.2f} "
          "(median of 3 x 300 calls)")
finally:
    r.delete(s)
"""


def redis_parse() -> int:
    script = run.WORK / "redis_micro.py"
    run.WORK.mkdir(parents=True, exist_ok=True)
    script.write_text(REDIS_MICRO)
    env_dir = run.WORK / "envs" / "hiredis"
    if not (env_dir / "bin" / "python").exists():
        import redis

        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
        env.pop("VIRTUAL_ENV", None)
        uv = str(run.BIN / "uv")
        subprocess.run([uv, "venv", "--quiet", "--python",
                        f"{sys.version_info.major}.{sys.version_info.minor}", str(env_dir)],
                       env=env, check=True)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(env_dir / "bin/python"),
                        f"redis=={redis.__version__}", "hiredis", "orjson", "uvloop"],
                       env=env, check=True)
    for py in (sys.executable, str(env_dir / "bin" / "python")):
        subprocess.run([py, str(script)], check=True)
    return 0


def stream_keys() -> int:
    import orjson
    import redis

    model, frame = run.make_model()
    paths = run.package(model, frame)
    run.ensure_baton_env(paths["bundle"])
    rows = frame.to_dict("records")
    r = redis.Redis()
    names = brokers.RedisBroker(run.WORK).names(f"keys-{os.urandom(4).hex()}")
    n = 1000
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(names.input, {"key": f"customer-{i % 10}", "value": orjson.dumps(rows[i])})
    pipe.execute()
    port = brokers.free_port()
    run.forget_predictions()
    proc = subprocess.Popen(
        [str(run.BATON), "serve", str(paths["bundle"]), "--port", str(port),
         "--input", f"redis://127.0.0.1:6379/{names.input}",
         "--output", f"redis://127.0.0.1:6379/{names.output}",
         "--dead-letter", f"redis://127.0.0.1:6379/{names.dead}"],
        env=run.baton_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while r.xlen(names.output) < n:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("baton did not score the records")
            time.sleep(0.05)
        time.sleep(1.5)  # the prediction log is written every 0.5 s

        def feedback(labels: list[dict[str, object]]) -> dict[str, object]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/{run.MODEL_NAME}/feedback",
                data=json.dumps(labels).encode(),
                headers={"content-type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        outputs = [orjson.loads(f[b"value"]) for _, f in r.xrange(names.output)]
        ids = [o["id"] for o in outputs if o["key"] == "customer-3"]
        by_id = feedback([{"id": pid, "label": 1} for pid in ids[:2]])
        by_key = feedback([{"id": "customer-3", "label": 0}])
        db = sqlite3.connect(run.WORK / "baton-home" / "predictions.sqlite")
        try:
            batches, logged = db.execute(
                "SELECT count(*), sum(rows) FROM prediction_batches").fetchone()
            indexed = db.execute("SELECT count(*) FROM prediction_keys").fetchone()[0]
        finally:
            db.close()
        print(f"{n} records scored (10 keys x 100 records each): {len(outputs)} outputs with "
              f"{len({o['id'] for o in outputs})} distinct ids; the log holds {logged} "
              f"predictions in {batches} batch row(s); {indexed} key(s) indexed once a label "
              "named a key.")
        print(f"labels for two events of 'customer-3', by their ids: accepted "
              f"{by_id.get('accepted')}, duplicates {by_id.get('duplicates')}")
        print(f"a label naming the key 'customer-3' (its latest event): accepted "
              f"{by_key.get('accepted')}, duplicates {by_key.get('duplicates')}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        r.delete(names.input, names.output, names.dead)
        run.forget_predictions()
    return 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "stream-keys":
        sys.exit(stream_keys())
    if what == "redis-parse":
        sys.exit(redis_parse())
    sys.exit(__doc__)
