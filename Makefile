# Two commands: `make demo` and `make test`. Both create .venv on first use. `make test-fast` is the edit-test
# loop (the suite without the `workflow` and `slow` tests, under 3 minutes on 2 cores). The tests run in
# TEST_WORKERS pytest-xdist processes, one module per process at a time (`--dist loadfile`: a module's fixtures
# are built once); `make test TEST_WORKERS=0` runs them in this process.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo test test-fast test-all lint bench bench-smoke clean-venv gpu-check

$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not workflow"

test-all: $(STAMP)
	$(PYTEST) -m ""

bench: $(STAMP)
	$(PY) -m bench

bench-smoke: $(STAMP)
	$(PY) -m bench --smoke

clean-venv:
	rm -rf $(VENV)

lint: $(STAMP)
	$(PY) -m ruff check .

# GPU check (docs/gpu.md): uses the GPU machine's own python3 (CUDA torch), not the CPU venv; CI does not run it.
GPU_PYTHON ?= python3
gpu-check:
	@test -n "$(OUT)" || { echo "make gpu-check: give the output folder, e.g. make gpu-check OUT=gpu_out" >&2; exit 2; }
	$(GPU_PYTHON) bench/gpu_check.py --out "$(OUT)"
