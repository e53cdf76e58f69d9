# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := $(UV) run --frozen python

.PHONY: setup demo demo-ha demo-down test bench lab-up lab-down lab-status

# Installs uv (from PyPI), the locked Python deps, and the lab's Debian and npm packages.
# --compile-bytecode: uv leaves site-packages without .pyc files, and with PYTHONDONTWRITEBYTECODE set (as it
# is on these machines) every Python process (each lab program, CLI call, test worker and subprocess) then
# compiles Prefect and the rest from source: `import prefect, flows.node_recovery, flows.daily_report` took
# 8.8-10.1 s, 3.6-4.1 s with the .pyc files. Compiling once costs ~18 s; later syncs ~1 s.
setup:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	$(PY) -m lab install

# A local fleet, a Prefect server and worker, every deployment, a broken node
# fixed by the runbook with no human action. `make demo-down` stops it all.
demo: setup
	$(PY) -m lab.demo

# The same with Prefect highly available: two API servers behind HAProxy, a services process,
# PostgreSQL and Redis, API authentication on (lab/prefect_ha.py).
demo-ha: setup
	$(PY) -m lab.demo --ha

demo-down:
	$(PY) -m lab down

# The whole suite against the real lab (started once, shared by every test): the fleet's tests on one
# worker, everything else on the other meanwhile (tests/conftest.py). Last, on the worker the other tests
# have left free, beside the fleet's last tests, the 1,000-node alert storm (marked `scale`, its own Prefect).
test: setup
	$(UV) run --frozen pytest -n 2

bench: setup
	$(PY) bench/fleet_health_bench.py

lab-up: setup
	$(PY) -m lab up
lab-down:
	$(PY) -m lab down
lab-status:
	$(PY) -m lab status
