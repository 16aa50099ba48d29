#!/usr/bin/env bash
# The main job, end to end on one machine: train on MovieLens 100K, publish a
# version, start the query server and the candidate service on loopback, print
# a user's top 10, stop both. Run through `make demo`.
set -euo pipefail

PY=${PY:-.venv/bin/python}
MODELS_DIR=${MODELS_DIR:-build/models}
QUERY_PORT=${QUERY_PORT:-8500}
CANDIDATE_PORT=${CANDIDATE_PORT:-50051}
DEMO_USER=${DEMO_USER:-42}
LOG_DIR=build/logs
mkdir -p "$LOG_DIR" "$MODELS_DIR"

echo "== training (data: ${MOVIELENS_DATA_DIR:-download of ml-100k})"
"$PY" -m trainer --models-dir "$MODELS_DIR"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "== starting the query server on 127.0.0.1:$QUERY_PORT (log: $LOG_DIR/query_service.log)"
"$PY" -m query_service --host 127.0.0.1 --port "$QUERY_PORT" \
  --models-dir "$MODELS_DIR" >"$LOG_DIR/query_service.log" 2>&1 &
pids+=($!)

echo "== starting the candidate service on 127.0.0.1:$CANDIDATE_PORT (log: $LOG_DIR/candidate_service.log)"
"$PY" -m candidate_service --host 127.0.0.1 --port "$CANDIDATE_PORT" \
  --models-dir "$MODELS_DIR" --query-server "127.0.0.1:$QUERY_PORT" \
  >"$LOG_DIR/candidate_service.log" 2>&1 &
pids+=($!)

echo "== retrieving for user $DEMO_USER"
if ! "$PY" -m candidate_service.client --address "127.0.0.1:$CANDIDATE_PORT" \
  --user "$DEMO_USER" -k 10 --wait-ready 120; then
  echo "-- last lines of the service logs:" >&2
  tail -n 20 "$LOG_DIR/query_service.log" "$LOG_DIR/candidate_service.log" >&2
  exit 1
fi
