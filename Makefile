# One gate, run the same way locally and in CI (.ci/run calls `make test`).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: services browser clusters run test lint fmt clippy deny shellcheck audit schema build unit charms bench profile

## services: make PostgreSQL and RabbitMQ reachable on 127.0.0.1 (start or install them)
services:
	@bash scripts/services.sh

## browser: headless Chromium and chromedriver for the console's browser tests (installs them if missing)
browser:
	@bash scripts/browser.sh

## clusters: the 3-node RabbitMQ cluster and the PostgreSQL primary + standby the node-loss
## tests use, beside the shared servers (idempotent; the tests call the same scripts)
clusters: services
	@bash scripts/rabbitmq-cluster.sh up
	@bash scripts/postgres-pair.sh up

## run: run the system with a demo configuration (Ctrl-C stops it)
run: services
	@bash scripts/demo.sh

## lint: formatting, clippy (warnings are errors), the offline supply-chain checks and shellcheck
lint: fmt clippy deny shellcheck

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# After clippy, which fetched every crate of the build: cargo-deny then needs no network.
## deny: cargo-deny bans, licenses and sources (deny.toml), offline; installs cargo-deny if missing
deny: clippy
	@bash scripts/deny.sh offline

## shellcheck: the shipped shell scripts (the gce runner VMs' startup script); installs shellcheck if missing
shellcheck:
	@bash scripts/shellcheck.sh

## audit: cargo-deny advisories against the RustSec database (needs the network to fetch it)
audit:
	@bash scripts/deny.sh advisories

## schema: schema/src/schema.rs is what `diesel print-schema` makes of the migrations (needs PostgreSQL)
schema: services
	@bash scripts/check-schema.sh

## build: the service binaries the end-to-end tests run
build:
	$(CARGO) build --workspace --bins

## test: lint and the schema check, then every test against the real local PostgreSQL and RabbitMQ
test: services browser clusters lint schema build
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

## profile: flamegraph of one bench group, e.g. `make profile GROUP=consumer` (target/profile/)
profile: services
	bash scripts/profile.sh $(GROUP)
