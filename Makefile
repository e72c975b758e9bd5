# `make demo` and `make test` work on a fresh machine: each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv testbed engine test unit lint demo crds docs bench clean

help:
	@echo "make demo   - local control plane + fake GPU nodes + operator + a sample LLMDeployment"
	@echo "make test   - lint, unit, integration and end-to-end tests"
	@echo "make bench  - benchmarks; tables go to bench/results/"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

testbed:
	hack/testbed/build

# vLLM's CPU build in its own environment outside the repo (hack/engine/install; ~3 min, ~6 GB once).
engine:
	hack/engine/install

lint: venv
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Unit first (fast feedback), then the testbed suites and the real engine's; e2e last, as its
# operator process watches the whole cluster until the session ends.
test: venv testbed engine lint
	LLMPACK_VLLM_PYTHON=$$(hack/engine/install | tail -n 1) \
	  $(PY) -m pytest tests/unit tests/integration tests/engine tests/e2e $(PYTEST_ARGS)

# ENGINE=vllm: the profiling Job's command runs on vLLM's CPU build with a tiny model (see README).
ENGINE ?= simulated
demo: venv testbed
	$(PY) hack/demo.py --engine $(ENGINE)

crds: venv
	$(VENV)/bin/llmpack crd > crds/llmpack.io_llmdeployments.yaml
	cp crds/llmpack.io_llmdeployments.yaml charts/llmpack/crds/llmpack.io_llmdeployments.yaml
	$(VENV)/bin/llmpack crd --gpupool > crds/llmpack.io_gpupools.yaml
	cp crds/llmpack.io_gpupools.yaml charts/llmpack/crds/llmpack.io_gpupools.yaml

docs: venv
	$(VENV)/bin/llmpack crd --reference > docs/api.md

bench: venv testbed
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
