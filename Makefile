# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(PYTHON) -m uv
endif
RUN := $(UV) run --frozen

.DEFAULT_GOAL := help
.PHONY: help install system-deps up down status test lint format bench bench-long chaos demo chat clean new-service terraform-teams compose-rehearsal

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

install: .venv/.installed ## Install uv (if missing) and the locked dependencies

.venv/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

# The store tests and the compose rehearsal run a real PostgreSQL, the metrics test a real
# Prometheus and the web chat test a real headless Chromium, from Debian's packages; install them
# when we can.
system-deps:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing PostgreSQL (Debian packages) for the store tests..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL server not found and cannot be installed here: its store tests will be skipped"; fi
	@if command -v prometheus >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Prometheus (Debian package) for the metrics test..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else echo "Prometheus not found and cannot be installed here: the metrics scrape test will be skipped"; fi
	@if command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Chromium and chromedriver (Debian packages) for the web chat browser test..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "chromedriver not found and cannot be installed here: the web chat browser test will be skipped"; fi

up: install ## Start the embedded stack: dev server, namespaces, Nexus endpoints, workers
	@$(RUN) python -m infrastructure.devstack up

down: install ## Stop exactly the processes `make up` started
	@$(RUN) python -m infrastructure.devstack down

status: install ## Show which stack processes are running
	@$(RUN) python -m infrastructure.devstack status

lint: install ## Ruff (lint + format check) and mypy
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy shared orchestrator infrastructure bench $$(ls -d *_service)

format: install ## Apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

test: install system-deps lint ## Lint, then the test suite against a real dev server
	$(RUN) pytest

demo: install ## Start the stack and play a scripted conversation (KEEP=1 leaves it running)
	@$(MAKE) --no-print-directory up
	@status=0; $(RUN) python -m orchestrator.demo || status=$$?; \
	if [ "$(KEEP)" = "1" ]; then echo "Stack left running (KEEP=1): try \`make chat\`, stop with \`make down\`."; \
	else $(MAKE) --no-print-directory down; fi; exit $$status

chat: install ## Interactive chat on the running stack (`make up` first)
	@$(RUN) agent chat

bench: install ## Latency figures (see bench/README.md)
	$(RUN) python -m bench.nexus_roundtrip
	$(RUN) python -m bench.agent_loop
	$(RUN) python -m bench.long_conversation
	$(RUN) python -m bench.approval
	$(RUN) python -m bench.stack_throughput
	$(RUN) python -m bench.recovery
	$(RUN) python -m bench.tracing
	$(RUN) python -m bench.streaming
	$(RUN) python -m bench.mcp
	$(RUN) python -m bench.disclosure

chaos: install ## Kill workers and restart the server under 50 conversations; print the report
	$(RUN) python -m infrastructure.chaos --conversations $(or $(CONVERSATIONS),50)

compose-rehearsal: install system-deps ## docker-compose.yml's stack as local processes (no Docker): converse, restart workers, check history
	@$(RUN) python -m infrastructure.compose_rehearsal

bench-long: install ## One 10,000-turn conversation to completion (takes a while)
	BENCH_LONG_TURNS=10000 $(RUN) python -m bench.long_conversation

clean: down ## Stop the stack and delete its database and logs
	rm -rf .run

new-service: install ## Scaffold a team from team_template/: make new-service NAME=hr
	@$(RUN) python -m infrastructure.scaffold "$(NAME)"

terraform-teams: install ## Write infrastructure/terraform/teams.auto.tfvars.json from the team manifests
	@$(RUN) python -m infrastructure.terraform_teams
