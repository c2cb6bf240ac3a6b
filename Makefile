# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= default.etcd
# extra flags for `make run`, e.g. ARGS="--unsafe-no-fsync"
ARGS ?=
# where tests leave what a person may want to look at (the console's screenshots)
ETCDLITE_ARTIFACTS ?= $(CURDIR)/test-artifacts
export ETCDLITE_ARTIFACTS

.PHONY: install run test test-server test-postgres test-clients test-deps-range postgres lint proto proto-check \
	bench clean crash-test browser e2e e2e-cluster

$(STAMP): pyproject.toml setup.py server/transport/_splice.c server/transport/_tlsrelay.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/etcdlite --data-dir $(DATA_DIR) --listen-client-urls http://127.0.0.1:2379 \
		--advertise-client-urls http://127.0.0.1:2379 $(ARGS)

# The stubs' generator, in a venv of its own: grpcio-tools 1.63.0 (protoc 26.1) writes stubs that carry no
# protobuf runtime-version check, so they load on every protobuf in server/deps.py's range; a newer one
# would demand its own protobuf or newer at import, and grpcio at least its own version.
GRPCIO_TOOLS := 1.63.0
PROTO_VENV := .venv-proto
PROTO_STAMP := $(PROTO_VENV)/.grpcio-tools-$(GRPCIO_TOOLS)

$(PROTO_STAMP):
	rm -rf $(PROTO_VENV)
	$(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/pip install -q 'grpcio-tools==$(GRPCIO_TOOLS)'
	touch $@

proto: $(PROTO_STAMP)
	$(PROTO_VENV)/bin/python protos/gen.py server/pb

# CI: regenerating the stubs must change nothing that is checked in.
proto-check: proto
	git diff --exit-code --stat -- server/pb
	@test -z "$$(git status --porcelain -- server/pb)" || { git status --porcelain -- server/pb; exit 1; }

# Two pytest runs: the etcd3 client needs the pure-Python protobuf and
# registers its own etcdserverpb descriptors, which clash with ours in one process.
test: $(STAMP) proto-check lint test-server test-postgres test-clients

# ruff over the tree; mypy --strict over core/ and storage/ (pyproject.toml [tool.mypy])
lint: $(STAMP)
	$(BIN)/ruff check server tests bench protos
	$(BIN)/mypy

# The web console's tests drive Debian's chromium through its chromedriver: installed here when
# missing (CI runs as root on a fresh machine); elsewhere those tests skip and say why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing chromium and chromium-driver for the console's browser tests"; \
			apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends chromium chromium-driver fonts-liberation >/dev/null; \
		else \
			echo "note: chromium is not installed (apt-get install chromium chromium-driver): browser tests skip"; \
		fi; \
	fi

test-server: $(STAMP) browser postgres
	$(BIN)/pytest -q tests --ignore=tests/clients

# The differential KV, lease, watch and auth tests again, etcdlite over PostgreSQL (--backend) against etcd
test-postgres: $(STAMP) postgres
	$(BIN)/pytest -q tests/test_kv.py tests/test_lease.py tests/test_watch.py tests/test_auth.py \
		--etcdlite-backend postgres

# PostgreSQL for the tests of the shared backend (tests/pgcluster.py runs its own server in a temporary
# dir): Debian's package, installed when missing, without the cluster Debian would create and start
PG_CTL = $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))
postgres:
	@if [ -z "$(PG_CTL)" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			mkdir -p /etc/postgresql-common; \
			[ -e /etc/postgresql-common/createcluster.conf ] || \
				echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null; \
		else \
			echo "PostgreSQL is not installed: its tests will be skipped (apt-get install postgresql)"; \
		fi; \
	fi

test-clients: $(STAMP)
	PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python $(BIN)/pytest -q tests/clients

# Install and test at both ends of the grpcio and protobuf ranges (server/deps.py), each in a fresh venv in
# build/deps-range: the oldest from a wheel built without a C compiler, the newest as `pip install` does.
# What runs there and why: tests/deps_range.py. CI runs it after `make test`.
test-deps-range:
	$(PYTHON) tests/deps_range.py

# The kill -9 loops of tests/test_crash.py (acknowledged writes kept) and tests/test_linearizability.py
# (histories checked for linearizability), 5 rounds each in `make test`, with more rounds: CRASH_ROUNDS=200
CRASH_ROUNDS ?= 50
crash-test: $(STAMP)
	ETCDLITE_CRASH_ROUNDS=$(CRASH_ROUNDS) $(BIN)/pytest -q --timeout=0 tests/test_crash.py \
		tests/test_linearizability.py::test_linearizable_across_kill_9

clean:
	rm -rf $(VENV) $(PROTO_VENV) build *.egg-info

# etcd and etcdlite side by side under etcd's own benchmark tool (see bench/run.py)
bench: $(STAMP) postgres
	$(BIN)/python bench/run.py --out bench/results.md
	$(BIN)/python bench/run.py --etcdlite-backend postgres --skip-keys \
		--only put,range,txn-put,lease-keepalive,watch-latency --out bench/results-postgres.md

# etcd 3.4's own e2e suite (Debian's golang-etcd-server-dev) with etcdlite as `etcd`; 20-40 min, not in `make test`
E2E_TESTS ?= .*
e2e: $(STAMP)
	$(BIN)/python tests/e2e/run_e2e.py -k '$(E2E_TESTS)'

# Its tests that start a multi-member cluster (run_e2e.py's CLUSTER_TESTS, or E2E_CLUSTER_TESTS=REGEX), each
# member an etcdlite instance over one PostgreSQL database per cluster (tests/e2e/cluster_wrapper.py); ~15 min
E2E_CLUSTER_TESTS ?=
e2e-cluster: $(STAMP) postgres
	$(BIN)/python tests/e2e/run_e2e.py --postgres $(if $(E2E_CLUSTER_TESTS),-k '$(E2E_CLUSTER_TESTS)')
