"""aetcd, an asyncio gRPC client, against etcdlite and real etcd: the same session, the same answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import start, stop

SESSION = Path(__file__).parent / "scenarios" / "aetcd_session.py"
pytestmark = pytest.mark.timeout(120)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}


def skip_unless_aetcd_loads() -> None:
    """aetcd 1.0.0's own stubs need protobuf>=5.27.2 (its metadata says >4): below that, as at the oldest
    end of etcdlite's protobuf range (make test-deps-range), the client itself cannot load."""
    r = subprocess.run([sys.executable, "-c", "import aetcd"], capture_output=True, text=True,
                       timeout=60, env=_env())
    if r.returncode != 0:
        pytest.skip(f"aetcd does not load here: {r.stderr.strip().splitlines()[-1]}")


def run_session(port: int) -> list:
    r = subprocess.run([sys.executable, str(SESSION), "127.0.0.1", str(port)], capture_output=True, text=True,
                       timeout=60, env=_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_aetcd_session_matches_etcd(tmp_path):
    skip_unless_aetcd_loads()
    results = {}
    for target in ("etcdlite", "etcd"):
        proc, port = start(target, tmp_path)
        try:
            results[target] = run_session(port)
        finally:
            stop(proc)
    assert results["etcdlite"] == results["etcd"]
    ours = dict((step[0], step[1:]) for step in results["etcdlite"])
    assert ours["get"] == [["/svc/a", "1", 2, 2, 1]]
    assert ours["watch"][0] == [["PUT", "/w", "0", 8], ["PUT", "/w", "1", 9], ["DELETE", "/w", "", 10]]
