# The two commands of the README: `make demo` (set up, then the main job) and `make test`.
# Both create .venv if it is missing and reinstall only when pyproject.toml changed.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SEED   ?= 0
OUT    ?= runs/demo

.PHONY: setup demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	SEED=$(SEED) OUT=$(OUT) bash scripts/demo

test: $(STAMP)
	bash scripts/run-tests $(ARGS)

test-fast: $(STAMP)
	bash scripts/run-tests -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
