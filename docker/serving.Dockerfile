# syntax=docker/dockerfile:1
# Serving image, slim: CPU torch + kserve + the predictor. No Spark, no Java, no MLflow, no KFP: KServe's storage
# initializer downloads the model package (storageUri) to /mnt/models before this container starts (SageMaker
# unpacks the model artifact to /opt/ml/model instead).
# Build: make images   (or: docker build -f docker/serving.Dockerfile -t <registry>/serving:<version> .)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY constraints.txt docker/serving-requirements.txt ./
RUN TORCH_VERSION="$(sed -n 's/^torch==//p' constraints.txt)" \
 && pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu" \
 && pip install -c constraints.txt -r serving-requirements.txt
COPY pyproject.toml README.md ./
COPY spark ./spark
COPY ncf ./ncf
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY ncfctl ./ncfctl
COPY bench ./bench
# --no-deps: the project's full dependency list (Spark, MLflow, SageMaker, KFP) is what this image leaves out.
RUN pip install --no-deps . \
 && python -c "import serving.server"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 ncf && useradd --uid 10001 --gid ncf --create-home --home-dir /home/ncf ncf
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
# KServe passes the ServingRuntime's args; SageMaker runs `<image> serve`, which serving.server takes as: the model
# from /opt/ml/model on 0.0.0.0:8080, no gRPC, plus GET /ping and POST /invocations (serving/sagemaker_routes.py).
ENTRYPOINT ["python", "-m", "serving.server"]
CMD ["--model-uri=/mnt/models", "--host=0.0.0.0", "--http-port=8080"]
