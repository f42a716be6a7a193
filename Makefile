# Two commands on a fresh clone (Python 3.11, Node 20, npm):
#   make demo   reconcile a realistic local tenant: report mode, then enforce
#   make test   the test suite (Azurite and the tenant emulator start and stop inside it)
#   make test-unit  the pure tests only, in seconds
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit lint bench clean

$(STAMP): requirements.txt requirements-dev.txt package.json package-lock.json
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .artifacts
