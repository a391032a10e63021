# The README's commands. `make demo` and `make test` build the virtual environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch, installed before the package so no CUDA build is ever pulled (shared/FACTS.md).
TORCH  := torch==2.13.0

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,aion]"
	touch $@

demo: install
	$(BIN)/astroreason demo

# One torch thread per process: the tests run several small processes at once on 2 cores.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=25

bench: install
	for b in bench/*_bench.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs outputs
