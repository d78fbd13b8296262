# The two commands of the README:   make up   (install + run the stack)   make test   (install + tests)
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch installs quickly; set TORCH_SPEC= (empty) to keep an existing CUDA torch.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.loraplex-installed
PYTEST_ARGS ?=

.PHONY: setup test up lint format bench clean

$(STAMP): pyproject.toml
	./scripts/install-system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

up: setup
	$(VENV)/bin/loraplex up $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/engine.py --write-docs
	$(PY) bench/prefix.py --write-docs
	$(PY) bench/chunked.py --write-docs
	$(PY) bench/structured.py --write-docs
	$(PY) bench/fairness.py --mode sim --write-docs
	$(PY) bench/reliability.py --write-docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
