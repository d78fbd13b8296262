# The two commands of the README:   make up   (install + run the stack)   make test   (install + tests)
VENV ?= .venv
PY := $(VENV)/bin/python
# scripts/install-torch.sh: the CPU build of torch on hosts without an NVIDIA GPU (from PyTorch's CPU
# index when it answers), a CUDA build with one. TORCH_SPEC= (empty) keeps the torch you have;
# TORCH_INDEX=URL installs from that wheel index (e.g. .../whl/cu128) whatever the host has.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.loraplex-installed
# The scheduler's hot modules compiled with mypyc (tooling/build_native.py), rebuilt when they
# change; where it cannot be built (no C compiler) the scheduler runs interpreted, only slower.
NATIVE_STAMP := shared/loraplex/_native/manifest.json
NATIVE_SOURCES := $(wildcard services/scheduler/*.py services/scheduler/policies/*.py)
PYTEST_ARGS ?=
# Two test processes (pytest-xdist), each given whole files: most of the suite's time is real
# servers and workers starting and healing, which overlaps well even on 2 cores.  TEST_WORKERS=0
# runs everything in one process (as a debugger wants).
TEST_WORKERS ?= 2

.PHONY: setup test up lint format bench clean

$(STAMP): pyproject.toml
	./scripts/install-system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PY=$(PY) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" ./scripts/install-torch.sh
	$(PY) -m pip install -q -e '.[test,bench,native]'
	touch $(STAMP)

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
	$(PY) -m loraplex.tooling.build_native --quiet \
		|| echo "note: the scheduler's compiled core was not built; it runs interpreted" >&2

setup: $(STAMP) $(NATIVE_STAMP)

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

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
	$(PY) bench/scheduler.py --write-docs
	$(PY) bench/slots.py --write-docs
	$(PY) bench/slot_placement.py --write-docs
	$(PY) bench/restart.py --write-docs
	$(PY) bench/hostile_constraints.py --write-docs
	$(PY) bench/slot_hog.py --write-docs
	$(PY) bench/stream_memory.py --write-docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info shared/loraplex/_native
