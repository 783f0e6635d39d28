# `make train` and `make test` set everything up on a fresh machine.
# ACCEL selects the JAX build: cpu (default), cuda12 or tpu, e.g. `make train ACCEL=cuda12`.
ACCEL ?= cpu
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py
# pytest worker processes (pytest-xdist); each test file stays in one worker, the longest files
# handed out first (tests/conftest.py: LONGEST_FIRST).
JOBS ?= 2
PY := $(VENV)/bin/python
comma := ,
ACCEL_EXTRA := $(if $(filter-out cpu,$(ACCEL)),[$(ACCEL)])
# The tests also convert small PyTorch and open_clip models (the `interop` extra). TORCH pins the
# torch and torchvision they get: open_clip imports torchvision, and the torchvision wheel served
# beside torch 2.13.0's CPU build fails to import (`operator torchvision::nms does not exist`);
# 2.14.1 with 0.29.1 imports. Where a smaller CPU build is wanted:
#   make test TORCH="torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.14.1 torchvision==0.29.1
# `tpu` (libtpu): launch.compile compiles for TPU slices on this machine, and its tests with it.
TEST_EXTRAS := test,interop,tpu$(if $(filter-out cpu tpu,$(ACCEL)),$(comma)$(ACCEL))
# On ACCEL=cpu, JAX runs on the CPU even where the test install added libtpu to the venv (which
# would otherwise look for a TPU first).
RUN_ENV := $(if $(filter cpu,$(ACCEL)),JAX_PLATFORMS=cpu)

.PHONY: install train test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-$(ACCEL): $(VENV)/bin/python setup.py
	$(PY) -m pip install --quiet -e ".$(ACCEL_EXTRA)"
	touch $@

$(VENV)/.installed-test-$(ACCEL): $(VENV)/.installed-$(ACCEL)
	$(PY) -m pip install --quiet -e ".[$(TEST_EXTRAS)]" $(TORCH)
	touch $@

install: $(VENV)/.installed-$(ACCEL)

# Prepares the built-in datasets on first use, trains, evaluates; re-running resumes.
train: install
	$(RUN_ENV) $(PY) -m launch.train --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

test: $(VENV)/.installed-test-$(ACCEL)
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder tests $(ARGS)

clean:
	rm -rf $(VENV) workdirs notebooks/workdirs .pytest_cache
