#!/usr/bin/env bash
# The path users run, end to end on one device: a large synthetic log -> Spark partition -> `ncfctl train` with the
# default recipe (model selection over the default candidates, tuning trials, refit) -> `ncfctl recommend` (the
# nightly top-K for every user). Prints each stage's wall time and peak RSS (GNU time) and the train step's own
# figures. Called by bench/gpu_check.sh on a lent GPU; runs anywhere for a small check:
#   DEVICE=cpu EVENTS=20000 bench/gpu_pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
EVENTS="${EVENTS:-2000000}"
ROOT="${ROOT:-$(mktemp -d)/gpu-pipeline}"
DATE=2026-01-31

stage() {  # stage NAME COMMAND...: run it, print wall seconds and peak RSS
  local name="$1"; shift
  if [[ -x /usr/bin/time ]]; then
    local stats; stats="$(mktemp)"
    /usr/bin/time -f "%e %M" -o "$stats" "$@"
    read -r seconds rss_kb < "$stats"
    printf '%-10s %8.1f s   peak RSS %6.2f GB\n' "$name" "$seconds" "$(awk "BEGIN {print $rss_kb / 1048576}")"
  else  # no GNU time on this machine: wall time only
    local start=$SECONDS
    "$@"
    printf '%-10s %8d s   (peak RSS: needs /usr/bin/time)\n' "$name" "$((SECONDS - start))"
  fi
}

echo "device $DEVICE, $EVENTS events, storage $ROOT"
stage generate "$PY" -m ncfctl generate --output-uri "$ROOT/raw" --num-events "$EVENTS" --start-date 2026-01-01 \
  --days 30
stage preprocess "$PY" -m ncfctl preprocess --input-uri "$ROOT/raw" --storage-root "$ROOT" --run-date "$DATE"
stage train "$PY" -m ncfctl train --partition-uri "$ROOT/data/dt=$DATE" --output-uri "$ROOT/models/default" \
  --device "$DEVICE" --progress off
"$PY" - "$ROOT/models/default/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
chosen = (m.get("candidates") or {}).get("chosen", m.get("family"))
print(f"train: chosen {chosen}; selection {m.get('selection_seconds')} s, train {m.get('train_seconds')} s; "
      f"hr@10 {m['hr@10']:.4f} ndcg@10 {m['ndcg@10']:.4f} full_hr@10 {m['full_hr@10']:.4f} "
      f"over {m['full_eval_users']} users")
EOF
stage recommend "$PY" -m ncfctl recommend --model-uri "$ROOT/models/default" --storage-root "$ROOT" \
  --run-date "$DATE" --device "$DEVICE"
