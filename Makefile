# Developer entry points. `make run` and `make check` do the whole set-up
# on a fresh Debian 12 machine: system packages, the venv, the C extension.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXT_SUFFIX := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
EXT := ovirt_imageio/_ioutil$(EXT_SUFFIX)
STAMP_SYS := $(VENV)/.system-deps
STAMP_VENV := $(VENV)/.venv-deps
STAMP_BENCH := $(VENV)/.bench-deps
BENCH_VENV := .bench-venv
BENCH_ARGS ?=
RUN_DIR := run
PYTEST_ARGS ?=

.PHONY: all setup system-deps venv build run check test lint mypy bench clean

all: build

setup: build

system-deps: $(STAMP_SYS)

$(STAMP_SYS): scripts/install-system-deps
	scripts/install-system-deps
	mkdir -p $(VENV)
	touch $@

$(STAMP_VENV): requirements-dev.txt scripts/link-libnbd $(STAMP_SYS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	scripts/link-libnbd $(VENV)
	touch $@

venv: $(STAMP_VENV)

build: $(EXT)

$(EXT): ext/ioutil.c ext/ioutil.h ext/build_ioutil.py setup.py $(STAMP_VENV)
	$(PY) setup.py -q build_ext --inplace
	touch $@

run: build
	mkdir -p $(RUN_DIR)
	./ovirt-imageio --conf-dir conf/dev

check: build
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

mypy: build
	$(PY) -m mypy

# Upstream 2.5.1 goes into its own ignored venv: a comparison point for
# the benchmark only, never imported by the project.
$(STAMP_BENCH): requirements-bench.txt $(STAMP_VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check ovirt-imageio==2.5.1
	touch $@

bench: build $(STAMP_BENCH)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info ovirt_imageio/_ioutil*.so ovirt_imageio/_ioutil.c
	find . -name __pycache__ -prune -exec rm -rf {} +
