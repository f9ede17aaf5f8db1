# Two entry points: `make demo` (embedded benchmark, CPU) and `make test` (the test suite).
# Both create .venv and install the pinned environment first (requirements/constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2

.PHONY: demo test lint lock clean-results install

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH HF_HUB_OFFLINE=1 $(BIN)/snakemake --profile profiles/default --cores $(CORES)
	@echo
	@echo "Comparison table: results/tables/comparison.md (also .csv, .tex)"
	@cat results/tables/comparison.md

# Tests run on TEST_WORKERS pytest-xdist processes (CI: 2 cores). --dist loadfile keeps a test
# file on one worker, so a module fixture (the SLURM cluster, a finished micro benchmark) is built
# once. Not loadgroup: with pytest 9.2 it ignores xdist_group marks (pytest-xdist issue 1386).
TEST_WORKERS ?= $(CORES)

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && \
	  $(BIN)/snakefmt --check Snakefile workflow/Snakefile workflow/rules

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable > requirements/constraints.txt.new && \
	  mv requirements/constraints.txt.new requirements/constraints.txt

clean-results:
	rm -rf results .snakemake
