# Two commands: `make demo` and `make test`. Both set up everything first and are
# idempotent: a second run only checks stamps and starts what is not running.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := .state
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := python3-venv python3-dev gcc debootstrap espeak-ng sox libsox-fmt-base mosquitto mosquitto-clients procps iproute2 git

.PHONY: demo test setup system venv services pbx prompts lint bench audit clean-pbx

demo: setup
	$(BIN)/ivr-engine demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: system venv services pbx prompts

# System packages (Debian). Checked by dpkg each time; apt only runs when something is missing.
system: $(STATE)/system.stamp
$(STATE)/system.stamp: Makefile
	@mkdir -p $(STATE)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo ">> installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(STATE)/system.stamp
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Mosquitto on 127.0.0.1:1883; started only if nothing listens there yet.
services: system
	@if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then \
	  echo ">> starting mosquitto on 127.0.0.1:1883"; \
	  mosquitto -d -c /etc/mosquitto/mosquitto.conf; \
	  for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done; \
	fi

# The dev PBX root (Debian sid + Asterisk 22 + SIPp) is built once into .pbx/ and reused.
pbx: venv
	$(BIN)/ivr-engine pbx build

prompts: venv
	$(BIN)/ivr-engine prompts build

lint: venv
	$(BIN)/ruff check ivr_engine acd simulate tests
	$(BIN)/mypy

bench: venv
	$(BIN)/ivr-engine acd bench --json
	$(BIN)/ivr-engine flows bench
	$(BIN)/ivr-engine prompts bench
	$(BIN)/ivr-engine cif bench --json

# Known vulnerabilities in the installed dependencies. Needs PyPI's JSON API or OSV: on
# machines whose package mirror serves only the simple index it audits nothing, and says so.
audit: venv
	$(BIN)/pip-audit --skip-editable --strict --progress-spinner off

# Refuses while anything is still mounted in the root (a test session may hold a lease).
clean-pbx:
	$(BIN)/ivr-engine pbx clean
