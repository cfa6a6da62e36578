# The two commands: `make run` (set up, then serve with the bundled model) and `make test`
# (set up, then run every check CI runs). See README.md.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ORT_VERSION := 1.31.1
# The project's ONNX Runtime, unless the caller points elsewhere.
export ORT_DYLIB_PATH ?= $(CURDIR)/.easel/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
# One build directory outside the clone, shared by every clone on this machine: a fresh clone
# (CI's, or a second worktree) reuses what an earlier one compiled.
# Cargo decides freshness by file times and hashes workspace members by their path relative to the
# workspace, so two clones with different edits built in turn can reuse each other's artefacts:
# set CARGO_TARGET_DIR per clone when you edit two at once. A fresh clone is always newer.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/easel/target
CARGO ?= cargo

TOOLS := $(CURDIR)/.easel/tools/bin

.PHONY: help setup setup-test run test build lint lint-template fmt

help:
	@echo "make run    set up, then serve the API on http://127.0.0.1:8080 with the bundled model"
	@echo "make test   set up, then run formatting, lint and the whole test suite"
	@echo "make setup  install the ONNX Runtime library into .easel/ (idempotent)"
	@echo "make setup-test  also install the test tools (moto, cfn-lint, cargo-lambda, SAM CLI) into .easel/tools"

setup:
	@bash infra/setup.sh

setup-test:
	@bash infra/setup.sh --test-tools

build: setup
	$(CARGO) build --workspace --locked

run: setup
	$(CARGO) run --locked -p easel-cli --bin easel -- serve

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The SAM template, offline: cfn-lint catches schema, reference and policy mistakes; sam validate
# runs the SAM transform itself (it needs a region name, not credentials or the network).
lint-template: setup-test
	$(TOOLS)/cfn-lint template.yaml
	SAM_CLI_TELEMETRY=0 $(TOOLS)/sam validate --region us-east-1 -t template.yaml

test: setup-test lint lint-template
	$(CARGO) test --workspace --locked --no-fail-fast
