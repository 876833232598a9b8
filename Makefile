# Herald — every task a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
# A change of pyproject.toml or of the lock makes a new stamp, so the next target reinstalls.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(DEV_LOCK) | cksum | cut -d' ' -f1)
BROKER := deploy/kafka/broker.sh
# Optional mail needs a key for its signed unsubscribe links; the local targets use this one
# unless the environment gives another (production sets HERALD_LINKS__UNSUBSCRIBE_SECRET).
LOCAL_KEY := HERALD_LINKS__UNSUBSCRIBE_SECRET=$${HERALD_LINKS__UNSUBSCRIBE_SECRET:-local-development-only} \
	HERALD_POLICY__ADDRESS_KEY=$${HERALD_POLICY__ADDRESS_KEY:-local-development-only-address-key}
REGISTRY := deploy/registry/registry.sh
# Tools built or fetched once, outside the repository (as deploy/kafka/broker.sh does the jars).
TOOLS  := $(or $(HERALD_CACHE_DIR),$(HOME)/.cache/herald)/bin
HELM_VERSION := v3.18.4
# The tests in tests/ops run this binary.
export HELM := $(TOOLS)/helm-$(HELM_VERSION)

.PHONY: help install lock system-deps kafka-fetch kafka-start kafka-stop kafka-status kafka-reset \
        registry-fetch registry-start registry-stop registry-status run demo test \
        test-unit test-integration bench chaos check preview lint format typecheck check-config clean \
        helm chart-rules image image-smoke

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# --clear: a package dropped from the lock must not linger in the venv. Every dependency
# comes from the lock, checked against its hashes; Herald itself is installed without any.
$(STAMP): pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install Herald with its dev tools, as locked

# requirements.lock: the runtime dependencies. requirements-dev.lock: those plus the dev
# extra, constrained to the same versions. Universal (any OS, Python 3.11+), with hashes.
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
              --generate-hashes --quiet --custom-compile-command 'make lock' $(LOCK_ARGS)
lock: install ## re-resolve requirements*.lock from pyproject.toml (LOCK_ARGS=--upgrade for the newest)
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

# From Debian's packages, as command:package pairs: redis-server (the tests start a throw-away
# one for the shared idempotency store), chromium (the preview gallery is rendered in it
# headless), openssl (the test broker's SASL_SSL listener gets a certificate from a throw-away
# CA), and prometheus, whose promtool checks and unit-tests the alert rules and whose server
# scrapes Herald in the integration suite. Packages in NO_RECOMMENDS go without their
# recommends: prometheus's are a node exporter service, smartmontools and IPMI tools.
SYSTEM_PACKAGES := redis-server:redis-server chromium:chromium openssl:openssl promtool:prometheus prometheus:prometheus
NO_RECOMMENDS := prometheus
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps: ## install redis-server, chromium, openssl and prometheus from Debian's packages if missing (needs root)
	@full=""; lean=""; for pair in $(SYSTEM_PACKAGES); do \
	  pkg="$${pair##*:}"; command -v "$${pair%%:*}" >/dev/null && continue; \
	  [[ " $$full $$lean " == *" $$pkg "* ]] && continue; \
	  if [[ " $(NO_RECOMMENDS) " == *" $$pkg "* ]]; then lean="$$lean $$pkg"; else full="$$full $$pkg"; fi; \
	done; \
	if [ -n "$$full$$lean" ]; then \
	  echo "Installing from Debian's packages:$$full$$lean"; \
	  $(SUDO) apt-get update -qq \
	  && { [ -z "$$full" ] || $(SUDO) apt-get install -y -qq $$full >/dev/null; } \
	  && { [ -z "$$lean" ] || $(SUDO) apt-get install -y -qq --no-install-recommends $$lean >/dev/null; }; fi

# With KAFKA_BOOTSTRAP_SERVERS the tests use that cluster, so no broker needs fetching; with
# SCHEMA_REGISTRY_URL, that registry.
BROKER_FOR_TESTS := $(if $(KAFKA_BOOTSTRAP_SERVERS),,kafka-fetch)
REGISTRY_FOR_TESTS := $(if $(SCHEMA_REGISTRY_URL),,registry-fetch)

kafka-fetch: ## download the Kafka broker jars from Maven Central into ~/.cache/herald
	$(BROKER) fetch

kafka-start: ## start the local single-node KRaft broker on 127.0.0.1:9092 (background)
	$(BROKER) start

kafka-stop: ## stop the local broker
	$(BROKER) stop

