# syntax=docker/dockerfile:1
# Pipeline image: Python 3.11 + Java 17 + Spark (pyspark) + kfp + the project, installed at build time so pods
# never `pip install` when they start. It is the base image of every KFP component, the MLflow tracking server
# and the Spark Operator driver/executors (docker/spark-entrypoint.sh speaks Spark's k8s pod protocol).
# Build: make images   (or: docker build -f docker/pipeline.Dockerfile -t <registry>/pipeline:<version> .)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY constraints.txt ./
# CPU torch from PyTorch's CPU index (the PyPI Linux wheel drags in ~3 GB of CUDA libraries this image never uses);
# its version is read from constraints.txt so the pin lives in one place.
RUN TORCH_VERSION="$(sed -n 's/^torch==//p' constraints.txt)" \
 && pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu"
COPY pyproject.toml README.md ./
COPY spark ./spark
COPY ncf ./ncf
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY ncfctl ./ncfctl
COPY bench ./bench
RUN pip install -c constraints.txt . && pip check

# Spark reads s3a:// directly (large logs in the SparkApplication) with hadoop-aws + the AWS SDK bundle that
# match pyspark's Hadoop client (3.4.1); Maven Central's .sha1 files guard the downloads.
FROM ${PYTHON_IMAGE} AS spark-s3-jars
ARG HADOOP_AWS_VERSION=3.4.1
ARG AWS_SDK_BUNDLE_VERSION=2.24.6
COPY docker/fetch_maven_jars.py /tmp/
RUN python /tmp/fetch_maven_jars.py /jars \
      "org.apache.hadoop:hadoop-aws:${HADOOP_AWS_VERSION}" \
      "software.amazon.awssdk:bundle:${AWS_SDK_BUNDLE_VERSION}"

FROM ${PYTHON_IMAGE}
# Debian's security updates replace package versions in place, so exact apt pins would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini procps \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java \
 && groupadd --gid 10001 ncf && useradd --uid 10001 --gid ncf --create-home --home-dir /home/ncf ncf
COPY --from=build /opt/venv /opt/venv
COPY --from=spark-s3-jars /jars/ /opt/venv/lib/python3.11/site-packages/pyspark/jars/
WORKDIR /opt/ncf
# The source tree too: spark-submit and the SparkApplication run spark/preprocess.py by path, and config/ holds
# the pipeline parameters file.
COPY . /opt/ncf
COPY --chmod=0755 docker/spark-entrypoint.sh /opt/entrypoint.sh
ENV PATH=/opt/venv/bin:$PATH \
    JAVA_HOME=/opt/java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1
USER 10001:10001
# Batch containers (KFP steps, Spark pods) have no port to probe; the MLflow Deployment declares its own probes.
HEALTHCHECK NONE
ENTRYPOINT ["/opt/entrypoint.sh"]
CMD ["ncfctl", "--help"]
