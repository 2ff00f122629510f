# Developer entry points. `make run` and `make check` do the whole set-up
# on a fresh Debian 12 machine: system packages, the venv, the C extension.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXT_SUFFIX := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
EXT := ovirt_imageio/native/_ioutil$(EXT_SUFFIX)
RELAY_EXT := ovirt_imageio/native/_nbdrelay$(EXT_SUFFIX)
STAMP_SYS := $(VENV)/.system-deps
STAMP_VENV := $(VENV)/.venv-deps
STAMP_BENCH := $(VENV)/.bench-deps
STAMP_FUZZ := $(VENV)/.fuzz-deps
BENCH_VENV := .bench-venv
STAMP_UPSTREAM := $(BENCH_VENV)/.upstream-deps
BENCH_ARGS ?=
RBD_BENCH_ARGS ?=
HOW_BENCH_ARGS ?=
HTTP_BENCH_ARGS ?=
RESUME_BENCH_ARGS ?=
TRANSFERS_BENCH_ARGS ?=
RUN_DIR := run
PYTEST_ARGS ?=
# The files of setup.cfg, then the two scripts whose module name (run)
# clashes with bench/run.py there.
MYPY := $(PY) -m mypy && $(PY) -m mypy fuzz/run.py && $(PY) -m mypy load/run.py
# `make fuzz` and `make load` run for a bounded time.
FUZZ_SECONDS ?= 60
# http (the HTTP request path) or nbd (the NBD door).
FUZZ_TARGET ?= http
LOAD_SECONDS ?= 30
LOAD_ARGS ?=

# Packaging: `make dist` writes the source tarball to DIST_DIR, `make wheel`
# a wheel built from it, `make rpm` the RPMs built from it under RPM_DIR.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ovirt_imageio/__init__.py)
DIST_DIR ?= dist
SDIST := $(DIST_DIR)/ovirt_imageio-$(VERSION).tar.gz
# setup.py's metadata directory, kept out of the source tree.
EGG_BASE ?= build
RPM_DIR ?= build/rpm
# The interpreter rpmbuild builds with; /usr/bin/python3 on an RPM distro.
RPM_PYTHON ?= $(abspath $(PY))
# The build requirements are Debian packages here, unknown to rpm.
RPMBUILD_FLAGS ?= --nodeps

.PHONY: all setup system-deps venv build run check test lint mypy bench clean
.PHONY: dist wheel rpm fuzz load

all: build

setup: build

system-deps: $(STAMP_SYS)

$(STAMP_SYS): scripts/install-system-deps
	scripts/install-system-deps
	mkdir -p $(VENV)
	touch $@

$(STAMP_VENV): requirements-dev.txt scripts/link-debian-bindings $(STAMP_SYS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	scripts/link-debian-bindings $(VENV)
	touch $@

venv: $(STAMP_VENV)

build: $(EXT) $(RELAY_EXT)

$(EXT): ext/ioutil.c ext/aio.c ext/tls.c ext/chunked.c ext/blake2b.c ext/ioutil.h ext/sock.h ext/build_ioutil.py setup.py $(STAMP_VENV)
	$(PY) setup.py -q build_ext --inplace
	touch $@

# setup.py builds both modules (this one only with libnbd's headers,
# which system-deps installs); this one is stale on its own sources.
$(RELAY_EXT): ext/nbdrelay.c ext/nbdrelay.h ext/build_nbdrelay.py setup.py $(STAMP_VENV)
	$(PY) setup.py -q build_ext --inplace
	@test -e $@ || { echo "$@ was not built: libnbd's headers are missing (scripts/install-system-deps installs libnbd-dev)" >&2; exit 1; }
	touch $@

run: build
	mkdir -p $(RUN_DIR)
	./ovirt-imageio --conf-dir conf/dev

check: build $(STAMP_UPSTREAM)
	$(PY) -m ruff check --no-cache .
	$(MYPY)
	$(PY) -m pytest $(PYTEST_ARGS)

test: build $(STAMP_UPSTREAM)
	$(PY) -m pytest $(PYTEST_ARGS)

mypy: build
	$(MYPY)

lint: $(STAMP_VENV)
	$(PY) -m ruff check --no-cache .

# Upstream 2.5.1 (with the oVirt SDK for its engine commands) goes into
# its own ignored venv: a comparison point for the tests and the
# benchmark, never imported by the project. Its stamp lives in that venv,
# which belongs to this checkout.
$(STAMP_UPSTREAM): requirements-upstream.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-upstream.txt
	touch $@

$(STAMP_BENCH): requirements-bench.txt $(STAMP_VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $@

bench: build $(STAMP_BENCH) $(STAMP_UPSTREAM)
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/rbd_bench.py $(RBD_BENCH_ARGS)
	$(PY) bench/hash_on_write.py $(HOW_BENCH_ARGS)
	$(PY) bench/http_features.py $(HTTP_BENCH_ARGS)
	$(PY) bench/resume.py $(RESUME_BENCH_ARGS)
	$(PY) bench/transfers.py $(TRANSFERS_BENCH_ARGS)
	$(PY) bench/relay_retry.py $(RELAY_BENCH_ARGS)
	$(PY) bench/checkpoint.py $(CHECKPOINT_BENCH_ARGS)

# atheris (libFuzzer built in) goes into .venv, only for `make fuzz`.
$(STAMP_FUZZ): requirements-fuzz.txt $(STAMP_VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-fuzz.txt
	touch $@

fuzz: build $(STAMP_FUZZ)
	$(PY) fuzz/run.py --target $(FUZZ_TARGET) --seconds $(FUZZ_SECONDS)

load: build
	$(PY) load/run.py --seconds $(LOAD_SECONDS) $(LOAD_ARGS)

dist: $(STAMP_VENV)
	rm -f $(SDIST)
	mkdir -p $(EGG_BASE) $(DIST_DIR)
	$(PY) setup.py -q egg_info --egg-base $(EGG_BASE) \
		sdist --dist-dir $(DIST_DIR)
	@echo "Created $(SDIST)"

wheel: dist
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps \
		--no-build-isolation --wheel-dir $(DIST_DIR) $(SDIST)

rpm: dist
	rm -rf $(RPM_DIR)
	mkdir -p $(RPM_DIR)/SOURCES
	cp $(SDIST) $(RPM_DIR)/SOURCES/
	rpmbuild -ba $(RPMBUILD_FLAGS) \
		--define "_topdir $(abspath $(RPM_DIR))" \
		--define "__python3 $(RPM_PYTHON)" \
		ovirt-imageio.spec
	@find $(RPM_DIR)/RPMS $(RPM_DIR)/SRPMS -name '*.rpm'

clean:
	rm -rf build dist *.egg-info ovirt_imageio/native/_ioutil*.so ovirt_imageio/native/_ioutil.c \
		ovirt_imageio/native/_nbdrelay*.so ovirt_imageio/native/_nbdrelay.c
	find . -name __pycache__ -prune -exec rm -rf {} +
