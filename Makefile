# control-plane: everyday commands. `make run` and `make test` are the README's first two lines.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
# pytest-xdist workers for `make test` (one per core with `auto`; 0 runs everything in this process).
# Tests of one module stay on one worker (--dist loadfile): a module's server and seed are built once.
TEST_WORKERS ?= auto

.PHONY: install run test test-sqlite bench cluster cluster-bench clean

$(BIN)/flask: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/flask

# Set up and serve on the embedded SQLite default with a demo fleet (tokens are printed).
run: install
	@PATH="$(BIN):$$PATH" HOST=$(HOST) PORT=$(PORT) sh scripts/run-demo.sh

# The test suite: PostgreSQL when CONTROL_PLANE_TEST_DATABASE_URL is set (CI), else SQLite; in
# parallel (each worker has its own database), TEST_WORKERS=0 for one process.
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The scale-out topology on this machine: PgBouncer (transaction pooling) in front of the local
# PostgreSQL, two gunicorn hosts, two workers, its own database; Ctrl-C stops it all (docs/scale-out.md).
cluster: install
	$(BIN)/python -m bench.cluster $(CLUSTER_ARGS)

# Heartbeats/s of one host direct, one host through PgBouncer, two hosts through PgBouncer, with CPU shares.
cluster-bench: install
	$(BIN)/python -m bench.cluster_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance *.egg-info .pytest_cache
