# All set-up lives here: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEEL_CACHE ?= $(HOME)/.cache/dynalign/wheels
STAMP := $(VENV)/.dynalign-installed

.PHONY: setup demo test test-unit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml deploy/build-wheels.sh
	@echo "dynalign set-up 1/4: virtual environment in $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	@# torch first and pinned: the CPU wheel on this machine; anything looser pulls CUDA builds.
	@echo "dynalign set-up 2/4: torch 2.13.0 (CPU) and numpy (under a minute)"
	@$(BIN)/python -m pip install -q torch==2.13.0 numpy cython
	@echo "dynalign set-up 3/4: torch-scatter and torch-sparse from the wheel cache $(WHEEL_CACHE) (compiled there the first time: about 15 min on 2 cores)"
	@WHEELS=$$(bash deploy/build-wheels.sh $(BIN)/python $(WHEEL_CACHE) | tail -n 1) && \
	  echo "dynalign set-up 4/4: dynalign and its dependencies (about a minute the first time)" && \
	  $(BIN)/python -m pip install -q --find-links "$$WHEELS" -e '.[service,dev]'
	@touch $@
	@echo "dynalign set-up: done. Put dynalign on your PATH with: source $(VENV)/bin/activate"

demo: setup
	$(BIN)/dynalign demo

# Lint and types first (seconds), then every test.
test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The unit tests alone (no broker, no Redis): a few minutes less, for the edit-test loop.
test-unit: setup
	$(BIN)/python -m pytest -q -m "not kafka and not redis"

clean:
	rm -rf $(VENV) .dynalign
