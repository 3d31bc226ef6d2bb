# Two commands do everything on a fresh machine: `make run` and `make test`
# (`make cluster` runs three local nodes as one cluster).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run cluster test lint bench install lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,valkey]'
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

# Re-pin after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-output
