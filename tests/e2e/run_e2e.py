"""etcd 3.4's own end-to-end tests (Debian's golang-etcd-server-dev) with etcdlite as the ``etcd`` binary.

``make e2e`` (or ``python tests/e2e/run_e2e.py [-k REGEX] [--out FILE]``) builds the suite and etcdctl 3.4
from Debian's Go sources in GOPATH mode (installing golang-go and golang-etcd-server-dev where missing),
puts an ``etcd`` that execs etcdlite beside that etcdctl, and runs every test in a process of its own (the
suite's tests leak processes and ``ETCDCTL_API`` when they fail, which would fail every later test). The
results go to a markdown table: each test, pass/fail, seconds and the first line of its failure.

Not part of ``make test``: the whole run takes 20-40 minutes.

``--postgres`` (``make e2e-cluster``) runs the tests that start a multi-member cluster (``CLUSTER_TESTS``, or
``-k``) with each member an etcdlite instance over one PostgreSQL database per cluster, on a throw-away
PostgreSQL server (tests/pgcluster.py); ``cluster_wrapper.py`` is the ``etcd`` then.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOPATH = Path("/usr/share/gocode")
SOURCE = GOPATH / "src" / "go.etcd.io" / "etcd"
FIXTURES = SOURCE / "integration" / "fixtures"
WORK = Path(os.environ.get("ETCDLITE_E2E_DIR", Path.home() / ".cache" / "etcdlite-e2e"))
ETCDLITE = Path(sys.executable).parent / "etcdlite"
PER_TEST_TIMEOUT = 240  # seconds; the suite's own waits are shorter
# The tests whose cluster has more than one member (etcdProcessClusterConfig.clusterSize 3 with withQuorum() or
# setupEtcdctlTest(..., true), or three processes started by hand).
CLUSTER_TESTS = (
    "TestCtlV3GetQuorum", "TestCtlV3MemberRemove", "TestCtlV3MemberRemoveNoTLS", "TestCtlV3MemberRemoveClientTLS",
    "TestCtlV3MemberRemoveClientAutoTLS", "TestCtlV3MemberRemovePeerTLS", "TestCtlV3MoveLeaderScenarios",
    "TestCtlV3AuthMemberRemove", "TestCtlV3AuthEndpointHealth", "TestEtcdPeerCNAuth", "TestEtcdPeerNameAuth",
    "TestCtlV3EndpointHealth", "TestCtlV3EndpointStatus", "TestCtlV3EndpointHashKV", "TestEtcdMultiPeer",
    "TestEtcdCorruptHash", "TestGateway", "TestReleaseUpgrade", "TestReleaseUpgradeWithRestart",
    # the v2 API's (etcdlite serves v3 only)
    "TestCtlV2SetQuorum", "TestCtlV2MkQuorum", "TestCtlV2LsQuorum", "TestCtlV2Rm", "TestCtlV2RmTLS",
    "TestCtlV2Watch", "TestCtlV2WatchTLS", "TestCtlV2ClusterHealth",
)


def _go_env() -> dict[str, str]:
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="")
    env.setdefault("GOCACHE", str(WORK / "go-cache"))
    return env


def ensure_sources() -> None:
    if shutil.which("go") and (SOURCE / "tests" / "e2e").is_dir():
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "golang-go", "golang-etcd-server-dev"], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def build(etcd: Path, shared: SharedDatabase | None = None) -> tuple[Path, Path]:
    """The e2e test binary and a bin dir with etcdctl 3.4 and an ``etcd`` that runs ``etcd`` (over
    ``shared`` for multi-member clusters)."""
    ensure_sources()
    bin_dir = WORK / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    suite = WORK / "e2e.test"
    if not suite.exists():
        subprocess.run(["go", "test", "-c", "go.etcd.io/etcd/tests/e2e", "-o", str(suite)], check=True, env=_go_env(),
                       cwd=WORK)
    if not (bin_dir / "etcdctl").exists():
        subprocess.run(["go", "build", "-o", str(bin_dir / "etcdctl"), "go.etcd.io/etcd/etcdctl"], check=True,
                       env=_go_env(), cwd=WORK)
    # tests name their certificates "../../integration/fixtures/...", relative to the suite's own folder
    (WORK / "tests" / "e2e").mkdir(parents=True, exist_ok=True)
    if not (WORK / "integration").exists():
        (WORK / "integration").mkdir()
        (WORK / "integration" / "fixtures").symlink_to(FIXTURES)
    shutil.copy(Path(__file__).with_name("etcd.conf.yml.sample"), WORK / "etcd.conf.yml.sample")  # "../../…" too
    if shared is not None:  # a bin dir of its own: a plain run may use the other one meanwhile
        ctl = bin_dir / "etcdctl"
        bin_dir = WORK / "bin-postgres"
        bin_dir.mkdir(exist_ok=True)
        if not (bin_dir / "etcdctl").exists():
            (bin_dir / "etcdctl").symlink_to(ctl)
        command = shared.command(etcd)
    else:
        command = f"exec {etcd} \"$@\""
    wrapper = bin_dir / "etcd"
    wrapper.write_text(f"#!/bin/sh\n{command}\n")
    wrapper.chmod(0o755)
    return suite, bin_dir


class SharedDatabase:
    """The PostgreSQL server the members of multi-member clusters share, one database per cluster
    (``cluster_wrapper.py``); ``reset()`` after each test ends its members and drops its databases."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from cluster_wrapper import DATABASE_PREFIX, GENERATIONS
        from pgcluster import PgCluster

        self._prefix = DATABASE_PREFIX
        self.server = PgCluster.start()
        self.server.psql(GENERATIONS)
        self.pids = WORK / "pids"
        self.pids.mkdir(parents=True, exist_ok=True)

    def command(self, etcdlite: Path) -> str:
        wrapper = Path(__file__).with_name("cluster_wrapper.py")
        return (f"exec {sys.executable} {wrapper} {self.server.url('').rstrip('/')} {etcdlite} {self.pids} "
                '"$@"')

    def reset(self) -> None:
        for entry in self.pids.iterdir():
            _end_member(int(entry.name))
            entry.unlink()
        for name in self.server.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{self._prefix}%'")\
                .split():
            self.server.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
        self.server.psql("TRUNCATE etcdlite_e2e_cluster")

    def stop(self) -> None:
        self.reset()
        self.server.stop()


