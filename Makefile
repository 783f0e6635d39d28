# `make train` and `make test` set everything up on a fresh machine.
# ACCEL selects the JAX build: cpu (default), cuda12 or tpu, e.g. `make train ACCEL=cuda12`.
ACCEL ?= cpu
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py
# pytest worker processes (pytest-xdist); each test file stays in one worker.
JOBS ?= 2
PY := $(VENV)/bin/python
comma := ,
EXTRAS := test$(if $(filter-out cpu,$(ACCEL)),$(comma)$(ACCEL))

.PHONY: install train test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-$(ACCEL): $(VENV)/bin/python setup.py
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(ACCEL)

# Prepares the built-in datasets on first use, trains, evaluates; re-running resumes.
train: install
	$(PY) -m launch.train --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

test: install
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile tests $(ARGS)

clean:
	rm -rf $(VENV) workdirs notebooks/workdirs .pytest_cache
