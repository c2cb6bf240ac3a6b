"""The operator's etcdctl commands print what they print against real etcd (after normalizing IDs,
sizes, versions, timings): endpoint health/status/hashkv, alarm list, defrag, member list, check datascale."""

from __future__ import annotations

import re

import pytest

from harness import ETCD_BIN, run_parallel

pytestmark = pytest.mark.timeout(180)


def _norm(text: str, endpoint: str) -> str:
    text = text.replace(endpoint.removeprefix("http://"), "<endpoint>").replace(endpoint, "<endpoint>")
    # member/cluster IDs: Go prints them in hex without leading zeros, so 10-16 digits
    text = re.sub(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{10,16}\b", "<id>", text)
    text = re.sub(r"took = [\d.]+[µm]?s", "took = <t>", text)
    text = re.sub(r"\d+(\.\d+)? (kB|MB|B)\b", "<size>", text)
    text = re.sub(r"3\.5\.\d+(\+etcdlite[\w.]*)?", "<version>", text)
    text = re.sub(r"memory used : [\d.]+ MB", "memory used : <n> MB", text)
    # peer URLs: the harness gives real etcd a peer port; etcdlite keeps etcd's default
    text = re.sub(r"http://(127\.0\.0\.1:\d+|localhost:2380)", "<url>", text)
    # raft index and applied index count etcd's raft entries, which etcdlite has none of
    text = re.sub(r"(true|false), (true|false), (\d+), \d+, \d+,", r"\1, \2, \3, <index>, <index>,", text)
    return "\n".join(line for line in text.splitlines() if '"level":' not in line and "%" not in line)


def session(srv) -> list:
    out = []
    for args in (["put", "k", "v"], ["endpoint", "health"], ["endpoint", "status"], ["endpoint", "hashkv"],
                 ["alarm", "list"], ["defrag"], ["member", "list"],
                 ["check", "datascale", "--load=s"]):  # (datascale writes random values: no hashkv after it)
        rc, stdout, stderr = srv.etcdctl(*args, timeout=120)
        out.append((args, rc, _norm(stdout, srv.endpoint), _norm(stderr, srv.endpoint)))
    return out


def test_operator_commands_print_what_etcd_prints(server_factory):
    if ETCD_BIN is None:
        pytest.skip("real etcd is not installed")
    servers = {t: server_factory(t) for t in ("etcdlite", "etcd")}
    results = run_parallel({t: (lambda s=s: session(s)) for t, s in servers.items()})
    for ours, theirs in zip(results["etcdlite"], results["etcd"]):
        assert ours == theirs
    by_cmd = {" ".join(args): (rc, out) for args, rc, out, _ in results["etcdlite"]}
    assert "is healthy: successfully committed proposal" in by_cmd["endpoint health"][1]
    assert by_cmd["check datascale --load=s"][0] == 0
    assert "PASS" in by_cmd["check datascale --load=s"][1]
