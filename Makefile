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
# workspace, so it can take a binary that another clone built as fresh for this one, and test
# binaries carry their clone's path (CARGO_MANIFEST_DIR) to find fixtures: `claim-target` therefore
# rebuilds the workspace's own crates (not the dependencies) whenever the directory was last used by
# another clone. Set CARGO_TARGET_DIR per clone to avoid those rebuilds when you work in two at once.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/easel/target
CARGO ?= cargo

TOOLS := $(CURDIR)/.easel/tools/bin

.PHONY: help setup setup-test claim-target run test build lint lint-template fmt

help:
	@echo "make run    set up, then serve the API on http://127.0.0.1:8080 with the bundled model"
	@echo "make test   set up, then run formatting, lint and the whole test suite"
	@echo "make setup  install the ONNX Runtime library into .easel/ (idempotent)"
	@echo "make setup-test  also install the test tools (moto, cfn-lint, cargo-lambda, SAM CLI) into .easel/tools"

setup:
	@bash infra/setup.sh

setup-test:
	@bash infra/setup.sh --test-tools

claim-target:
	@mkdir -p "$(CARGO_TARGET_DIR)"
	@if [ "$$(cat "$(CARGO_TARGET_DIR)/.easel-clone" 2>/dev/null)" != "$(CURDIR)" ]; then \
	  if [ -d "$(CARGO_TARGET_DIR)/debug" ]; then \
	    echo "==> $(CARGO_TARGET_DIR) was last used by another clone: rebuilding this workspace's crates"; \
	    $(CARGO) clean --workspace --quiet; \
	  fi; \
	  echo "$(CURDIR)" > "$(CARGO_TARGET_DIR)/.easel-clone"; \
	fi

build: setup claim-target
	$(CARGO) build --workspace --locked

run: setup claim-target
	$(CARGO) run --locked -p easel-cli --bin easel -- serve

fmt:
	$(CARGO) fmt --all

lint: claim-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The SAM template, offline: cfn-lint catches schema, reference and policy mistakes; sam validate
# runs the SAM transform itself (it needs a region name, not credentials or the network).
lint-template: setup-test
	$(TOOLS)/cfn-lint template.yaml
	SAM_CLI_TELEMETRY=0 $(TOOLS)/sam validate --region us-east-1 -t template.yaml

test: setup-test lint lint-template
	$(CARGO) test --workspace --locked --no-fail-fast
