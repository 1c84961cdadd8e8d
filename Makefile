# Every target sets up .venv itself: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	cd workflows/pipeline && PATH="$(CURDIR)/$(BIN):$$PATH" flowrun run pipeline.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check cli engine tests bench
	$(BIN)/ruff format --check cli engine tests bench
	rm -rf build/typecheck && mkdir -p build/typecheck/flowrun
	ln -s ../../../cli build/typecheck/flowrun/cli && ln -s ../../../engine build/typecheck/flowrun/engine
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p flowrun.engine -p flowrun.cli

bench: $(STAMP)
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
