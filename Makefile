# Two commands do everything on a fresh machine: `make run` and `make test`
# (`make cluster` runs three local nodes as one cluster).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run cluster test lint bench bench-quick install lock clean

# Pins: requirements.lock is what `pip install .[valkey]` needs at run time (the Docker image
# installs only that); requirements-dev.lock adds everything for test, lint and bench.
LOCKS := requirements.lock requirements-dev.lock
$(STAMP): pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(addprefix -c ,$(LOCKS)) -e '.[dev,valkey]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m server

# Three local nodes sharing state (HTTP 4000-4002); Ctrl-C stops them. ENGINE=mesh (default):
# meshed together on cluster ports 4100-4102. ENGINE=valkey: through a local Valkey server
# started first on 127.0.0.1:6379 (AOF in test-output/valkey-6379/, kept across runs).
ENGINE ?= mesh
cluster: $(STAMP)
	$(PY) -m server --cluster 3 --engine $(ENGINE)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check server tracing tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

# Issue 13's headline figures against their targets, in under two minutes (bench/quick.py).
bench-quick: $(STAMP)
	$(PY) -m bench.quick

# Re-pin after changing dependencies in pyproject.toml: both locks are written from a throwaway
# venv (the runtime set, then the dev set on top of the runtime pins), keeping today's pins
# (LOCK_PINS) and taking the newest allowed version of anything new: run twice, same files.
# `make lock LOCK_PINS=` re-resolves everything to the newest versions pyproject.toml allows.
LOCK_VENV := build/lock-venv
LOCK_PINS ?= -c requirements-dev.lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q $(LOCK_PINS) '.[valkey]'
	$(LOCK_VENV)/bin/python -m pip freeze --exclude webserver > requirements.lock.new
	$(LOCK_VENV)/bin/python -m pip install -q $(LOCK_PINS) -c requirements.lock.new '.[dev,valkey]'
	$(LOCK_VENV)/bin/python -m pip freeze --exclude webserver > requirements-dev.lock
	mv requirements.lock.new requirements.lock
	rm -rf build  # the lock venv and the in-tree build of the project

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-output
