# One gate, run the same way locally and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: services run test lint fmt clippy build unit charms bench

## services: make PostgreSQL and RabbitMQ reachable on 127.0.0.1 (start or install them)
services:
	@bash scripts/services.sh

## run: run the system with a demo configuration (Ctrl-C stops it)
run: services
	@bash scripts/demo.sh

## lint: formatting and clippy, warnings are errors
lint: fmt clippy

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## build: the service binaries the end-to-end tests run
build:
	$(CARGO) build --workspace --bins

## test: lint, then every test against the real local PostgreSQL and RabbitMQ
test: services lint build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-tests=fail; \
	else \
		$(CARGO) test --workspace; \
	fi
	@if [ -x charms/test.sh ]; then bash charms/test.sh; fi

## bench: release-mode benchmarks against the local servers; writes BENCHMARKS.md
bench: services
	$(CARGO) build --release --workspace --bins
	# 10,000 stream subscribers need as many sockets in the bench and in the planner.
	ulimit -n $$(ulimit -Hn); $(CARGO) run --release -p tests --bin bench
