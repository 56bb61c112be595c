# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch for the two README commands: the CPU build (an unpinned torch pulls several GB of CUDA packages). On a
# GPU machine give a CUDA build, e.g. make test-gpu TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0

.PHONY: demo test test-gpu lint setup clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test,hf]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/longrange demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q

# the equivalence, contract, meta-device, export and training tests with their tensors on CUDA, then the
# distributed tests (nccl is chosen for CUDA devices); needs a CUDA build of torch (see TORCH above)
test-gpu: $(STAMP)
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-gpu: this torch sees no CUDA device')"
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --device cuda tests/attention tests/model tests/memory tests/train tests/test_generate.py tests/test_generate_batch.py

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) runs
