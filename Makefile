# Two commands set up everything on a fresh machine:
#   make run    install smtpmon in .venv and run the daemon (default: watch the MTA on 127.0.0.1:25)
#   make test   install smtpmon with its test tools in .venv and run the whole test suite
#   make lint   check the code with ruff (rules in pyproject.toml)
# On Debian 12 with its package tools (README.md, "Installing"):
#   make deb                    build the Debian package dist/smtpmon_<version>_all.deb
#   make test-debian-versions   run the test suite on Debian's python3-* packages
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test lint bench deb test-debian-versions clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/smtpmon run $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# The benchmark suite (benchmarks/README.md); ARGS=--quick for the three-minute version.
bench: $(VENV)/.installed-test
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py $(ARGS)

# The Debian package, built by dpkg-buildpackage (debhelper, dh-python's pybuild) from a copy
# of the sources in build/deb/, so that the build's files never land in the checkout, then
# checked by lintian: an error or a warning fails the target. No network is used. The build
# sees only the system's directories on PATH, as Debian's build daemons do: a python3 from
# pyenv or a virtualenv has neither dh-python's modules nor Debian's packages.
DEB_PATH = /usr/sbin:/usr/bin:/sbin:/bin
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version)
DEB_SOURCES = debian pyproject.toml setup.py README.md CHANGELOG.md LICENSE smtpmon config systemd docs
DEB_BUILD ?= build/deb
DIST ?= dist

deb:
	rm -rf $(DEB_BUILD)
	mkdir -p $(DEB_BUILD)/smtpmon $(DIST)
	tar -c --exclude=__pycache__ --exclude='*.egg-info' $(DEB_SOURCES) | tar -x -C $(DEB_BUILD)/smtpmon
	# The copy is no git checkout: setup.py finds the commit it is built from here instead
	# (smtpmon_build_info{revision}); none outside a checkout, and the package says "unknown".
	git rev-parse --verify --quiet HEAD > $(DEB_BUILD)/smtpmon/REVISION 2>/dev/null || rm -f $(DEB_BUILD)/smtpmon/REVISION
	cd $(DEB_BUILD)/smtpmon && PATH=$(DEB_PATH) dpkg-buildpackage --build=binary --no-sign
	mv $(DEB_BUILD)/smtpmon_$(DEB_VERSION)_all.deb $(DIST)/
	PATH=$(DEB_PATH) lintian --fail-on error,warning --display-info $(DIST)/smtpmon_$(DEB_VERSION)_all.deb
	@echo "built $(DIST)/smtpmon_$(DEB_VERSION)_all.deb"

# The test suite on Debian 12's own python3-* packages (the versions the package depends on):
# a virtualenv of Debian's python3 that sees its system packages, plus the test tools from PyPI.
# tools/debian_versions.py fails if a dependency is not Debian's or is below a floor.
DEBIAN_VENV ?= build/venv-debian
test-debian-versions:
	rm -rf $(DEBIAN_VENV)
	/usr/bin/python3 -m venv --system-site-packages $(DEBIAN_VENV)
	$(DEBIAN_VENV)/bin/pip install -q -e '.[test]'
	$(DEBIAN_VENV)/bin/python tools/debian_versions.py
	$(DEBIAN_VENV)/bin/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
