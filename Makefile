# Two commands matter on a fresh machine: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: setup demo demo-stop test test-fast lint compile bench images clean java

# Idempotent: re-installs only when pyproject.toml changed since the last install.
setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
	@# pip byte-compiles on one core (~105 s of a fresh install here); compileall uses every core (~65 s on 2).
	@# Like pip it skips files this Python cannot compile (torch ships one written for 3.12: exit status 1).
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	$(PY) -m pip check
	@touch $@

java:
	@command -v java >/dev/null || { echo "error: Spark needs Java 17 and 'java' is not on PATH." \
	  "Install it: 'apt-get install -y openjdk-17-jre-headless' (Debian/Ubuntu) or 'brew install openjdk@17'." >&2; exit 1; }

demo: setup java
	$(VENV)/bin/ncfctl run

# The demo leaves its predictor running on 127.0.0.1:8080 so you can query it; this stops it.
demo-stop: setup
	$(PY) -c 'import json, pathlib; from serving.deploy import stop_local_server; \
	  state = pathlib.Path("runs/demo/serving/ncf-local.json"); \
	  state.exists() and stop_local_server(int(json.loads(state.read_text())["pid"]))'

# A pytest-xdist worker per core, at most 4 (each may hold a Spark JVM; TEST_WORKERS=0: one process), each taking
# whole files, so module fixtures are built once; tests/conftest.py puts the files with slow tests first.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
PARALLEL_TESTS = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup java
	bash scripts/ensure_postgres.sh && bash scripts/ensure_kubectl.sh $(PY)
	$(PY) -m pytest -q --timeout=900 --durations=25 $(PARALLEL_TESTS)

test-fast: setup java
	$(PY) -m pytest -q -m "not slow" --timeout=600 $(PARALLEL_TESTS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint docker/*.Dockerfile

compile: setup
	$(VENV)/bin/ncfctl compile --output-dir dist

bench: setup java
	$(VENV)/bin/ncfctl bench all

# Tags match what the compiled pipeline and the manifests name (pipelines/images.py): one tag per commit, never
# reused. Each image also gets its SageMaker variant, <name>:<tag>-sagemaker (docker/sagemaker.Dockerfile).
NCF_IMAGE_REGISTRY ?= ghcr.io/ncf-platform
NCF_IMAGE_TAG ?= $(shell $(PYTHON) pipelines/images.py tag)
images:
	for name in pipeline train-cuda serving; do \
	  docker build -f docker/$$name.Dockerfile -t $(NCF_IMAGE_REGISTRY)/$$name:$(NCF_IMAGE_TAG) . || exit 1; \
	  docker build -f docker/sagemaker.Dockerfile --build-arg BASE_IMAGE=$(NCF_IMAGE_REGISTRY)/$$name:$(NCF_IMAGE_TAG) \
	    -t $(NCF_IMAGE_REGISTRY)/$$name:$(NCF_IMAGE_TAG)-sagemaker docker || exit 1; \
	done

clean:
	rm -rf $(VENV) dist .pytest_cache runs
