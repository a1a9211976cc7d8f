# caesar-rest: `make run` (embedded service, no server needed), `make test` (whole suite on real peers) and
# `make test-fast` (tests/unit: no service, under a minute).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= test,postgres,container,pulsar,condor,batch,prod
STAMP := $(VENV)/.installed
# `make run` needs the package alone (SQLite, kombu's filesystem broker, the local backend): no extra.
RUN_STAMP := $(VENV)/.installed-run
RUN_PORT ?= 8080

.PHONY: install run lint test test-fast bench drills services clean

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@echo "installing caesar-rest[$(EXTRAS)] into $(VENV) (log: $(VENV)/install.log)"
	@$(PIP) install -q --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PIP) install -q -e '.[$(EXTRAS)]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	touch $@

install: $(STAMP)

# The package without extras, unless the full install is there already (then nothing more is needed).
$(RUN_STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	@if [ -e $(STAMP) ] && [ $(STAMP) -nt setup.cfg ]; then touch $@; exit 0; fi; \
	echo "installing caesar-rest into $(VENV) (log: $(VENV)/install.log)"; \
	$(PIP) install -q --upgrade pip > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }; \
	$(PIP) install -q -e . >> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }; \
	touch $@

run: $(RUN_STAMP)
	bash scripts/sandbox-tools.sh
	$(VENV)/bin/caesar-rest run --host 127.0.0.1 --port $(RUN_PORT)

# The gates: ruff (rules in pyproject.toml) over the whole tree, mypy over caesar_rest and workers.
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

services:
	bash scripts/services.sh

test: install services
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast layer: pure code and the engine on SQLite with stand-in backends; no service started or needed.
test-fast: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# The phases of python -m bench, then a no-op job on the one-node Slurm cluster against Slurm alone (bench/slurm.py
# starts the cluster; SLURM_BENCH=0 leaves it out).
bench: install services
	$(PY) -m bench $(BENCH_ARGS)
	@if [ "$${SLURM_BENCH:-1}" != 0 ]; then $(PY) -m bench.slurm $(SLURM_BENCH_ARGS); fi
	@if [ "$${MULTIHOST_BENCH:-1}" != 0 ]; then $(PY) -m bench.multihost $(MULTIHOST_BENCH_ARGS); fi

# The fault drills (issue 15): workers killed, the database cut, a PENDING backlog; one table of lost / doubled.
drills: install services
	$(PY) -m bench.drills $(DRILLS_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
