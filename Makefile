# Threadline: `make run` serves the app, `make test` runs the whole suite (both from a clean clone).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export FLASK_APP := app

.PHONY: run test test-postgres soak bench bench-web lint venv dev-venv system-test-deps

$(VENV)/.runtime: requirements.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null \
	  || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime
dev-venv: $(VENV)/.dev

# Debian packages the tests drive for real: Dovecot (IMAP), Chromium (browser tests) and
# PostgreSQL (the second database; tests start their own server, none is set up by hand).
system-test-deps:
	@command -v dovecot >/dev/null && command -v doveadm >/dev/null && command -v chromium >/dev/null \
	  && (command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl) >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dovecot-imapd chromium postgresql)

run: venv
	$(PY) -m flask init-db
	$(PY) -m flask serve

# Tests run in PYTEST_WORKERS pytest-xdist processes (0: in this process). Much of the suite
# waits on Dovecot, Chromium and PostgreSQL, so more workers than cores pays; each worker
# starts its own servers. Tests are handed out one at a time, slow ones first, and tests
# marked `timing` run with no other test beside them (tests/parallel.py).
PYTEST_WORKERS ?= 4
XDIST := -n $(PYTEST_WORKERS) --dist load --maxschedchunk 1

# The whole suite on SQLite, then the tests that use the app's database again on a
# throwaway PostgreSQL the tests start themselves (tests/servers/postgres.py).
test: dev-venv system-test-deps
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)
	THREADLINE_TEST_DATABASE=postgresql $(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-postgres: dev-venv system-test-deps
	THREADLINE_TEST_DATABASE=postgresql $(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# The seeded sync fault test of tests/test_sync_soak.py, longer: more rounds, more seeds.
# A failure prints its seed and rounds: `make soak SOAK_SEEDS=7 SOAK_ROUNDS=30` replays it.
SOAK_ROUNDS ?= 30
SOAK_SEEDS ?= 1,2,3,4,5,6,7,8,9,10
soak: dev-venv system-test-deps
	THREADLINE_SOAK_ROUNDS=$(SOAK_ROUNDS) THREADLINE_SOAK_SEEDS=$(SOAK_SEEDS) \
	  $(PY) -m pytest -q -s --timeout 1800 tests/test_sync_soak.py $(PYTEST_ARGS)

bench: dev-venv system-test-deps
	$(PY) bench/sync_bench.py

# Server time of the Mail tab, conversation, search and deal pages at 100,000 messages,
# idle and during a sync. BENCH_ARGS="--messages 20000" for a quicker run.
bench-web: dev-venv system-test-deps
	$(PY) bench/web_bench.py $(BENCH_ARGS)

lint: dev-venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
