#!/usr/bin/env bash
# GPU training throughput check: NeuMF (factor 64, MLP 256-256-128-64, batch 2^20, bf16) on synthetic
# ML-20M-sized data generated on the GPU; then the train step on the GPU for every model family
# (bench/gpu_families.py: fit, evaluation on the device, export, reload); then the path users run on the GPU
# (bench/gpu_pipeline.sh: 2M synthetic events -> partition -> `ncfctl train` with the default recipe ->
# `ncfctl recommend` for every user). Offline (downloads nothing), finishes in < 14 minutes on one H100/H200,
# prints the figures and appends the training ones to bench/RESULTS.md.
#   bench/gpu_check.sh                 # eager, then torch.compile (each capped at 140 s)
#   PYTHON=/opt/venv/bin/python bench/gpu_check.sh --epochs 5
set -euo pipefail
cd "$(dirname "$0")/.."

has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null && has_cuda_torch "$candidate"; then PY="$candidate"; break; fi
  done
fi
if [[ -z "$PY" ]] || ! has_cuda_torch "$PY"; then
  echo "error: no Python with a CUDA-enabled torch and a visible GPU; set PYTHON=/path/to/python" >&2
  exit 2
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

status=0
timeout 140 "$PY" bench/gpu_train.py "$@" || status=$?
timeout 140 "$PY" bench/gpu_train.py --compile "$@" \
  || echo "note: the torch.compile variant failed or timed out; the eager figure above stands" >&2
timeout 200 "$PY" bench/gpu_families.py || status=$?
PYTHON="$PY" timeout 330 bench/gpu_pipeline.sh || status=$?
exit "$status"