def _end_member(pid: int) -> None:
    """An etcdlite the suite left running (and its relay: the member leads its own session)."""
    try:
        if b"etcdlite" not in Path(f"/proc/{pid}/cmdline").read_bytes() or os.getpgid(pid) != pid:
            return  # gone, and the ID taken by another process since
        os.killpg(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass


def list_tests(suite: Path, pattern: str) -> list[str]:
    out = subprocess.run([str(suite), "-test.list", pattern], capture_output=True, text=True, check=True, cwd=WORK)
    return [line for line in out.stdout.split() if line.startswith("Test")]


def run_one(suite: Path, bin_dir: Path, name: str) -> tuple[str, float, str]:
    """The result ("pass", "FAIL", or "skip": the test skipped itself, not a pass either), seconds, why."""
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "ETCDCTL"))}
    proc = subprocess.Popen([str(suite), "-test.run", f"^{name}$", "-test.v", "-bin-dir", str(bin_dir),
                             "-cert-dir", str(FIXTURES)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=WORK / "tests" / "e2e", env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=PER_TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        out = f"timed out after {PER_TEST_TIMEOUT}s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the test's own session: it and what it left running
        except ProcessLookupError:
            pass
        proc.wait()
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{name}.log").write_text(out)  # the test's whole output, for a failure's story
    result = "pass" if f"--- PASS: {name} " in out else "skip" if f"--- SKIP: {name} " in out else "FAIL"
    reason = "" if result == "pass" else _first_failure(out)
    return result, time.monotonic() - start, reason


def _first_failure(out: str) -> str:
    for line in out.splitlines():
        line = line.strip()
        if re.match(r"\w+_test\.go:\d+:", line) or line.startswith(("panic:", "timed out")):
            return re.sub(r"\s+", " ", line.replace("|", "\\|"))[:300]
    return "no PASS line"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default=None, help="regex of the tests to run (go test -run syntax; default all, with "
                   "--postgres the multi-member ones)")
    p.add_argument("--out", default=None, help="the markdown table (default results.md, results-postgres.md, in "
                   f"{WORK})")
    p.add_argument("--etcd", default=str(ETCDLITE), help="the binary to test (default etcdlite; a real etcd for "
                   "a baseline)")
    p.add_argument("--postgres", action="store_true", help="multi-member clusters as etcdlite instances over one "
                   "PostgreSQL database each (a throw-away server)")
    args = p.parse_args()
    shared = SharedDatabase() if args.postgres else None
    try:
        suite, bin_dir = build(Path(args.etcd), shared)
        pattern = args.k or (f"^({'|'.join(CLUSTER_TESTS)})$" if shared is not None else ".*")
        names = list_tests(suite, pattern)
        rows, passed = [], 0
        for i, name in enumerate(names, 1):
            result, seconds, reason = run_one(suite, bin_dir, name)
            if shared is not None:
                shared.reset()
            passed += result == "pass"
            rows.append(f"| {name} | {result} | {seconds:.1f} | {reason} |")
            print(f"[{i}/{len(names)}] {result} {name} {reason}", flush=True)
    finally:
        if shared is not None:
            shared.stop()
    out = Path(args.out or WORK / ("results-postgres.md" if shared is not None else "results.md"))
    how = " (multi-member clusters over PostgreSQL)" if shared is not None else ""
    out.write_text(f"etcd 3.4.23 e2e with {args.etcd} as etcd{how}: {passed} of {len(names)} passed\n\n"
                   "| test | result | s | first failure |\n|---|---|---:|---|\n" + "\n".join(rows) + "\n")
    print(f"{passed} of {len(names)} passed; table in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
