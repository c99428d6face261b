# syntax=docker/dockerfile:1
# Training image for GPUs: the same project code on the CUDA build of the pinned torch (PyTorch's cu128 wheel
# carries the CUDA 12.8 runtime, cuDNN and NCCL; the node supplies only the NVIDIA driver). It runs ncf/train.py
# under torchrun: the Kubeflow Trainer TrainJob (torch-distributed runtime) and the KFP train step on GPU nodes;
# SageMaker's TrainingStep runs it as `<image> train` (docker/sagemaker-train.sh on PATH).
# No Java here: the trainer reads the partition's Parquet files with pyarrow, never through Spark.
# Build: make images   (or: docker build -f docker/train-cuda.Dockerfile -t <registry>/train-cuda:<version> .)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cu128 needs an NVIDIA driver >= 570 on the nodes; pass e.g. --build-arg TORCH_CUDA=cu126 for older drivers.
ARG TORCH_CUDA=cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY constraints.txt ./
RUN TORCH_VERSION="$(sed -n 's/^torch==//p' constraints.txt)" \
 && pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}+${TORCH_CUDA}"
COPY pyproject.toml README.md ./
COPY spark ./spark
COPY ncf ./ncf
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY ncfctl ./ncfctl
COPY bench ./bench
RUN pip install -c constraints.txt . && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 ncf && useradd --uid 10001 --gid ncf --create-home --home-dir /home/ncf ncf
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/ncf
COPY . /opt/ncf
# SageMaker's training contract runs `<image> train` (pipelines/sagemaker_entry.py reads /opt/ml/input/config).
COPY --chmod=0755 docker/sagemaker-train.sh /usr/local/bin/train
# NVIDIA_* tell the NVIDIA container runtime to mount the driver's compute libraries into this (non-CUDA) base.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# A training job has no port to probe; the TrainJob's completion status is its health.
HEALTHCHECK NONE
CMD ["python", "-m", "ncf.train", "--help"]
