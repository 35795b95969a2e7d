#!/usr/bin/env bash
# Throughput with a feature on vs off, for 1-row and 100-row V2 requests:
#   bench/overhead.sh metrics  metrics and the prediction log at their defaults vs both off
#                              (target, issue 5: on >= 90% of off)
#   bench/overhead.sh auth     authentication on (a --tokens file, every request with a bearer
#                              token, checked against it) vs off
# Rounds alternate on/off on the same bundle with the same wrk settings, and the summary gives
# the median of each and the ratio. Needs the bundle and request bodies of a previous
# `make bench` (or of the quick `.venv/bin/python bench/run.py --only baton --repeat 1
# --duration 2 --startup-runs 1 --no-cold-build`). ROUNDS (default 5), DURATION (seconds per
# wrk run, default 6).
set -u
cd "$(dirname "$0")/.."
WHAT=${1:-metrics}
case "$WHAT" in metrics|auth) ;; *) echo "usage: $0 metrics|auth" >&2; exit 2 ;; esac
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
WRK=${WRK:-wrk}  # bench/run.py installs it (apt)
for f in build/bench/logreg-bundle build/bench/post-1.lua build/bench/post-100.lua; do
  [ -e "$f" ] || { echo "missing $f: run make bench first" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$WHAT" = auth ]; then  # one infer token; the request scripts send it
  token=$(.venv/bin/baton engine-tokens add "$work/tokens.toml" --name bench --scope infer)
  for rows in 1 100; do
    { cat build/bench/post-$rows.lua
      echo "wrk.headers[\"Authorization\"] = \"Bearer $token\""; } > "$work/auth-$rows.lua"
  done
fi
for round in $(seq 1 "$ROUNDS"); do
  for state in on off; do
    port=$((8500 + RANDOM % 400))
    flags=() lua=build/bench/post
    if [ "$WHAT" = metrics ]; then
      if [ $state = on ]; then m=true sample=1.0; else m=false sample=0; fi
    else
      m=true sample=1.0
      [ $state = on ] && flags=(--tokens "$work/tokens.toml") lua=$work/auth
    fi
    BATON_HOME=build/bench/baton-home BATON_METRICS=$m BATON_PREDICTION_LOG_SAMPLE=$sample \
      .venv/bin/baton serve build/bench/logreg-bundle --port $port --log-level warning \
      "${flags[@]}" > /dev/null 2>&1 &
    pid=$!
    for i in $(seq 1 100); do curl -sf localhost:$port/v2/health/ready >/dev/null && break; sleep 0.1; done
    for rows in 1 100; do
      # A refused request would count as fast: check one answer first.
      code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        ${token:+-H "authorization: Bearer $token"} --data-binary @build/bench/body-$rows.json \
        http://127.0.0.1:$port/v2/models/logreg/infer)
      [ "$code" = 200 ] || { echo "round $round $WHAT=$state: HTTP $code" >&2; kill $pid; exit 1; }
      "$WRK" -t1 -c16 -d2s -s $lua-$rows.lua http://127.0.0.1:$port/v2/models/logreg/infer >/dev/null 2>&1
      rps=$("$WRK" -t1 -c16 -d${DURATION}s -s $lua-$rows.lua \
        http://127.0.0.1:$port/v2/models/logreg/infer 2>/dev/null | awk '/Requests\/sec/ {print $2}')
      echo "round=$round rows=$rows $WHAT=$state rps=$rps" | tee -a "$work/runs"
    done
    kill $pid; wait $pid 2>/dev/null
  done
done
python3 - "$work/runs" "$WHAT" <<'PY'
import statistics, sys
what = sys.argv[2]
runs = {}
for line in open(sys.argv[1]):
    f = dict(kv.split("=") for kv in line.split())
    runs.setdefault((f["rows"], f[what]), []).append(float(f["rps"] or 0))
print(f"\n{what}: rows  req/s on (median)  req/s off (median)  on/off  rounds on/off")
for rows in ("1", "100"):
    on, off = runs[(rows, "on")], runs[(rows, "off")]
    ratios = [round(a / b, 2) for a, b in zip(on, off) if b]
    print(f"{rows:>4}  {statistics.median(on):>17,.0f}  {statistics.median(off):>18,.0f}  "
          f"{statistics.median(on) / statistics.median(off):>6.2f}  {ratios}")
PY
