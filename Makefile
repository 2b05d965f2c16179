# EdgeFill developer entry points. `make` alone prints this help.
#
# The two commands a new machine needs:
#   make demo   - set up everything and show EdgeFill working end to end
#   make test   - set up everything and run every check CI runs

SHELL := /bin/bash
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: ## Install edgefill (editable) with test, lint and dev extras
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'

.PHONY: deps
deps: ## System and JS packages the tests need (chromium, npm clients), only when missing
	bash devenv/install-deps.sh

.PHONY: cluster-bins
cluster-bins: ## Build (once, cached by version) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok
	bash devenv/build-cluster-bins.sh

.PHONY: tools
tools: ## Build (once, cached by version) helm, actionlint and hadolint for the chart checks
	bash devenv/build-tools.sh

.PHONY: chart-crds
chart-crds: ## Copy crds/ into the Helm chart (a test fails when they drift)
	charts/edgefill/sync-crds.sh

.PHONY: images
images: ## Build the operator and cache-node images (needs a Docker engine)
	docker build --target operator -t edgefill/operator:0.1.0 .
	docker build --target cache-node -t edgefill/cache-node:0.1.0 .

.PHONY: kind-e2e
kind-e2e: ## On a machine with Docker: kind cluster, images, chart, examples, e2e suite
	.github/scripts/kind-e2e.sh

.PHONY: lint
lint: ## ruff lint and format check
	ruff check .
	ruff format --check .

.PHONY: typecheck
typecheck: ## mypy --strict over both packages and the dev environment
	mypy operator/edgefill_operator cache_node devenv/edgefill_devenv

.PHONY: imports
imports: ## import-linter layer contracts
	lint-imports

.PHONY: schema
schema: ## Regenerate the node configuration JSON Schema from its model
	$(PYTHON) -m cache_node.config --write-schema

.PHONY: pytest
pytest: ## Run the test suite (all tiers); PYTEST_ARGS='-m unit' to narrow
	$(PYTHON) -m pytest $(PYTEST_ARGS)

.PHONY: test
test: install deps cluster-bins tools lint typecheck imports pytest ## Set up, then run every check CI runs

.PHONY: cluster-up
cluster-up: install cluster-bins ## Start the local cluster (real control plane + kwok nodes)
	$(PYTHON) -m edgefill_devenv.cluster up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove its state
	$(PYTHON) -m edgefill_devenv.cluster down

.PHONY: s3-up
s3-up: ## Start the S3 test origin (moto server mode) on 127.0.0.1:9000
	$(PYTHON) -m edgefill_devenv.s3 up

.PHONY: s3-down
s3-down: ## Stop the S3 test origin
	$(PYTHON) -m edgefill_devenv.s3 down

.PHONY: seed
seed: s3-up ## Seed the S3 test origin with a synthetic catalogue
	$(PYTHON) -m edgefill_devenv.catalogue --endpoint-url http://127.0.0.1:9000 --objects 200 --examples

.PHONY: demo
demo: install cluster-bins ## Run the end-to-end demo on the local cluster
	$(PYTHON) -m edgefill_devenv.demo up

.PHONY: demo-down
demo-down: ## Stop everything the demo started
	$(PYTHON) -m edgefill_devenv.demo down

.PHONY: bench
bench: ## Benchmarks against named peers (nginx, libCacheSim, aiobotocore, bittorrent-tracker); prints ratios
	$(PIP) install --quiet -e '.[bench]'
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq nginx wrk; }
	$(PYTHON) bench/cache_node/hit_throughput.py --seconds 5
	$(PYTHON) bench/cache_node/eviction_hit_ratio.py
	$(PYTHON) bench/cache_node/peer_ttfb.py --objects 30
	$(PYTHON) bench/fill/fill_throughput.py
	$(PYTHON) bench/tracker/run.py --seconds 10 --rounds 3

.PHONY: pre-commit
pre-commit: ## Run the pre-commit hooks on every file
	pre-commit run --all-files
