# Two commands: `make demo` and `make test`. Both create .venv on first use.
# `make test` runs the library's tests (tests/) and the benchmarks', examples' and docs'
# (tests/harness/); `make test-lib` the library's alone.
# `make test-min` runs the suite again in .venv-min, on the oldest supported versions.
# `make wheel-smoke` builds the wheel and sdist and tries the wheel in a fresh .venv-wheel.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MIN_VENV := .venv-min
MIN_PY := $(MIN_VENV)/bin/python
MIN_STAMP := $(MIN_VENV)/.installed
WHEEL_VENV := .venv-wheel

# pytest exits 5 when it collects no test; say so plainly instead of failing CI on it.
define run_pytest
@$(1) -m pytest -n 2 --dist loadfile -q $(2); rc=$$?; \
if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc
endef

.PHONY: install test test-lib test-min wheel-smoke lint demo docs notebook clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,examples,docs]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(call run_pytest,$(PY),tests)

test-lib: lint
	$(call run_pytest,$(PY),tests --ignore=tests/harness)

# Every dependency pinned to its `>=` bound in pyproject.toml (scripts/min_constraints.py).
$(MIN_STAMP): pyproject.toml scripts/min_constraints.py
	@test -x $(MIN_PY) || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) scripts/min_constraints.py dev examples > $(MIN_VENV)/constraints.txt
	$(MIN_PY) -m pip install -q -c $(MIN_VENV)/constraints.txt -e ".[dev,examples]"
	@touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/ruff check .
	$(call run_pytest,$(MIN_PY),tests)

# dist/: the sdist and the wheel (built from the sdist). The wheel goes into a fresh venv with
# only its core dependencies; scripts/smoke_wheel.py runs from inside that venv, without
# PYTHONPATH, so it imports the installed package, not this checkout (it checks).
wheel-smoke: $(STAMP)
	rm -rf dist $(WHEEL_VENV)
	$(PY) -m build --outdir dist .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install -q dist/*.whl
	cd $(WHEEL_VENV) && env -u PYTHONPATH bin/python $(CURDIR)/scripts/smoke_wheel.py

demo: $(STAMP)
	$(PY) -m examples.quickstart_gpt

# The API reference and guides (docs/), warnings as errors; the notebook is not re-executed:
# the docs show the outputs saved in it.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# Re-runs examples/quickstart.ipynb and saves it with its outputs (what the docs show).
notebook: $(STAMP)
	$(PY) scripts/execute_notebook.py examples/quickstart.ipynb

clean:
	rm -rf $(VENV) $(MIN_VENV) $(WHEEL_VENV) .pytest_cache build dist *.egg-info docs/_build
