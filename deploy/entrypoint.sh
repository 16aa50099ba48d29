#!/bin/sh
# Container commands that need a MovieLens folder: the mounted one at
# /data when it holds the ratings, otherwise the release downloaded (once,
# into the cache volume) by the trainer.
#   entrypoint.sh train      train, publish a version, add warm-up records
#   entrypoint.sh loadtest   load-test the candidate service
set -eu

DATA=${MOVIELENS_MOUNT:-/data}
CACHE=${MOVIELENS_CACHE_DIR:-/cache}
RELEASE=${MOVIELENS_RELEASE:-ml-100k}

dataset() {
  if [ -f "$DATA/u.data" ] || [ -f "$DATA/ratings.dat" ] \
      || [ -f "$DATA/ratings.csv" ]; then
    echo "$DATA"
  else
    echo "$CACHE/$RELEASE"
  fi
}

case "${1:-}" in
  train)
    shift
    if [ "$(dataset)" = "$DATA" ]; then
      set -- --data-dir "$DATA" "$@"
    else
      echo "no MovieLens files in $DATA: downloading $RELEASE into $CACHE"
      set -- --release "$RELEASE" --cache-dir "$CACHE" "$@"
    fi
    python -m trainer --models-dir "${MODELS_DIR:-/models}" "$@"
    exec python -m deploy.warmup --models-dir "${MODELS_DIR:-/models}"
    ;;
  loadtest)
    shift
    exec python -m bench.loadtest --users-from-dataset "$(dataset)" "$@"
    ;;
  *)
    echo "usage: $0 train|loadtest [ARGS...]" >&2
    exit 2
    ;;
esac
