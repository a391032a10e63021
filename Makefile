# The README's commands. `make demo` and `make test` build the virtual environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch, installed before the package: a bare `torch` requirement would pull the CUDA build.
TORCH  := torch==2.13.0
# The exact versions the test suite passed with; pyproject.toml keeps the ranges for people who depend on the package.
LOCK   := requirements-lock.txt

.PHONY: install demo test lint bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,aion]"
	touch $@

demo: install
	$(BIN)/astroreason demo

# One torch thread per process: the tests run several small processes at once on 2 cores.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=25

# ruff: the linter's rules and the formatter's layout are in pyproject.toml ([tool.ruff]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	for b in bench/*_bench.py; do $(BIN)/python $$b || exit 1; done

# Re-resolve the lock to the newest versions pyproject.toml allows (uv pip compile), torch held at $(TORCH).
# A new lock is only good once the suite passes on it: reinstall, test, then commit it.
lock: install
	$(BIN)/pip install -q uv
	echo "$(TORCH)" > $(VENV)/torch-pin.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra aion --python-version 3.11 --upgrade \
	    -c $(VENV)/torch-pin.txt --no-header --no-emit-package uv -o $(LOCK)
	@echo "$(LOCK) refreshed. Now: rm -rf $(VENV) && make test; commit $(LOCK) (and the tested versions in README.md) only if it passes."

clean:
	rm -rf $(VENV) runs outputs
