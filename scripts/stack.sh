#!/usr/bin/env bash
# The compose stack's topology as local processes on loopback, for machines
# without a Docker engine: a published version (trained first if there is
# none), the query server, and the candidate service with its metrics
# endpoint. Once both report SERVING it lists what reflection serves (as
# `grpcurl list` would), sends a few Retrieve calls and shows the request
# counters, then runs until Ctrl-C. Run through `make stack`.
#
#   scripts/stack.sh           bring the stack up and keep it running
#   scripts/stack.sh --check   bring it up, check it, stop it (exit 0 if ok)
set -euo pipefail

PY=${PY:-.venv/bin/python}
MODELS_DIR=${MODELS_DIR:-build/models}
HOST=127.0.0.1
QUERY_PORT=${QUERY_PORT:-8500}
CANDIDATE_PORT=${CANDIDATE_PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9102}
LOG_FORMAT=${LOG_FORMAT:-text}
READY_SECONDS=${READY_SECONDS:-120}
LOG_DIR=${LOG_DIR:-build/stack}

check_only=false
case "${1:-}" in
  --check) check_only=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

mkdir -p "$LOG_DIR" "$MODELS_DIR"

if ! "$PY" -c "import sys; from model_store import layout
sys.exit(layout.latest_version(sys.argv[1]) is None)" "$MODELS_DIR"; then
  echo "== no version under $MODELS_DIR: training" \
    "(data: ${MOVIELENS_DATA_DIR:-download of ml-100k})"
  "$PY" -m trainer --models-dir "$MODELS_DIR"
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
show_logs() {
  echo "-- last lines of the logs in $LOG_DIR:" >&2
  tail -n 20 "$LOG_DIR"/*.log >&2
}

echo "== query server on $HOST:$QUERY_PORT (log: $LOG_DIR/query_service.log)"
"$PY" -m query_service --host "$HOST" --port "$QUERY_PORT" \
  --models-dir "$MODELS_DIR" --log-format "$LOG_FORMAT" \
  >"$LOG_DIR/query_service.log" 2>&1 &
pids+=($!)

echo "== candidate service on $HOST:$CANDIDATE_PORT, metrics on" \
  "$HOST:$METRICS_PORT (log: $LOG_DIR/candidate_service.log)"
"$PY" -m candidate_service --host "$HOST" --port "$CANDIDATE_PORT" \
  --models-dir "$MODELS_DIR" --query-server "$HOST:$QUERY_PORT" \
  --metrics-port "$METRICS_PORT" --log-format "$LOG_FORMAT" \
  >"$LOG_DIR/candidate_service.log" 2>&1 &
pids+=($!)

echo "== waiting up to ${READY_SECONDS}s for both to report SERVING"
for address in "$HOST:$QUERY_PORT" "$HOST:$CANDIDATE_PORT"; do
  if ! "$PY" -m deploy.probe health "$address" --wait "$READY_SECONDS"; then
    show_logs
    exit 1
  fi
done

for address in "$HOST:$QUERY_PORT" "$HOST:$CANDIDATE_PORT"; do
  echo "== reflection: services of $address"
  "$PY" -m deploy.probe list "$address" || { show_logs; exit 1; }
done

echo "== three Retrieve calls"
for user in 1 2 3; do
  "$PY" -m candidate_service.client --address "$HOST:$CANDIDATE_PORT" \
    --user "$user" -k 3 || { show_logs; exit 1; }
done

echo "== request counters at http://$HOST:$METRICS_PORT/metrics"
"$PY" - "http://$HOST:$METRICS_PORT/metrics" <<'PYEOF'
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    text = response.read().decode()
counters = [
    line
    for line in text.splitlines()
    if line.startswith("grpc_server_handled_total")
]
print("\n".join(counters))
sys.exit(0 if any('grpc_method="Retrieve"' in c for c in counters) else 1)
PYEOF

if $check_only; then
  echo "== stack checked; stopping"
  exit 0
fi
echo "== stack is up; Ctrl-C stops it"
# Returns when either service exits (or on Ctrl-C); the trap stops the other.
wait -n
