# mpbroker - the two commands: `make run` and `make test` (as root on Debian 12 they
# install what is missing first). Everything else here serves those two.

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
ARGS       ?=

# Debian packages the build and the tests need.
PKGS = gcc make pkg-config meson ninja-build libmsgpack-dev libevent-dev check zlib1g-dev libssl-dev \
       python3 python3-msgpack python3-dev libpython3.11-testsuite clang libclang-rt-14-dev libedit-dev libjansson-dev strace scdoc

.PHONY: all deps build asan fuzz fuzz-long run bench test test-plain test-asan clean

all: build

# Install the packages that are missing (needs root; skipped when all are present).
deps:
	@missing=""; for p in $(PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=debugoptimized

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

asan: deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

# The libFuzzer target (clang; ASan + UBSan, any UB is a crash). `make test` runs it
# bounded (fuzz/meson.build); `make fuzz-long` runs it until stopped (fuzz/README.md).
$(FUZZ_BUILD)/build.ninja:
	CC=clang meson setup $(FUZZ_BUILD) --buildtype=debugoptimized -Dfuzz=true -Dtests=false -Dpython=disabled \
	  -Db_sanitize=address,undefined -Db_lundef=false \
	  "-Dc_args=-fsanitize=fuzzer-no-link -fno-sanitize-recover=all"

fuzz: deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)

fuzz-long: fuzz
	FUZZ_SEED=0 FUZZ_RUNS=-1 FUZZ_SECONDS=$${FUZZ_SECONDS:-3600} fuzz/run-fuzz.sh \
	  $(FUZZ_BUILD)/fuzz/fuzz_dispatch fuzz/corpus fuzz/regressions

# Start the broker in the foreground on its default socket (ARGS="..." for options).
# On a terminal the broker gets the terminal's foreground to itself (bash job control:
# its own process group, then fg), so Ctrl-C reaches it and not make: make exits with
# the broker's status, 0 when it stopped cleanly, instead of dying of the SIGINT (130).
run: SHELL := /bin/bash
run: build
	@echo $(BUILD)/mpbroker-server $(ARGS)
	@if [ -t 0 ]; then set -m; $(BUILD)/mpbroker-server $(ARGS) & fg %1 >/dev/null; \
	else exec $(BUILD)/mpbroker-server $(ARGS); fi

# mpbroker against the raw socket, Redis and Python's Manager (bench/compare: a few
# minutes; Redis and valgrind are used when installed). The table goes to stdout and
# $(BUILD)/compare.md, the figures to $(BUILD)/compare.csv.
bench: build
	bench/compare --build $(BUILD)

# Every test, in the normal build and under AddressSanitizer + UBSan, and a bounded
# fuzz run (its summary line counts as one test).
test: build asan fuzz
	@tests/run-all.sh $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
