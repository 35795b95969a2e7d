#!/usr/bin/env bash
# Throughput with metrics and the prediction log at their defaults ("on") vs both off, for
# 1-row and 100-row requests (target: on >= 90% of off). Rounds alternate on/off on the same
# bundle with the same wrk settings, and the summary gives the median of each and the ratio.
# Needs the bundle and request bodies of a previous `make bench` (or of the quick
# `.venv/bin/python bench/run.py --only baton --repeat 1 --duration 2 --startup-runs 1
# --no-cold-build`). ROUNDS (default 5), DURATION (seconds per wrk run, default 6).
set -u
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
WRK=${WRK:-wrk}  # bench/run.py installs it (apt)
for f in build/bench/logreg-bundle build/bench/post-1.lua build/bench/post-100.lua; do
  [ -e "$f" ] || { echo "missing $f: run make bench first" >&2; exit 2; }
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for m in true false; do
    port=$((8500 + RANDOM % 400))
    if [ "$m" = true ]; then sample=1.0; state=on; else sample=0; state=off; fi
    BATON_HOME=build/bench/baton-home BATON_METRICS=$m BATON_PREDICTION_LOG_SAMPLE=$sample \
      .venv/bin/baton serve build/bench/logreg-bundle --port $port --log-level warning > /dev/null 2>&1 &
    pid=$!
    for i in $(seq 1 100); do curl -sf localhost:$port/v2/health/ready >/dev/null && break; sleep 0.1; done
    for rows in 1 100; do
      "$WRK" -t1 -c16 -d2s -s build/bench/post-$rows.lua http://127.0.0.1:$port/v2/models/logreg/infer >/dev/null 2>&1
      rps=$("$WRK" -t1 -c16 -d${DURATION}s -s build/bench/post-$rows.lua \
        http://127.0.0.1:$port/v2/models/logreg/infer 2>/dev/null | awk '/Requests\/sec/ {print $2}')
      echo "round=$round rows=$rows monitoring=$state rps=$rps" | tee -a "$out"
    done
    kill $pid; wait $pid 2>/dev/null
  done
done
python3 - "$out" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = dict(kv.split("=") for kv in line.split())
    runs.setdefault((f["rows"], f["monitoring"]), []).append(float(f["rps"] or 0))
print("\nrows  req/s on (median)  req/s off (median)  on/off  rounds on/off")
for rows in ("1", "100"):
    on, off = runs[(rows, "on")], runs[(rows, "off")]
    ratios = [round(a / b, 2) for a, b in zip(on, off) if b]
    print(f"{rows:>4}  {statistics.median(on):>17,.0f}  {statistics.median(off):>18,.0f}  "
          f"{statistics.median(on) / statistics.median(off):>6.2f}  {ratios}")
EOF
