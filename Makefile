# Keywarden's entry points. `make run` and `make test` install their own dependencies.
.PHONY: all deps build run test bench bench-service bench-volume bench-join format format-check clean

JOBS ?= $(shell nproc)

all: build

deps:
	scripts/install-deps

build: deps
	cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j$(JOBS)

# run: the main job on the embedded default (see scripts/run).
run: build
	scripts/run

# test: the whole suite: g++ tests, clang ASan/UBSan unit tests, fuzzers (see scripts/test).
test: deps
	scripts/test

# bench: benchmarks with their ceilings, figures as in docs/performance.md.
bench: build
	scripts/bench

# bench-service: GetDataKey load beside the gRPC echo floor, embedded and etcd stores.
bench-service: build
	scripts/bench-service

# bench-volume: fio through the userspace volume path beside its FUSE floor, nbdkit's luks
# filter and openssl's AES-XTS (docs/performance.md).
bench-volume: build
	scripts/bench-volume

# bench-join: verified joins/s of the join service against `keywarden serve`, software and
# swtpm quotes, with the cost of each part (docs/performance.md).
bench-join: build
	scripts/bench-join

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf build build-asan
