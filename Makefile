# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   installs into .venv and runs a real demo sweep with its report
#   make test   installs into .venv (with test extras) and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install install-test browser demo test test-slow test-slurm lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test browser

# The report's browser test renders report.html in headless Chromium (Debian's package).
# Best effort: without root or apt-get the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report's browser test will be skipped"; }

demo: install
	$(BIN)/hpsearch sweep search_spaces/demo.yaml --name demo --storage-path results --exist-ok-suffix

# Lint, format and types first (about a minute), then the suite.
test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=15

test-slow: install-test
	$(BIN)/python -m pytest -q -m slow

# SLURM jobs on a real one-node SLURM on this machine (as root, Debian/Ubuntu): installs
# slurm-wlm and munge, then the tests start the daemons and stop them at the end
# (tests/slurm/slurm_cluster.sh; docs/CLUSTER.md, "Testing it").
test-slurm: install-test
	tests/slurm/slurm_cluster.sh install
	$(BIN)/python -m pytest -q -m slurm tests/hpsearch/test_slurm_cluster.py

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache results
