"""Fixtures: a fresh server per test (etcdlite or real etcd), and differential runs against both.

Choose the targets with ``--target`` (or ``ETCDLITE_TEST_TARGET``):

    .venv/bin/pytest tests --ignore=tests/clients                   # both (default)
    .venv/bin/pytest tests --ignore=tests/clients --target etcd     # validate the tests on real etcd only
    .venv/bin/pytest tests --ignore=tests/clients --target etcdlite # etcdlite alone (no comparison)

Fixtures
--------
``target``          parametrized over the selected targets (ids ``etcdlite`` / ``etcd``)
``server``          a fresh ``EtcdProcess`` of ``target`` (function scope, tmp data dir)
``client``          a ``harness.Client`` on ``server``
``etcdctl``         ``etcdctl(*args, binary=None) -> (rc, stdout, stderr)`` against ``server``
``server_factory``  ``start(target, args=(), data_dir=None, ...) -> EtcdProcess`` (stopped at teardown)
``differential``    ``run(scenario, args=()) -> value``: starts every selected target, runs
                    ``scenario(client)`` on each, asserts their transcripts and values are equal
                    (see harness.py for the normalization) and returns etcd's value (etcdlite's when
                    etcd is not installed or not selected) for the test's concrete assertions.
``both``            the same as ``differential``.

Real etcd is skipped, never failed, when its binary is absent.  Nothing here
imports etcd3 (tests/clients/ runs in its own process).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness import Client, EtcdProcess

# harness (and so etcdlite's protobuf stubs) is imported lazily, inside the fixtures: this conftest is
# also loaded by `pytest tests/clients`, whose etcd3 client registers clashing descriptors.
TARGETS = ("etcdlite", "etcd")


def _etcd_bin() -> str | None:
    from harness import ETCD_BIN
    return ETCD_BIN


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--target", choices=["both", *TARGETS], default=os.environ.get("ETCDLITE_TEST_TARGET", "both"),
                     help="servers to test: etcdlite, real etcd, or both compared (default)")
    parser.addoption("--etcdlite-backend", choices=["embedded", "postgres"],
                     default=os.environ.get("ETCDLITE_TEST_BACKEND", "embedded"),
                     help="the storage the fixtures' etcdlite servers use: the embedded store in their data "
                          "dir (default), or a fresh database of a throw-away PostgreSQL each (--backend)")


def etcdlite_backend(config: pytest.Config) -> str:
    return str(config.getoption("--etcdlite-backend"))


def selected_targets(config: pytest.Config) -> list[str]:
    choice = config.getoption("--target")
    return list(TARGETS) if choice == "both" else [choice]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        targets = selected_targets(metafunc.config)
        metafunc.parametrize("target", targets, ids=targets, scope="function")


def _skip_if_missing(target: str) -> None:
    if target == "etcd" and _etcd_bin() is None:
        pytest.skip("real etcd is not installed")


class _Servers:
    """Every process a test started; all stopped at teardown, and none may have died on its own."""

    def __init__(self, base: Path, request: pytest.FixtureRequest) -> None:
        from harness import EtcdProcess
        self.cls = EtcdProcess
        self.base = base
        self.procs: list[EtcdProcess] = []
        self.n = 0
        self._request = request

    def start(self, target: str, args: tuple[str, ...] | list[str] = (), data_dir: Path | None = None,
              wait: bool = True, **kw: Any) -> EtcdProcess:
        _skip_if_missing(target)
        if target == "etcdlite" and etcdlite_backend(self._request.config) == "postgres":
            args = [*args, "--backend", self._request.getfixturevalue("pg_cluster").new_database()]
        self.n += 1
        srv = self.cls(target, data_dir or self.base / f"{target}-{self.n}.data", args=args, **kw)
        self.procs.append(srv)
        return srv.start(wait=wait)

    def close(self) -> list[str]:
        crashed = []
        for srv in self.procs:
            if srv.proc is not None and srv.proc.poll() is not None and srv.proc.returncode not in (0, -9, -15):
                crashed.append(f"{srv!r} exited with {srv.proc.returncode}:\n{srv.log()[-4000:]}")
            srv.stop()
        return crashed


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throw-away PostgreSQL server for the session (tests/pgcluster.py); a database per test."""
    import pgcluster
    if not pgcluster.available():
        pytest.skip("PostgreSQL is not installed (make test installs it: apt-get install -y postgresql)")
    cluster = pgcluster.PgCluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., EtcdProcess]]:
    servers = _Servers(tmp_path, request)
    yield servers.start
    crashed = servers.close()
    if crashed:
        pytest.fail("a server died during the test:\n" + "\n".join(crashed))


@pytest.fixture
def server(target: str, server_factory: Callable[..., EtcdProcess]) -> EtcdProcess:
    return server_factory(target)


@pytest.fixture
def client(server: EtcdProcess) -> Client:
    c = server.client()
    c.server = server  # type: ignore[attr-defined]
    return c


@pytest.fixture
def etcdctl(server: EtcdProcess) -> Callable[..., tuple[int, str, str]]:
    from harness import etcdctl as run_etcdctl

    def run(*args: str, **kw: Any) -> tuple[int, str, str]:
        return run_etcdctl(server.endpoint, *args, **kw)
    return run


@pytest.fixture
def differential(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from harness import diff_transcripts, run_parallel

    servers = _Servers(tmp_path, request)
    targets = [t for t in selected_targets(request.config) if t != "etcd" or _etcd_bin() is not None]
    if not targets:
        pytest.skip("no target server available")

    def run(scenario: Callable[[Client], Any], args: tuple[str, ...] | list[str] = (),
            check_alive: bool = True) -> Any:
        procs = run_parallel({t: (lambda t=t: servers.start(t, args=args)) for t in targets})
        clients = {}
        for t, srv in procs.items():
            c = srv.client()
            c.server = srv  # type: ignore[attr-defined]
            clients[t] = c
        errors: dict[str, str] = {}

        def guarded(t: str) -> Any:
            try:
                return scenario(clients[t])
            except Exception:  # noqa: BLE001  (reported below, with the transcripts)
                errors[t] = traceback.format_exc()
                return None

        values = run_parallel({t: (lambda t=t: guarded(t)) for t in targets})
        dead = [f"{t} died during the scenario:\n{srv.log()[-4000:]}" for t, srv in procs.items()
                if check_alive and not srv.alive()]
        for srv in procs.values():
            srv.stop()
        report = diff_transcripts({t: (values[t], clients[t]) for t in targets})
        problems = dead + [f"the scenario raised on {t}:\n{tb}" for t, tb in errors.items()]
        if report:
            problems.insert(0, f"etcdlite and etcd answered differently in {scenario.__name__}:\n{report}")
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)
        return values["etcd"] if "etcd" in values else values[targets[0]]

    yield run
    crashed = servers.close()
    if crashed:
        pytest.fail("a server died during the test:\n" + "\n".join(crashed))


@pytest.fixture
def both(differential: Callable[..., Any]) -> Callable[..., Any]:
    return differential
