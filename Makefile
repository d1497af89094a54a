# California housing MLOps pipeline. `make pipeline` sets up .venv and runs load -> preprocess -> train -> promote.
# Data: HOUSING_DATA_SOURCE (a CSV path or URL); unset means scikit-learn's downloader.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ifneq ($(HOUSING_DATA_SOURCE),)
export HOUSING_DATA_SOURCE
endif
PORT ?= 8000
WORKERS ?= 2
SCENARIO ?= baseline
REQUESTS ?= 2000

.DEFAULT_GOAL := help
.PHONY: help setup lock pipeline load preprocess train promote serve simulate monitor history rollback test test-cov test-deploy test-code lint bench mlflow-ui monitor-ui secrets image clean

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/dev.lock
	$(PY) -m pip check
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed  ## create .venv from the lock file (every pin, its hash), then this project editable

lock: setup  ## recompile requirements/*.lock from requirements/*.in (pins kept unless the .in files move them)
	cd requirements && ../$(VENV)/bin/uv pip compile runtime.in -o runtime.lock --generate-hashes \
		--python-version 3.11 --python-platform linux --no-header -q
	cd requirements && ../$(VENV)/bin/uv pip compile dev.in -o dev.lock --generate-hashes \
		--python-version 3.11 --python-platform linux --constraint runtime.lock --no-header -q

load: setup  ## stage 1: read, validate and store the dataset
	$(PY) load_data.py

preprocess: setup  ## stage 2: EDA printout and plots, the train/test split
	$(PY) preprocess.py

train: setup  ## stage 3: fit, log and register every candidate
	$(PY) train.py

promote: setup  ## stage 4: the staging and production gates
	$(PY) promote.py

pipeline: load preprocess train promote  ## the four stages in order

serve: setup  ## the prediction API on $(PORT)
	$(VENV)/bin/uvicorn app:app --host 0.0.0.0 --port $(PORT) --http=httptools --timeout-keep-alive=5

simulate: setup  ## real held-out rows to the running API, labels back: make simulate SCENARIO=market-inflation
	$(PY) simulate_traffic.py --url http://127.0.0.1:$(PORT) --scenario $(SCENARIO) --requests $(REQUESTS)

monitor: setup  ## drift and error on the served traffic; retrains when the thresholds and the evidence say so
	$(PY) monitor.py

history: setup  ## the production ledger: every move of the production alias, when, why
	$(PY) promote.py --history

rollback: setup  ## move production back to the version before it (a ledger entry; the API follows)
	$(PY) promote.py --rollback

test: setup  ## every tier but the deployment's (real data: HOUSING_DATA_SOURCE or ../shared/data/...)
	@start=$$(date +%s); $(PY) -m pytest -q -n 2 --dist loadscope --ignore=tests/deploy; code=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s in all (exit $$code)"; exit $$code

test-cov: setup  ## make test's tiers under coverage.py (subprocesses included); line coverage of housing/
	rm -rf .coverage-data && mkdir .coverage-data
	$(PY) -m coverage run -m pytest -q -n 2 --dist loadscope --ignore=tests/deploy
	$(PY) -m coverage combine -q
	$(PY) -m coverage report --precision=2 --skip-covered

test-deploy: setup  ## the deployment tier alone: builds the image, runs the compose stack (needs Docker)
	$(PY) -m pytest -q tests/deploy

test-code: setup  ## the pure unit tests only (no dataset, no store, no server; seconds)
	$(PY) -m pytest -q tests/code

lint: setup  ## ruff (format, style, imports, bugs) and mypy (types) on the whole tree
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup  ## stage timings (bench/pipeline.py), accuracy over split seeds, serving load test (needs wrk)
	$(PY) -m bench.pipeline
	$(PY) -m bench.quality
	$(PY) -m bench.serve

monitor-ui: setup  ## the monitor's history in Evidently's UI at http://127.0.0.1:8002 (HOUSING_MONITOR_UI_PORT)
	$(PY) -m housing.monitoring.evidently_ui

mlflow-ui: setup  ## browse runs and the registry at http://127.0.0.1:5000 (prints links that open on the runs)
	$(PY) -m housing.registry.mlflow_ui

secrets:  ## the compose stack's secrets, one file each, in deploy/secrets/ (owner-only; existing ones kept)
	$(PYTHON) deploy/generate_secrets.py

image: setup  ## build the image (HOUSING_PYTHON_IMAGE: its base image, the official python:3.11-slim-bookworm)
	docker build -t california-housing:latest --network $${HOUSING_BUILD_NETWORK:-default} \
		--build-arg PYTHON_IMAGE=$${HOUSING_PYTHON_IMAGE:-python:3.11-slim-bookworm} \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

clean:  ## remove generated artifacts (keeps the MLflow store and the venv)
	rm -rf artifacts
