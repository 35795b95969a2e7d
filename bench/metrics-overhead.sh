#!/usr/bin/env bash
# Throughput with metrics and the prediction log at their defaults vs both off (target:
# >= 90% of off), interleaved rounds on the same bundle with the same wrk settings.
# Needs a previous `make bench` (its bundle and request bodies).
set -u
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
for round in $(seq 1 "$ROUNDS"); do
  for m in true false; do
    port=$((8500 + RANDOM % 400))
    if [ "$m" = true ]; then sample=1.0; else sample=0; fi
    BATON_HOME=build/bench/baton-home BATON_METRICS=$m BATON_PREDICTION_LOG_SAMPLE=$sample \
      .venv/bin/baton serve build/bench/logreg-bundle --port $port --log-level warning > /dev/null 2>&1 &
    pid=$!
    for i in $(seq 1 100); do curl -sf localhost:$port/v2/health/ready >/dev/null && break; sleep 0.1; done
    wrk -t1 -c16 -d3s -s build/bench/post-1.lua http://127.0.0.1:$port/v2/models/logreg/infer >/dev/null 2>&1
    rps=$(wrk -t1 -c16 -d6s -s build/bench/post-1.lua http://127.0.0.1:$port/v2/models/logreg/infer 2>/dev/null | grep Requests/sec | awk '{print $2}')
    echo "round=$round monitoring=$m rps=$rps"
    kill $pid; wait $pid 2>/dev/null
  done
done
