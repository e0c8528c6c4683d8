# rlfleet: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check --root-user-action=ignore

.PHONY: install cluster-tools demo test test-unit lint format bench

install:  ## Python package + dev tools (Paddle CPU, pytest, ruff)
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[dev]"

cluster-tools:  ## etcd + Kubernetes 1.20 control plane built from Debian's source (cached), kubectl, helm
	bash e2e/build_k8s.sh

demo: install cluster-tools  ## the main job: a pool paused under load on a real local cluster, weights synced, resumed
	$(PYTHON) -m e2e.demo

test: install cluster-tools  ## every test: engine, operator, and e2e against the real control plane
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/engine tests/operator

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

bench: install
	$(PYTHON) -m bench
