# emverse: one command to set up and run the main job, one to test.
#   make demo   - create .venv, install torch + the core + every plugin, run the demo recipe
#   make test   - the test suite CI runs (slow end-to-end tests: make test-slow)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PLUGINS := $(sort $(wildcard plugins/emverse-*))
DEMO_RECIPE ?= recipes/cbed-mgb2-physics.toml
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-slow lint benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[run,crystal,readers,test]" $(foreach p,$(PLUGINS),-e "$(p)[test]")
	touch $@

demo: install
	$(VENV)/bin/emverse run $(DEMO_RECIPE) --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q --runslow

lint: install
	test -x $(VENV)/bin/ruff || $(PY) -m pip install --quiet "ruff>=0.5"
	$(VENV)/bin/ruff check framework plugins tests benchmarks

benchmarks: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
