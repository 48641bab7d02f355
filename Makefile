# make run   — set up and run the daemon in the foreground on config/rules.yaml
# make test  — set up and run every test (lint and types included)
# make check — the fast tier, for your own loop: lint, types, the fast tests in parallel (< 2 min)
# make bench — set up and run the benchmarks (QUICK=1: under 2 minutes, for development)

PYTHON ?= /usr/bin/python3
VENV ?= .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# What systemd-python needs to build, and what the tests and benchmarks use (the system test
# boots Debian 13 with systemd-nspawn from an image debootstrap makes).
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev inotify-tools \
                systemd-container debootstrap openssh-client openssh-sftp-server bindfs \
                prometheus
STAMP := $(VENV)/.installed

.PHONY: run test check lint types bench deps clean

run: $(STAMP)
	mkdir -p /tmp/watchd-demo/incoming
	$(VENV)/bin/watchd run --config config/rules.yaml

test: $(STAMP) lint types
	$(VENV)/bin/python -m pytest

check: $(STAMP) lint types
	$(VENV)/bin/python -m pytest -q -n 2 -m "not slow and not exclusive"

lint: $(STAMP)
	$(VENV)/bin/ruff check watchd tests bench

types: $(STAMP)
	$(VENV)/bin/mypy watchd

deps:
	@missing=""; for package in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

bench: $(STAMP)
	$(VENV)/bin/python bench/suite.py $(if $(QUICK),--quick)
