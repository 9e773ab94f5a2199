#!/usr/bin/env bash
# HTTP throughput with wrk (a C load generator) instead of bench/serving.py's Python httpx client, which
# itself tops out near 376 req/s on /healthz on this 2-core machine and so caps what any server can show.
# Same run, same texts (banking77 test), same naive peer (bench/serving.py --naive-server), 30 s per level.
#   [DURATION=60s] bash bench/serving_wrk.sh [RUN_DIR]     (needs `apt-get install wrk`; results: bench/results/serving_wrk.md)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/b77_full_s4}
NAME=$(basename "$RUN")
TMP=$(mktemp -d)
export DOMAINTUNE_HOME=$TMP
trap 'pkill -f "port 8766" || true; pkill -f "port 8765" || true; rm -rf "$TMP"' EXIT
OUT=bench/results/serving_wrk.md
KEY=$(.venv/bin/domaintune keys create --name wrk --scope predict 2>/dev/null | tail -1)
.venv/bin/python bench/serving_wrk_lua.py /predict > "$TMP/naive.lua"
.venv/bin/python bench/serving_wrk_lua.py "/v1/models/$NAME/predict" "$KEY" > "$TMP/ours.lua"
{
echo "# Serving throughput with wrk ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "Run \`$RUN\`, banking77 test texts, one text per request, \`wrk -t2 -cC -d${DURATION:-30s} --latency\`; load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo '```'
.venv/bin/python bench/serving.py --naive-server --run "$RUN" --port 8766 > "$TMP/naive.log" 2>&1 &
for i in $(seq 120); do curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"text":"hi"}' localhost:8766/predict && break; sleep 1; done
for c in 8 32; do echo "== naive FastAPI + pipeline, concurrency $c"; wrk -t2 -c$c -d${DURATION:-30s} --latency -s "$TMP/naive.lua" http://127.0.0.1:8766 | grep -E "Requests/sec|50%|99%|non-2xx"; done
pkill -f "port 8766" || true; sleep 2
.venv/bin/domaintune serve "$RUN" --port 8765 --audit-db "$TMP/audit.db" --backend onnx-int8 > "$TMP/ours.log" 2>&1 &
for i in $(seq 120); do curl -s -o /dev/null localhost:8765/readyz && break; sleep 1; done
for c in 8 32; do echo "== domaintune serve (int8), concurrency $c"; wrk -t2 -c$c -d${DURATION:-30s} --latency -s "$TMP/ours.lua" http://127.0.0.1:8765 | grep -E "Requests/sec|50%|99%|non-2xx"; done
echo "== server metrics"; curl -s localhost:8765/metrics | grep -E '^domaintune_requests_total.*predict|^domaintune_batch_size_(sum|count)'
echo '```'
} | tee "$OUT"
