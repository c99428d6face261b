#!/bin/sh
# Render a kustomization with the project's images pinned to one build: <registry>/<name>:<tag> (CI: the commit
# SHA, a tag never reused, so nodes never run stale code). What CI applies and publishes as artifacts.
#   manifests/pin-images.sh DIR REGISTRY TAG > rendered.yaml
# kubectl only (its built-in kustomize): a throw-away kustomization on top of DIR (removed on exit) whose `images:` retarget the
# names pipelines/images.py uses; DIR's own image-fields.yaml (SparkApplication / TrainJob image paths) comes along.
set -eu
if [ "$#" -ne 3 ]; then echo "usage: $0 DIR REGISTRY TAG" >&2; exit 2; fi
dir="$(cd "$1" && pwd)"
registry="${2%/}"
tag="$3"
# Beside DIR: kustomize takes only relative paths to other kustomizations.
work="$(mktemp -d "$(dirname "$dir")/.pin-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT
{
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../%s\n' "$(basename "$dir")"
  if [ -f "$dir/image-fields.yaml" ]; then
    cp "$dir/image-fields.yaml" "$work/"
    printf 'configurations:\n  - image-fields.yaml\n'
  fi
  printf 'images:\n'
  for name in pipeline train-cuda serving; do
    printf '  - name: ghcr.io/ncf-platform/%s\n    newName: %s/%s\n    newTag: "%s"\n' "$name" "$registry" "$name" "$tag"
  done
} > "$work/kustomization.yaml"
kubectl kustomize "$work"
