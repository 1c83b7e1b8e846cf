# framepool: make demo | make test | make lint | make bench | make load
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench load faults install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned and installed first: on a CPU-only machine that exact build
# comes without the CUDA packages; on a GPU machine the same pin gives CUDA.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/framepool demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy framepool producer workers models monitoring

bench: $(STAMP)
	$(BIN)/framepool bench pipeline
	$(BIN)/framepool bench sweep
	$(BIN)/framepool bench peers

# the long load tests (minutes), then their figures into docs/benchmarks.md
load: $(STAMP)
	FRAMEPOOL_LOAD=long $(BIN)/python -m pytest -q -ra tests/load
	$(BIN)/python -m benchmarks.load_report

# the fault matrix (docs/reliability.md): its tests, then their figures into the doc
faults: $(STAMP)
	FRAMEPOOL_LONG=1 $(BIN)/python -m pytest -q -ra tests/integration/test_faults.py tests/integration/test_faults_redis.py tests/integration/test_model_runtime.py tests/integration/test_deadlines.py
	$(BIN)/python -m benchmarks.reliability_report

clean:
	rm -rf $(VENV) .framepool
