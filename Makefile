# Every target installs what it needs: uv (via pip, if missing), then the locked environment.
PYTHON ?= python3
UV := $(PYTHON) -m uv
RUN := $(UV) run --frozen

.DEFAULT_GOAL := help
.PHONY: help uv install tools run worker test test-standard lint format typecheck check migrate bench bench-inprocess bench-instructions bench-parts load drills fuzz

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv

install: uv  ## Create .venv from uv.lock (bytecode compiled: workers start faster)
	@$(UV) sync --frozen --quiet --compile-bytecode

tools: uv  ## Install the non-Python tools the tests use (Debian's prometheus/promtool, ...)
	@scripts/install-test-tools

run: install  ## Run the service on the embedded default (SQLite, no servers needed)
	$(RUN) python -m service

worker: install  ## Run a job worker (needs REDIS_URL and DATABASE_URL; without Redis, jobs run in the app)
	$(RUN) python -m service.jobs

test: install tools  ## Run the whole test suite (PostgreSQL on 127.0.0.1:5432 and SQLite) with coverage
	$(RUN) pytest --cov --cov-report=term --cov-fail-under=90

# What the request pipeline cannot change is left out: deployment artifacts, settings, migrations,
# the quick start, the public-API scan, the load/fuzz/bench smokes, the conformance test (both).
STANDARD_SKIPS := tests/deploy tests/test_bench_smoke.py tests/test_load_smoke.py \
	tests/test_fuzz.py tests/test_migrations.py tests/test_settings.py tests/test_readme.py \
	tests/test_public_api.py tests/test_embedded.py tests/test_server.py \
	tests/test_instrumentation_conformance.py

test-standard: install tools  ## The API, end-to-end and drill tests again, through the standard instrumentation
	GLASSHOUSE_TEST_INSTRUMENTATION=standard $(RUN) pytest $(addprefix --ignore=,$(STANDARD_SKIPS))

lint: install  ## ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install  ## Apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

typecheck: install  ## mypy --strict on the service
	$(RUN) mypy --strict service

check: lint typecheck test test-standard  ## Everything CI runs

migrate: install  ## Apply database migrations to DATABASE_URL (or the embedded SQLite file)
	$(RUN) alembic upgrade head

bench: install tools  ## Measure what observability and the database path cost (about 15 minutes; writes bench/results/latest.json)
	$(RUN) python bench/run.py

bench-inprocess: install  ## CPU time per request of each variant, in one process (about a minute)
	$(RUN) python bench/inprocess.py

bench-instructions: install tools  ## Instructions per request of each variant under callgrind: the steady instrument (about 4 minutes)
	$(RUN) python bench/instructions.py

bench-parts: install tools  ## The fixed cost of observability on the cached read, split by part, in instructions (about 3 minutes)
	$(RUN) python bench/instructions.py --parts --endpoints a

load: install  ## Load test: the whole service under locust (USERS, DURATION, SHAPE)
	$(RUN) python loadtests/run.py --users $(or $(USERS),20) --duration $(or $(DURATION),30s) --shape $(or $(SHAPE),steady)

drills: install tools  ## Fault drills under load (Redis, PostgreSQL, worker kill, SIGTERM)
	$(RUN) python loadtests/drills.py

fuzz: install  ## API fuzzing with schemathesis (long run)
	$(RUN) python loadtests/fuzz.py
