# Two commands set everything up on a fresh machine: `make demo` (main job) and `make test` (tests).
# Each creates .venv if missing and installs what it needs first.
#
# torch is installed before the project so that the right build is chosen: TORCH_SPEC defaults to the
# pinned release; pip takes the CPU wheel where one lies on disk (as on this project's CPU machines) and
# the default CUDA build from PyPI on a Linux GPU machine. Override, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.cmikit-installed
PYTEST_ARGS ?=
# The suite runs on 2 pytest-xdist workers (the machines this project targets have 2 cores); PYTEST_WORKERS=0 runs
# it in one process.
PYTEST_WORKERS ?= 2
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: setup data demo demo-sami demo-decoding test test-fast lint bench bench-cip bench-sami bench-decoding gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# The public data the benchmarks use (AwA2, MediQ, SAMI TL;DR) into $CMIKIT_CACHE/data, pinned and resumable.
data: $(STAMP)
	$(VENV)/bin/cmikit data fetch all

# C-IP 20 Questions with the exact-Bayes predictor: the same job every time (no model needed; < 1 min).
# The LLM version is one flag away: $(VENV)/bin/cip eval --quick --predictor llm --out_dir runs/demo-llm
# DEMO_ARGS adds cip eval options (the docs test runs `make demo DEMO_ARGS="--n_games 2 --seeds 0"`).
demo: $(STAMP)
	$(VENV)/bin/cip eval --quick --out_dir $(DEMO_OUT) --overwrite true $(DEMO_ARGS)

# The other two methods' main jobs on the embedded / tiny models.
demo-sami: $(STAMP)
	$(VENV)/bin/sami iterate --config configs/sami/smollm2-demo.yaml

demo-decoding: $(STAMP)
	$(VENV)/bin/dlm-decode bench --quick --out runs/decoding-quick

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Everything but the tests that need the real embedded model (for quick local iterations).
test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not embedded" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) scripts/bench_backend.py

bench-cip: $(STAMP)
	$(PY) scripts/bench_cip.py --part speed --naive_rows 40 --out runs/bench_cip_speed.json

bench-sami: $(STAMP)
	$(PY) scripts/bench_sami.py --lora --queries 8 --batch_size 4 --steps 2 --warmup 1 --max_post_chars 1200

bench-decoding: $(STAMP)
	$(VENV)/bin/dlm-decode bench --out runs/decoding-bench

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
