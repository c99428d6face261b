# syntax=docker/dockerfile:1
# The SageMaker variant of one of the project's images: the same layers, run as root. SageMaker mounts the job's
# directories (/opt/ml/processing/<output>, /opt/ml/model, /opt/ml/input) owned by root and has no setting for the
# container's user, so the images' non-root user (10001, what Kubernetes' runAsNonRoot needs) cannot write them.
# Kubernetes never runs these tags. Build: make images (or:
#   docker build -f docker/sagemaker.Dockerfile --build-arg BASE_IMAGE=<registry>/<name>:<tag> -t <registry>/<name>:<tag>-sagemaker docker)
ARG BASE_IMAGE=ghcr.io/ncf-platform/pipeline:0.1.0
FROM ${BASE_IMAGE}
# hadolint ignore=DL3002
USER 0:0
