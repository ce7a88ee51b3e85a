# chorus: `make test` sets everything up and runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: run chat test lint sim chaos screenshots bench bench-core bench-store bench-cluster bench-instructions clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# A local cluster of 3 servers (SIZE=5 for five), shown live; Ctrl-C stops it.
run: $(STAMP)
	$(VENV)/bin/chorus cluster up --size $(or $(SIZE),3) --data $(or $(DATA),data)

# The terminal chat app, on the local cluster (SERVERS=host:port,... for another).
chat: $(STAMP)
	$(VENV)/bin/chorus chat $(if $(SERVERS),--servers $(SERVERS))

test: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy
	$(PY) -m pytest -n $(JOBS) -q

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

# Deterministic simulator: `make sim SEED=n` replays one seed with a trace;
# `make sim START=a COUNT=n` runs a range of seeds.
sim: $(STAMP)
ifdef SEED
	$(PY) -m tests.sim --seed $(SEED) --trace $(SIMFLAGS)
else
	$(PY) -m tests.sim --start $(or $(START),0) --count $(or $(COUNT),1000) --jobs $(JOBS) $(SIMFLAGS)
endif

# Fault injection on a real cluster (kill -9, pause, partitions, lost and damaged disks) with a checker;
# DURATION= seconds (default 600), SEED= to repeat a schedule. Reports in chaos-report/.
chaos: $(STAMP)
	$(PY) -m tests.chaos --duration $(or $(DURATION),600) $(if $(SEED),--seed $(SEED))

# Benchmarks: tables and plots in bench/results/. QUICK=1: the cluster only, small (under 2 minutes).
bench: $(STAMP)
ifdef QUICK
	$(PY) bench/cluster.py --quick
else
	$(PY) bench/core.py
	$(PY) bench/store.py
	$(PY) bench/cluster.py
endif

bench-cluster: $(STAMP)
	$(PY) bench/cluster.py $(if $(QUICK),--quick)

# The chat app's screenshots in docs/, from a cluster of 3 in a temporary directory.
screenshots: $(STAMP)
	$(PY) -m tests.tui.screenshots

bench-core: $(STAMP)
	$(PY) bench/core.py

bench-store: $(STAMP)
	$(PY) bench/store.py $(if $(QUICK),--quick --messages 100000)

# CPU instructions per stored send (valgrind): steady where the machine's speed is not.
bench-instructions: $(STAMP)
	$(PY) bench/instructions.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
