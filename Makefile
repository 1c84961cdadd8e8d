# Every target sets up .venv itself: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fuzz bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	cd workflows/pipeline && PATH="$(CURDIR)/$(BIN):$$PATH" flowrun run pipeline.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The Hypothesis suite of tests/e2e/test_fuzz.py at length (CI runs a short profile).
# A new crasher goes into tests/e2e/fuzz_corpus/ as a regression case.
fuzz: $(STAMP)
	FLOWRUN_FUZZ_PROFILE=fuzz $(BIN)/python -m pytest -q tests/e2e/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check cli engine tests bench
	$(BIN)/ruff format --check cli engine tests bench
	rm -rf build/typecheck && mkdir -p build/typecheck/flowrun
	ln -s ../../../cli build/typecheck/flowrun/cli && ln -s ../../../engine build/typecheck/flowrun/engine
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p flowrun.engine -p flowrun.cli

# The benchmark venv also holds the peers, LangGraph 1.2 + its SQLite checkpointer
# and DBOS 3.4 on its default SQLite system database, for the ratios SPEC §8 asks
# for; the project's own venv never does.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[postgres,dask]' 'langgraph>=1.2,<1.3' 'langgraph-checkpoint-sqlite>=3,<4' \
		'dbos>=3.4,<3.5'
	touch $(BENCH_VENV)/.installed

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/bench.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
