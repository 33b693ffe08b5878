# All set-up lives here: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEEL_CACHE ?= $(HOME)/.cache/dynalign/wheels
STAMP := $(VENV)/.dynalign-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml deploy/build-wheels.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	@# torch first and pinned: the CPU wheel on this machine; anything looser pulls CUDA builds.
	$(BIN)/python -m pip install -q torch==2.13.0 numpy
	$(BIN)/python -m pip install -q cython
	WHEELS=$$(bash deploy/build-wheels.sh $(BIN)/python $(WHEEL_CACHE) | tail -n 1) && \
	  $(BIN)/python -m pip install -q --find-links "$$WHEELS" -e '.[service,dev]'
	@touch $@

demo: setup
	$(BIN)/dynalign demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .dynalign