kafka-status: ## is the local broker running?
	$(BROKER) status

kafka-reset: ## stop the local broker and delete its data
	$(BROKER) reset

registry-fetch: ## download Apicurio Registry from Maven Central into ~/.cache/herald
	$(REGISTRY) fetch

registry-start: ## start the local schema registry (in memory) on 127.0.0.1:8081 (background)
	$(REGISTRY) start

registry-stop: ## stop the local schema registry
	$(REGISTRY) stop

registry-status: ## is the local schema registry running?
	$(REGISTRY) status

run: install ## local broker + SMTP capture (var/outbox) + Herald in the foreground (LOCAL_REGISTRY=1: + registry)
	deploy/local/run.sh

demo: install ## publish the example events to the running `make run` and print their outcomes
	HERALD_KAFKA__BOOTSTRAP_SERVERS=$${HERALD_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:$${KAFKA_PORT:-9092}} \
	  $(LOCAL_KEY) $(BIN)/herald demo

check-config: install ## validate settings, schemas, routing table and templates
	$(LOCAL_KEY) $(BIN)/herald check-config

check: install ## check-config, plus every template against its event schema (no Kafka)
	$(LOCAL_KEY) $(BIN)/herald check

preview: install ## render every notification x locale into var/preview/index.html
	$(LOCAL_KEY) $(BIN)/herald preview

test: install system-deps helm $(BROKER_FOR_TESTS) $(REGISTRY_FOR_TESTS) ## the whole suite: unit, operations, integration and quick fault injection
	$(LOCAL_KEY) $(BIN)/herald check
	$(BIN)/pytest

test-unit: install system-deps helm ## only the tests that need no broker
	$(BIN)/pytest -m 'not integration'

test-integration: install system-deps $(BROKER_FOR_TESTS) $(REGISTRY_FOR_TESTS) ## only the tests on the real broker
	$(BIN)/pytest -m integration

bench: install kafka-fetch ## load benchmark: ratios to the naive baseline and the blast ceiling (docs/benchmarks.md)
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: install system-deps $(BROKER_FOR_TESTS) ## the full fault-injection scenarios (thousands of records each)
	CHAOS_FULL=1 $(BIN)/pytest tests/chaos -v

# Helm built from its Go module with `go install`, so no release archive needs downloading;
# ~1.5 min from an empty Go cache, then skipped. -mod=mod: Helm's go.mod needs no vendoring.
helm: $(HELM) ## build Helm (version: HELM_VERSION) into ~/.cache/herald/bin, once (needs Go)
$(HELM):
	@command -v go >/dev/null || { echo "make helm: Go is needed to build Helm"; exit 1; }
	mkdir -p $(TOOLS)/helm-build
	GOBIN=$(TOOLS)/helm-build GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS)/helm-build/helm $@ && rmdir $(TOOLS)/helm-build

# The chart's PrometheusRule carries the same rules Prometheus loads in the Compose stack;
# tests/ops checks that the copy is current (Helm reads only files inside the chart).
chart-rules: ## copy deploy/prometheus/herald-rules.yaml into the Helm chart's files/
	mkdir -p deploy/helm/herald/files
	cp deploy/prometheus/herald-rules.yaml deploy/helm/herald/files/herald-rules.yaml

# buildah needs no daemon; mmdebstrap builds the stand-in base (IMAGE_STANDIN=1).
IMAGE_PACKAGES := buildah:buildah $(if $(IMAGE_STANDIN),mmdebstrap:mmdebstrap)
image: ## build the container image with buildah into var/image/herald.tar (IMAGE_STANDIN=1: on a stand-in base)
	@missing=""; for pair in $(IMAGE_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing from Debian's packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi
	deploy/image/build.sh

image-smoke: install kafka-fetch ## run the built image against the local broker and an SMTP capture: health, demo, SIGTERM
	deploy/image/smoke.sh

lint: install ## ruff, and the import contract between the stages (lint-imports)
	$(BIN)/ruff check service tests bench deploy
	$(BIN)/ruff format --check service tests bench deploy
	$(BIN)/lint-imports

format: install ## ruff format and autofix
	$(BIN)/ruff format service tests deploy
	$(BIN)/ruff check --fix service tests deploy

typecheck: install ## mypy --strict
	$(BIN)/mypy

clean: ## stop the local broker and registry, remove caches and local state (not the downloads)
	-$(BROKER) stop
	-$(REGISTRY) stop
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
