"""`etcdctl make-mirror` both ways between etcdlite and a real etcd: the migration path.

make-mirror reads the source with a Range at a revision, then watches from
the next revision and replays every event into the destination, so it needs
a source whose history, revisions and watch stream behave as etcd's.
"""

from __future__ import annotations

import subprocess

import pytest

from harness import ETCD_BIN, ETCDCTL, Client, _etcdctl_env, wait_until

pytestmark = pytest.mark.timeout(120)


def _pairs(c: Client, prefix: bytes) -> dict[bytes, bytes]:
    with c.quiet():
        r = c.range(prefix, prefix[:-1] + bytes([prefix[-1] + 1]))
    return {kv["key"]: kv["value"] for kv in r["kvs"]}


@pytest.mark.parametrize("source, dest", [("etcdlite", "etcd"), ("etcd", "etcdlite")])
def test_make_mirror(server_factory, source, dest):
    if ETCD_BIN is None or ETCDCTL is None:
        pytest.skip("real etcd is not installed")
    src_srv, dst_srv = server_factory(source), server_factory(dest)
    src, dst = Client(src_srv.stubs()), Client(dst_srv.stubs())
    for i in range(20):
        src.put(f"/m/k{i:02d}", f"v{i}")
    src.put("/other", "not mirrored")
    mirror = subprocess.Popen([ETCDCTL, "--endpoints", src_srv.endpoint, "make-mirror", "--prefix", "/m/",
                               dst_srv.endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_etcdctl_env())
    try:
        assert wait_until(lambda: len(_pairs(dst, b"/m/")) == 20, 20), "initial sync did not arrive"
        # live changes after the initial sync: puts, overwrites, deletes, a txn, a lease revoke
        for i in range(20, 30):
            src.put(f"/m/k{i:02d}", f"v{i}")
        src.put("/m/k00", "changed")
        src.delete("/m/k01")
        src.delete("/m/k1", "/m/k2")
        lease = src.grant(60)
        src.put("/m/leased", "x", lease=int(lease["ID"]))
        src.revoke(int(lease["ID"]))
        src.put("/m/last", "done")
        want = _pairs(src, b"/m/")
        assert wait_until(lambda: _pairs(dst, b"/m/") == want, 20), (_pairs(dst, b"/m/"), want)
        assert b"/other" not in _pairs(dst, b"/")
        assert want[b"/m/k00"] == b"changed" and b"/m/k01" not in want and b"/m/k15" not in want
    finally:
        mirror.terminate()
        _, err = mirror.communicate(timeout=10)
    assert "Error" not in err, err
