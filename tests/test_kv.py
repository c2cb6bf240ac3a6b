"""KV service, differentially: etcdlite must answer exactly as real etcd (see conftest.py).

Each test runs one scenario on a fresh server of each kind; every call's answer
is compared, and the concrete values that matter are asserted as well.
"""

from __future__ import annotations

import pytest

from harness import (
    E_COMPACTED,
    E_DUPLICATE_KEY,
    E_EMPTY_KEY,
    E_FUTURE_REV,
    E_KEY_NOT_FOUND,
    E_LEASE_NOT_FOUND,
    E_LEASE_PROVIDED,
    E_TOO_MANY_OPS,
    E_VALUE_PROVIDED,
    Client,
    Err,
    compare,
    delete_req,
    pb,
    prefix_end,
    put_req,
    range_req,
    txn_req,
)

pytestmark = pytest.mark.timeout(60)


def kv(key, value, create, mod, version, lease=0):
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod, "version": version,
            "lease": lease}


def keys(r):
    return [k["key"] for k in r["kvs"]]


# --------------------------------------------------------------------------- MVCC


def test_revisions_versions_and_history(differential):
    def scenario(c: Client):
        out = {}
        out["fresh"] = c.range("foo")
        out["put1"] = c.put("foo", "v1")
        out["put2"] = c.put("foo", "v2")
        out["bar"] = c.put("bar", "b1")
        out["del"] = c.delete("foo")
        out["put3"] = c.put("foo", "v3")
        out["now"] = c.range("foo")
        out["history"] = {rev: c.range("foo", revision=rev) for rev in range(0, 7)}
        out["all_at_3"] = c.range(b"\0", b"\0", revision=3)
        out["future"] = c.range("foo", revision=7)
        out["far_future"] = c.range("foo", revision=1 << 40)
        out["negative_rev"] = c.range("foo", revision=-1)
        out["serializable"] = c.range("foo", serializable=True, revision=3)
        return out

    r = differential(scenario)
    assert r["fresh"] == {"header": {"revision": 1}, "kvs": [], "more": False, "count": 0}
    assert [r[k]["header"]["revision"] for k in ("put1", "put2", "bar", "del", "put3")] == [2, 3, 4, 5, 6]
    assert r["del"]["deleted"] == 1
    assert r["now"]["kvs"] == [kv(b"foo", b"v3", 6, 6, 1)]
    h = r["history"]
    assert h[0]["kvs"] == [kv(b"foo", b"v3", 6, 6, 1)]  # 0 = current
    assert h[1]["kvs"] == []
    assert h[2]["kvs"] == [kv(b"foo", b"v1", 2, 2, 1)]
    assert h[3]["kvs"] == [kv(b"foo", b"v2", 2, 3, 2)]
    assert h[4]["kvs"] == [kv(b"foo", b"v2", 2, 3, 2)]
    assert h[5]["kvs"] == []
    assert h[6]["kvs"] == [kv(b"foo", b"v3", 6, 6, 1)]
    assert all(x["header"]["revision"] == 6 for x in h.values())  # header is always the current revision
    assert r["all_at_3"]["kvs"] == [kv(b"foo", b"v2", 2, 3, 2)]
    assert r["future"] == E_FUTURE_REV and r["far_future"] == E_FUTURE_REV
    assert r["negative_rev"]["kvs"] == [kv(b"foo", b"v3", 6, 6, 1)]
    assert r["serializable"]["kvs"] == [kv(b"foo", b"v2", 2, 3, 2)]


def test_compaction(differential):
    def scenario(c: Client):
        out = {}
        for i in range(1, 6):  # revisions 2..6
            c.put("k", f"v{i}")
        c.put("other", "x")  # 7
        out["compact_future"] = c.compact(8)
        out["compact"] = c.compact(4)
        out["reads"] = {rev: c.range("k", revision=rev) for rev in range(1, 9)}
        out["all_below"] = c.range(b"\0", b"\0", revision=2)
        out["count_below"] = c.range(b"\0", b"\0", revision=3, count_only=True)
        out["again"] = c.compact(4)
        out["below"] = c.compact(3)
        out["zero"] = c.compact(0)
        out["txn_read_compacted"] = c.txn(success=[range_req("k", revision=2)])
        out["txn_write_read_compacted"] = c.txn(success=[put_req("z", "1"), range_req("k", revision=3)])
        out["after_failed_txn"] = c.range("z")
        out["physical"] = c.compact(6, physical=True)
        out["at_6"] = c.range("k", revision=6)
        out["at_5"] = c.range("k", revision=5)
        out["compact_current"] = c.compact(7)
        out["put_after"] = c.put("k", "v6")
        out["compact_current_again"] = c.compact(7)
        out["latest"] = c.range("k")
        return out

    r = differential(scenario)
    assert r["compact_future"] == E_FUTURE_REV
    assert r["compact"] == {"header": {"revision": 7}}  # compaction does not take a revision
    reads = r["reads"]
    assert reads[1] == E_COMPACTED and reads[2] == E_COMPACTED and reads[3] == E_COMPACTED
    assert reads[4]["kvs"] == [kv(b"k", b"v3", 2, 4, 3)]  # the compaction revision itself is readable
    assert reads[6]["kvs"] == [kv(b"k", b"v5", 2, 6, 5)]
    assert reads[8] == E_FUTURE_REV
    assert r["all_below"] == E_COMPACTED and r["count_below"] == E_COMPACTED
    assert r["again"] == E_COMPACTED and r["below"] == E_COMPACTED and r["zero"] == E_COMPACTED
    assert r["txn_read_compacted"] == E_COMPACTED
    assert r["txn_write_read_compacted"] == E_COMPACTED
    assert r["after_failed_txn"]["kvs"] == [] and r["after_failed_txn"]["header"]["revision"] == 7
    assert r["physical"] == {"header": {"revision": 7}}
    assert r["at_5"] == E_COMPACTED and r["at_6"]["kvs"] == [kv(b"k", b"v5", 2, 6, 5)]
    assert r["compact_current"] == {"header": {"revision": 7}}
    assert r["put_after"]["header"]["revision"] == 8
    assert r["compact_current_again"] == E_COMPACTED
    assert r["latest"]["kvs"] == [kv(b"k", b"v6", 2, 8, 6)]


def test_compact_zero_on_fresh_server(differential):
    def scenario(c: Client):
        return [c.compact(0), c.compact(0), c.compact(1), c.compact(1), c.range("a", revision=1), c.put("a", "1"),
                c.compact(2), c.range("a", revision=1), c.range("a", revision=2)]

    r = differential(scenario)
    assert r[3] == E_COMPACTED
    assert r[7] == E_COMPACTED


# --------------------------------------------------------------------------- Range


def _populate(c: Client) -> None:
    """Keys with distinct create revisions, mod revisions, versions and values, and some ties."""
    with c.quiet():
        c.put("a", "5")         # 2
        c.put("ab", "3")        # 3
        c.put("abc", "9")       # 4
        c.put("b", "1")         # 5
        c.put("ab", "4")        # 6  ab v2
        c.put("foo/1", "x")     # 7
        c.put("foo/2", "x")     # 8
        c.put("foo/3", "y")     # 9
        c.put("a", "2")         # 10 a v2
        c.put("a", "7")         # 11 a v3
        c.put(b"\xff", "ff")    # 12
        c.put(b"\xff\xff", "")  # 13
        c.put("foo/2", "z")     # 14 foo/2 v2


def test_range_keys_and_ends(differential):
    def scenario(c: Client):
        _populate(c)
        out = {}
        out["single"] = c.range("ab")
        out["missing"] = c.range("zz")
        out["interval"] = c.range("a", "b")
        out["interval_incl"] = c.range("a", "b\0")
        out["prefix"] = c.range("foo/", prefix_end("foo/"))
        out["prefix_a"] = c.range("a", prefix_end("a"))
        out["prefix_ff"] = c.range(b"\xff", prefix_end(b"\xff"))
        out["from_key"] = c.range("b", b"\0")
        out["all"] = c.range(b"\0", b"\0")
        out["end_before_key"] = c.range("b", "a")
        out["end_equals_key"] = c.range("b", "b")
        out["key_nul"] = c.range(b"\0")
        out["keys_only"] = c.range("a", "b", keys_only=True)
        out["count_only"] = c.range(b"\0", b"\0", count_only=True)
        out["count_only_keys_only"] = c.range(b"\0", b"\0", count_only=True, keys_only=True, limit=2)
        out["serializable"] = c.range("a", "b", serializable=True)
        return out

    r = differential(scenario)
    assert r["single"]["kvs"] == [kv(b"ab", b"4", 3, 6, 2)] and r["single"]["count"] == 1
    assert r["missing"] == {"header": {"revision": 14}, "kvs": [], "more": False, "count": 0}
    assert keys(r["interval"]) == [b"a", b"ab", b"abc"]
    assert keys(r["interval_incl"]) == [b"a", b"ab", b"abc", b"b"]
    assert keys(r["prefix"]) == [b"foo/1", b"foo/2", b"foo/3"]
    assert keys(r["prefix_a"]) == [b"a", b"ab", b"abc"]
    assert keys(r["prefix_ff"]) == [b"\xff", b"\xff\xff"]
    assert keys(r["from_key"]) == [b"b", b"foo/1", b"foo/2", b"foo/3", b"\xff", b"\xff\xff"]
    assert r["all"]["count"] == 9 and len(r["all"]["kvs"]) == 9
    assert r["end_before_key"]["kvs"] == [] and r["end_before_key"]["count"] == 0
    assert r["end_equals_key"]["kvs"] == []
    assert r["key_nul"]["kvs"] == []
    assert [k["value"] for k in r["keys_only"]["kvs"]] == [b"", b"", b""]
    assert r["keys_only"]["kvs"][0] == kv(b"a", b"", 2, 11, 3)
    assert r["count_only"]["kvs"] == [] and r["count_only"]["count"] == 9
    assert r["count_only_keys_only"]["kvs"] == [] and r["count_only_keys_only"]["count"] == 9
    assert r["serializable"] == r["interval"]


def test_range_limit_more_count(differential):
    def scenario(c: Client):
        _populate(c)
        out = {}
        for limit in (-1, 0, 1, 2, 8, 9, 10, 1 << 40):
            out[f"limit{limit}"] = c.range(b"\0", b"\0", limit=limit)
        out["limit_prefix"] = c.range("foo/", prefix_end("foo/"), limit=2)
        out["limit_count_only"] = c.range(b"\0", b"\0", limit=2, count_only=True)
        out["limit_old_rev"] = c.range(b"\0", b"\0", limit=2, revision=5)
        out["limit_sorted"] = c.range(b"\0", b"\0", limit=3, sort_order="DESCEND")
        out["limit_filtered"] = c.range(b"\0", b"\0", limit=2, min_mod_revision=9)
        return out

    r = differential(scenario)
    assert len(r["limit-1"]["kvs"]) == 9 and not r["limit-1"]["more"]
    assert len(r["limit0"]["kvs"]) == 9 and not r["limit0"]["more"]
    assert keys(r["limit1"]) == [b"a"] and r["limit1"]["more"] and r["limit1"]["count"] == 9
    assert keys(r["limit2"]) == [b"a", b"ab"] and r["limit2"]["more"]
    assert len(r["limit8"]["kvs"]) == 8 and r["limit8"]["more"]
    assert len(r["limit9"]["kvs"]) == 9 and not r["limit9"]["more"]
    assert len(r["limit10"]["kvs"]) == 9 and not r["limit10"]["more"]
    assert keys(r["limit_prefix"]) == [b"foo/1", b"foo/2"] and r["limit_prefix"]["more"]
    assert r["limit_prefix"]["count"] == 3
    assert r["limit_count_only"]["kvs"] == [] and r["limit_count_only"]["count"] == 9
    assert keys(r["limit_old_rev"]) == [b"a", b"ab"] and r["limit_old_rev"]["count"] == 4
    assert keys(r["limit_sorted"]) == [b"\xff\xff", b"\xff", b"foo/3"] and r["limit_sorted"]["more"]
    # filters apply after the range: count is the unfiltered count, more compares the filtered list
    lf = r["limit_filtered"]
    assert keys(lf) == [b"a", b"foo/2"] and lf["more"] and lf["count"] == 9


SORT_TARGETS = ["KEY", "VERSION", "CREATE", "MOD", "VALUE"]


def _tie_free(r, target):
    """The keys in order; where several keys share the sort value, the group as a sorted list.

    etcd sorts with Go's unstable sort.Sort, so the order of ties is an accident of its algorithm.
    """
    field = {"KEY": "key", "VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
             "VALUE": "value"}[target]
    out = []
    for x in r["kvs"]:
        if out and out[-1][0] == x[field]:
            out[-1][1].append(x["key"])
        else:
            out.append((x[field], [x["key"]]))
    return [ks[0] if len(ks) == 1 else sorted(ks) for _, ks in out]


def test_range_sort_every_order_and_target(differential):
    def scenario(c: Client):
        _populate(c)
        out = {}
        for order in ("NONE", "ASCEND", "DESCEND"):
            for target in SORT_TARGETS:
                with c.quiet():
                    r = c.range(b"\0", b"\0", sort_order=order, sort_target=target)
                out[(order, target)] = c.record(f"sort {order} {target}",
                                                r if isinstance(r, Err) else _tie_free(r, target))
        out["prefix_desc_mod"] = keys(c.range("foo/", prefix_end("foo/"), sort_order="DESCEND",
                                               sort_target="MOD"))
        out["keys_only_by_value"] = c.range(b"\0", b"\0", sort_target="VALUE", keys_only=True)
        return out

    r = differential(scenario)
    by_key = [b"a", b"ab", b"abc", b"b", b"foo/1", b"foo/2", b"foo/3", b"\xff", b"\xff\xff"]
    v1 = [b"abc", b"b", b"foo/1", b"foo/3", b"\xff", b"\xff\xff"]
    assert r[("NONE", "KEY")] == by_key
    assert r[("ASCEND", "KEY")] == by_key
    assert r[("DESCEND", "KEY")] == by_key[::-1]
    # NONE with a target other than KEY sorts ascending
    for t in SORT_TARGETS[1:]:
        assert r[("NONE", t)] == r[("ASCEND", t)]
    assert r[("ASCEND", "CREATE")] == [b"a", b"ab", b"abc", b"b", b"foo/1", b"foo/2", b"foo/3", b"\xff",
                                        b"\xff\xff"]
    assert r[("ASCEND", "MOD")] == [b"abc", b"b", b"ab", b"foo/1", b"foo/3", b"a", b"\xff", b"\xff\xff",
                                     b"foo/2"]
    assert r[("DESCEND", "MOD")] == r[("ASCEND", "MOD")][::-1]
    # versions: a=3, ab=2, foo/2=2, the rest 1 (ties are grouped, see _tie_free)
    assert r[("ASCEND", "VERSION")] == [v1, [b"ab", b"foo/2"], b"a"]
    assert r[("DESCEND", "VERSION")] == [b"a", [b"ab", b"foo/2"], v1]
    assert r[("ASCEND", "VALUE")] == [b"\xff\xff", b"b", b"ab", b"a", b"abc", b"\xff", b"foo/1", b"foo/3",
                                       b"foo/2"]
    assert r["prefix_desc_mod"] == [b"foo/2", b"foo/3", b"foo/1"]


def test_range_sort_ties_in_etcds_order(differential):
    """Keys with equal sort values come back in the order etcd's Go sort.Sort (unstable) leaves them.

    Clients should not depend on it, but `etcdctl get --prefix --sort-by=VERSION` prints it, so it is
    pinned here separately from the tie-free sort checks above.
    """
    def scenario(c: Client):
        _populate(c)
        return {(order, t): keys(c.range(b"\0", b"\0", sort_order=order, sort_target=t))
                for order in ("ASCEND", "DESCEND") for t in ("VERSION",)}

    r = differential(scenario)
    assert sorted(r[("ASCEND", "VERSION")]) == sorted(r[("DESCEND", "VERSION")])


def test_range_revision_filters(differential):
    def scenario(c: Client):
        _populate(c)
        out = {}
        rng = (b"\0", b"\0")
        out["min_mod"] = c.range(*rng, min_mod_revision=10)
        out["max_mod"] = c.range(*rng, max_mod_revision=6)
        out["mod_window"] = c.range(*rng, min_mod_revision=6, max_mod_revision=10)
        out["min_create"] = c.range(*rng, min_create_revision=7)
        out["max_create"] = c.range(*rng, max_create_revision=4)
        out["create_window"] = c.range(*rng, min_create_revision=3, max_create_revision=8)
        out["all_filters"] = c.range(*rng, min_mod_revision=6, max_mod_revision=14, min_create_revision=3,
                                     max_create_revision=8, sort_order="DESCEND", sort_target="VALUE")
        out["empty_window"] = c.range(*rng, min_mod_revision=10, max_mod_revision=9)
        out["at_old_rev"] = c.range(*rng, revision=9, min_mod_revision=6)
        out["negative"] = c.range(*rng, min_mod_revision=-5, max_create_revision=-1)
        out["count_only"] = c.range(*rng, min_mod_revision=10, count_only=True)
        out["keys_only"] = c.range(*rng, max_create_revision=3, keys_only=True)
        return out

    r = differential(scenario)
    assert keys(r["min_mod"]) == [b"a", b"foo/2", b"\xff", b"\xff\xff"]
    assert r["min_mod"]["count"] == 9  # count ignores the filters
    assert keys(r["max_mod"]) == [b"ab", b"abc", b"b"]
    assert keys(r["mod_window"]) == [b"ab", b"foo/1", b"foo/3"]
    assert keys(r["min_create"]) == [b"foo/1", b"foo/2", b"foo/3", b"\xff", b"\xff\xff"]
    assert keys(r["max_create"]) == [b"a", b"ab", b"abc"]
    assert keys(r["create_window"]) == [b"ab", b"abc", b"b", b"foo/1", b"foo/2"]
    assert keys(r["all_filters"]) == [b"foo/2", b"foo/1", b"ab"]
    assert r["empty_window"]["kvs"] == []
    assert keys(r["at_old_rev"]) == [b"ab", b"foo/1", b"foo/2", b"foo/3"]
    assert r["count_only"]["kvs"] == [] and r["count_only"]["count"] == 9
    assert r["keys_only"]["kvs"] == [kv(b"a", b"", 2, 11, 3), kv(b"ab", b"", 3, 6, 2)]


# --------------------------------------------------------------------------- Put / DeleteRange


def test_put_options(differential):
    def scenario(c: Client):
        out = {}
        lease = c.grant(600)["ID"]
        lease2 = c.grant(600)["ID"]
        out["lease"] = lease
        out["prev_kv_new"] = c.put("k", "v1", prev_kv=True)
        out["prev_kv"] = c.put("k", "v2", prev_kv=True)
        out["with_lease"] = c.put("k", "v3", lease=lease, prev_kv=True)
        out["ignore_value"] = c.put("k", ignore_value=True, lease=lease, prev_kv=True)
        out["get1"] = c.get("k")
        out["ignore_lease"] = c.put("k", "v4", ignore_lease=True)
        out["get2"] = c.get("k")
        out["ignore_both"] = c.put("k", ignore_value=True, ignore_lease=True, prev_kv=True)
        out["get3"] = c.get("k")
        out["ignore_value_new_lease"] = c.put("k", ignore_value=True, lease=lease2)
        out["get4"] = c.get("k")
        out["ignore_value_drops_lease"] = c.put("k", ignore_value=True)  # no ignore_lease: lease := 0
        out["get5"] = c.get("k")
        c.put("k", "v5", lease=lease)
        out["drop_lease"] = c.put("k", "v6", prev_kv=True)
        out["get6"] = c.get("k")
        out["ttl_keys"] = c.ttl(lease, keys=True)
        out["ttl_keys2"] = c.ttl(lease2, keys=True)
        # errors: no revision is taken
        out["ignore_value_missing"] = c.put("missing", ignore_value=True)
        out["ignore_lease_missing"] = c.put("missing", "v", ignore_lease=True)
        out["value_provided"] = c.put("k", "x", ignore_value=True)
        out["lease_provided"] = c.put("k", "x", lease=lease, ignore_lease=True)
        out["unknown_lease"] = c.put("k", "x", lease=0x1234)
        out["unknown_lease_prev"] = c.put("k", "x", lease=-1, prev_kv=True)
        out["empty_key"] = c.put("", "x")
        out["empty_value"] = c.put("e", "", prev_kv=True)
        out["binary"] = c.put(b"\0\xff\n", b"\0\x01\xfe", prev_kv=True)
        out["get_binary"] = c.get(b"\0\xff\n")
        out["rev"] = c.range("k")["header"]["revision"]
        return out

    r = differential(scenario)
    L = r["lease"]
    assert r["prev_kv_new"] == {"header": {"revision": 2}}  # no prev_kv for a new key
    assert r["prev_kv"]["prev_kv"] == kv(b"k", b"v1", 2, 2, 1)
    assert r["with_lease"]["prev_kv"] == kv(b"k", b"v2", 2, 3, 2)
    assert r["ignore_value"]["prev_kv"] == kv(b"k", b"v3", 2, 4, 3, L)
    assert r["get1"] == [kv(b"k", b"v3", 2, 5, 4, L)]
    assert r["get2"] == [kv(b"k", b"v4", 2, 6, 5, L)]
    assert r["get3"] == [kv(b"k", b"v4", 2, 7, 6, L)]
    assert r["get4"] == [kv(b"k", b"v4", 2, 8, 7, r["ttl_keys2"]["ID"])]
    assert r["get5"] == [kv(b"k", b"v4", 2, 9, 8)]
    assert r["drop_lease"]["prev_kv"] == kv(b"k", b"v5", 2, 10, 9, L)
    assert r["get6"] == [kv(b"k", b"v6", 2, 11, 10)]
    assert r["ttl_keys"]["keys"] == [] and r["ttl_keys2"]["keys"] == []
    assert r["ignore_value_missing"] == E_KEY_NOT_FOUND
    assert r["ignore_lease_missing"] == E_KEY_NOT_FOUND
    assert r["value_provided"] == E_VALUE_PROVIDED
    assert r["lease_provided"] == E_LEASE_PROVIDED
    assert r["unknown_lease"] == E_LEASE_NOT_FOUND and r["unknown_lease_prev"] == E_LEASE_NOT_FOUND
    assert r["empty_key"] == E_EMPTY_KEY
    assert r["empty_value"] == {"header": {"revision": 12}}
    assert r["binary"] == {"header": {"revision": 13}}
    assert r["get_binary"] == [kv(b"\0\xff\n", b"\0\x01\xfe", 13, 13, 1)]
    assert r["rev"] == 13


def test_delete_range(differential):
    def scenario(c: Client):
        with c.quiet():
            for k in ["a", "b", "c", "d", "e", "foo/1", "foo/2", "zz"]:
                c.put(k, k.upper())
        out = {}
        out["start"] = c.rev()
        out["nothing"] = c.delete("nope", prev_kv=True)
        out["nothing_range"] = c.delete("x", "y")
        out["end_before_key"] = c.delete("d", "a")
        out["rev_unchanged"] = c.rev()
        out["single"] = c.delete("a", prev_kv=True)
        out["single_again"] = c.delete("a")
        out["range"] = c.delete("b", "d", prev_kv=True)
        out["prefix"] = c.delete("foo/", prefix_end("foo/"))
        out["at_old"] = c.range(b"\0", b"\0", revision=out["start"])
        out["history"] = c.range("foo/1", revision=out["start"] + 2)
        c.put("a", "again")
        out["recreated"] = c.get("a")
        out["from_key"] = c.delete("e", b"\0", prev_kv=True)
        out["left"] = c.range(b"\0", b"\0")
        out["all"] = c.delete(b"\0", b"\0")
        out["empty_key"] = c.delete("")
        out["empty"] = c.range(b"\0", b"\0")
        return out

    r = differential(scenario)
    assert r["start"] == 9
    assert r["nothing"] == {"header": {"revision": 9}, "deleted": 0, "prev_kvs": []}
    assert r["nothing_range"]["deleted"] == 0 and r["end_before_key"]["deleted"] == 0
    assert r["rev_unchanged"] == 9
    assert r["single"] == {"header": {"revision": 10}, "deleted": 1, "prev_kvs": [kv(b"a", b"A", 2, 2, 1)]}
    assert r["single_again"] == {"header": {"revision": 10}, "deleted": 0, "prev_kvs": []}
    assert r["range"] == {"header": {"revision": 11}, "deleted": 2,
                          "prev_kvs": [kv(b"b", b"B", 3, 3, 1), kv(b"c", b"C", 4, 4, 1)]}
    assert r["prefix"] == {"header": {"revision": 12}, "deleted": 2, "prev_kvs": []}
    assert len(r["at_old"]["kvs"]) == 8
    assert r["history"]["kvs"] == [kv(b"foo/1", b"FOO/1", 7, 7, 1)]
    assert r["recreated"] == [kv(b"a", b"again", 13, 13, 1)]
    assert r["from_key"]["deleted"] == 2 and [p["key"] for p in r["from_key"]["prev_kvs"]] == [b"e", b"zz"]
    assert keys(r["left"]) == [b"a", b"d"]
    assert r["all"] == {"header": {"revision": 15}, "deleted": 2, "prev_kvs": []}
    assert r["empty_key"] == E_EMPTY_KEY
    assert r["empty"]["kvs"] == [] and r["empty"]["header"]["revision"] == 15


# --------------------------------------------------------------------------- Txn


CMP_TARGETS = {"VERSION": 2, "CREATE": 2, "MOD": 3, "VALUE": "v2"}


def test_txn_compares(differential):
    def scenario(c: Client):
        with c.quiet():
            c.put("k", "v1")  # 2
            c.put("k", "v2")  # 3   k: create 2, mod 3, version 2, value v2
            c.put("r1", "a")  # 4
            c.put("r2", "b")  # 5
        lease = c.grant(600)["ID"]
        c.put("leased", "x", lease=lease)  # 6
        out = {}
        for target, actual in CMP_TARGETS.items():
            if target == "VALUE":
                values = {"lo": "v1", "eq": "v2", "hi": "v3"}
            else:
                values = {"lo": actual - 1, "eq": actual, "hi": actual + 1}
            for result in ("EQUAL", "NOT_EQUAL", "LESS", "GREATER"):
                for name, v in values.items():
                    t = c.txn([compare("k", target, result, v)])
                    out[(target, result, name)] = t if isinstance(t, Err) else t["succeeded"]
        for result in ("EQUAL", "NOT_EQUAL", "LESS", "GREATER"):
            for name, v in (("zero", 0), ("lease", lease), ("other", 5)):
                out[("LEASE", result, name)] = c.txn([compare("leased", "LEASE", result, v)])["succeeded"]
            out[("LEASE-unleased", result)] = c.txn([compare("k", "LEASE", result, 0)])["succeeded"]
        # a missing key has version/create/mod/lease 0; any VALUE compare on it fails
        for target in ("VERSION", "CREATE", "MOD", "LEASE"):
            out[("missing", target)] = c.txn([compare("nope", target, "EQUAL", 0)])["succeeded"]
        for result in ("EQUAL", "NOT_EQUAL", "LESS", "GREATER"):
            out[("missing", "VALUE", result)] = c.txn([compare("nope", "VALUE", result, "")])["succeeded"]
        # compares over a range: every key in it must satisfy the compare
        out["range_all_version_1"] = c.txn([compare("r", "VERSION", "EQUAL", 1, prefix_end("r"))])["succeeded"]
        out["range_mod_gt_4"] = c.txn([compare("r", "MOD", "GREATER", 4, prefix_end("r"))])["succeeded"]
        out["range_mod_gt_3"] = c.txn([compare("r", "MOD", "GREATER", 3, prefix_end("r"))])["succeeded"]
        out["range_value_ne"] = c.txn([compare("r", "VALUE", "NOT_EQUAL", "c", prefix_end("r"))])["succeeded"]
        out["range_empty"] = c.txn([compare("x", "VERSION", "EQUAL", 5, "y")])["succeeded"]
        out["range_from_key"] = c.txn([compare("r", "CREATE", "GREATER", 1, b"\0")])["succeeded"]
        out["range_value_empty"] = c.txn([compare("x", "VALUE", "EQUAL", "", "y")])["succeeded"]
        # several compares: all must hold
        out["multi_true"] = c.txn([compare("k", "VERSION", "EQUAL", 2), compare("r1", "VALUE", "EQUAL", "a")])
        out["multi_false"] = c.txn([compare("k", "VERSION", "EQUAL", 2), compare("r1", "VALUE", "EQUAL", "b")])
        out["empty_compare_key"] = c.txn([compare("", "VERSION", "EQUAL", 0)])
        out["rev"] = c.rev()
        return out

    r = differential(scenario)
    for target in CMP_TARGETS:
        assert [r[(target, "EQUAL", n)] for n in ("lo", "eq", "hi")] == [False, True, False], target
        assert [r[(target, "NOT_EQUAL", n)] for n in ("lo", "eq", "hi")] == [True, False, True], target
        assert [r[(target, "LESS", n)] for n in ("lo", "eq", "hi")] == [False, False, True], target
        assert [r[(target, "GREATER", n)] for n in ("lo", "eq", "hi")] == [True, False, False], target
    assert [r[("LEASE", "EQUAL", n)] for n in ("zero", "lease", "other")] == [False, True, False]
    assert r[("LEASE-unleased", "EQUAL")] is True and r[("LEASE-unleased", "NOT_EQUAL")] is False
    assert all(r[("missing", t)] for t in ("VERSION", "CREATE", "MOD", "LEASE"))
    assert not any(r[("missing", "VALUE", res)] for res in ("EQUAL", "NOT_EQUAL", "LESS", "GREATER"))
    assert r["range_all_version_1"] is True
    assert r["range_mod_gt_4"] is False and r["range_mod_gt_3"] is True
    assert r["range_value_ne"] is True
    assert r["range_empty"] is False  # no key in the range: compared as version 0
    assert r["range_from_key"] is True
    assert r["range_value_empty"] is False
    assert r["multi_true"]["succeeded"] is True and r["multi_false"]["succeeded"] is False
    assert r["multi_true"]["responses"] == [] and r["multi_true"]["header"]["revision"] == 6
    assert r["empty_compare_key"] == E_EMPTY_KEY
    assert r["rev"] == 6  # compares never take a revision


def test_txn_branches_and_request_kinds(differential):
    def scenario(c: Client):
        with c.quiet():
            c.put("a", "1")  # 2
            c.put("b", "1")  # 3
            c.put("c", "1")  # 4
        out = {}
        ops = [range_req("a", "c"), put_req("p", "new", prev_kv=True), delete_req("b", prev_kv=True),
               txn_req([compare("a", "VALUE", "EQUAL", "1")], [range_req("a")], [range_req("c")])]
        out["success"] = c.txn([compare("a", "VERSION", "EQUAL", 1)], ops, [put_req("never", "x")])
        out["after_success"] = c.range(b"\0", b"\0")
        ops2 = [range_req("p"), put_req("q", "2"), delete_req("c", "d"),
                txn_req([compare("q", "VERSION", "GREATER", 0)], [put_req("in", "then")], [put_req("in", "else")])]
        out["failure"] = c.txn([compare("a", "VERSION", "EQUAL", 5)], [put_req("never", "x")], ops2)
        out["after_failure"] = c.range(b"\0", b"\0")
        # the txn sees its own writes, in order; all writes share one revision
        out["read_own_writes"] = c.txn([], [put_req("w1", "1"), range_req("w1"), put_req("w2", "2"),
                                            delete_req("a"), range_req("w", "x"), range_req("a")])
        out["one_revision"] = c.range("w", "x")
        out["read_only_txn"] = c.txn([], [range_req("a"), range_req("zz")])
        out["empty_txn"] = c.txn()
        out["empty_failure"] = c.txn([compare("a", "VERSION", "EQUAL", 9)])
        out["only_deletes_nothing"] = c.txn([], [delete_req("nope"), delete_req("nope2", "nope3")])
        out["rev_after_noop_delete"] = c.rev()
        out["delete_then_put_other"] = c.txn([], [delete_req("w1"), put_req("a2", "x")])
        out["nested_deep"] = c.txn([], [txn_req([], [txn_req([], [txn_req([], [put_req("deep", "1"),
                                                                                range_req("deep")])])])])
        out["deep"] = c.get("deep")
        out["empty_op"] = c.call("KV.Txn", pb.TxnRequest(success=[pb.RequestOp()]))
        out["nested_empty_op"] = c.call("KV.Txn", pb.TxnRequest(success=[
            pb.RequestOp(request_txn=pb.TxnRequest(failure=[pb.RequestOp()]))]))
        out["empty_key_put"] = c.txn([], [put_req("", "x")])
        out["empty_key_range"] = c.txn([], [range_req("")])
        out["empty_key_delete_failure_branch"] = c.txn([], [], [delete_req("")])
        out["ignore_value_missing"] = c.txn([], [put_req("zzz", ignore_value=True)])
        out["unknown_lease"] = c.txn([], [put_req("zzz", "1"), put_req("yyy", "1", lease=77)])
        out["unknown_lease_other_branch"] = c.txn([compare("a2", "VERSION", "EQUAL", 1)], [put_req("ok", "1")],
                                                  [put_req("yyy", "1", lease=77)])
        out["value_provided_nested"] = c.txn([], [txn_req([], [put_req("v", "x", ignore_value=True)])])
        out["final"] = c.range(b"\0", b"\0")
        return out

    r = differential(scenario)
    s = r["success"]
    assert s["succeeded"] is True and s["header"]["revision"] == 5
    resp = s["responses"]
    assert [list(x) for x in resp] == [["response_range"], ["response_put"], ["response_delete_range"],
                                        ["response_txn"]]
    assert [k["key"] for k in resp[0]["response_range"]["kvs"]] == [b"a", b"b"]
    assert resp[1]["response_put"] == {"header": {"revision": 5}}
    assert resp[2]["response_delete_range"]["prev_kvs"] == [kv(b"b", b"1", 3, 3, 1)]
    inner = resp[3]["response_txn"]
    assert inner["succeeded"] is True and inner["responses"][0]["response_range"]["kvs"][0]["key"] == b"a"
    assert keys(r["after_success"]) == [b"a", b"c", b"p"]
    assert r["after_success"]["kvs"][2] == kv(b"p", b"new", 5, 5, 1)
    f = r["failure"]
    assert f["succeeded"] is False and f["header"]["revision"] == 6
    assert f["responses"][0]["response_range"]["kvs"] == [kv(b"p", b"new", 5, 5, 1)]
    assert f["responses"][2]["response_delete_range"]["deleted"] == 1
    # nested compares are all evaluated against the state before the txn, not its own writes
    assert f["responses"][3]["response_txn"]["succeeded"] is False
    assert keys(r["after_failure"]) == [b"a", b"in", b"p", b"q"]
    assert r["after_failure"]["kvs"][1] == kv(b"in", b"else", 6, 6, 1)
    row = r["read_own_writes"]
    assert row["header"]["revision"] == 7
    assert row["responses"][1]["response_range"]["kvs"] == [kv(b"w1", b"1", 7, 7, 1)]
    assert keys(row["responses"][4]["response_range"]) == [b"w1", b"w2"]
    assert row["responses"][5]["response_range"]["kvs"] == []
    assert r["one_revision"]["kvs"] == [kv(b"w1", b"1", 7, 7, 1), kv(b"w2", b"2", 7, 7, 1)]
    assert r["read_only_txn"]["header"]["revision"] == 7
    assert r["empty_txn"] == {"header": {"revision": 7}, "succeeded": True, "responses": []}
    assert r["empty_failure"] == {"header": {"revision": 7}, "succeeded": False, "responses": []}
    assert r["rev_after_noop_delete"] == 7
    assert r["delete_then_put_other"]["header"]["revision"] == 8
    assert r["deep"] == [kv(b"deep", b"1", 9, 9, 1)]
    assert r["empty_op"] == E_KEY_NOT_FOUND and r["nested_empty_op"] == E_KEY_NOT_FOUND
    assert r["empty_key_put"] == E_EMPTY_KEY and r["empty_key_range"] == E_EMPTY_KEY
    assert r["empty_key_delete_failure_branch"] == E_EMPTY_KEY
    assert r["ignore_value_missing"] == E_KEY_NOT_FOUND
    assert r["unknown_lease"] == E_LEASE_NOT_FOUND
    assert r["value_provided_nested"] == E_VALUE_PROVIDED
    assert r["final"]["header"]["revision"] == r["unknown_lease_other_branch"]["header"]["revision"]


def test_txn_duplicate_keys(differential):
    P, D, T = put_req, delete_req, txn_req

    cases = {
        "put_put": [P("a", "1"), P("a", "2")],
        "put_delete": [P("a", "1"), D("a")],
        "delete_put": [D("a"), P("a", "1")],
        "range_delete_put": [D("a", "c"), P("b", "1")],
        "prefix_delete_put": [D("f", prefix_end("f")), P("foo", "1")],
        "from_key_delete_put": [D("a", b"\0"), P("zzz", "1")],
        "delete_delete": [D("a"), D("a")],
        "overlapping_deletes": [D("a", "c"), D("b", "d")],
        "put_outside_delete_range": [D("a", "c"), P("c", "1")],
        "range_and_put": [range_req("a"), P("a", "1")],
        "nested_put_put": [P("a", "1"), T([], [P("a", "2")])],
        "nested_then_else_same_key": [T([], [P("a", "1")], [P("a", "2")])],
        "nested_then_else_and_outer": [P("a", "0"), T([], [P("a", "1")], [P("b", "2")])],
        "nested_two_txns_same_key": [T([], [P("a", "1")]), T([], [P("a", "2")])],
        "nested_two_txns_else": [T([], [], [P("a", "1")]), T([], [], [P("a", "2")])],
        "outer_delete_nested_put": [D("a"), T([], [P("a", "1")])],
        "nested_delete_outer_put": [P("a", "1"), T([], [D("a")])],
        "nested_delete_nested_put": [T([], [D("a")]), T([], [P("a", "1")])],
        "nested_deep_dup": [T([], [T([], [P("x", "1")])]), P("x", "2")],
        "different_keys": [P("a", "1"), P("b", "1"), D("c"), T([], [P("d", "1")], [P("d", "2")])],
    }

    def scenario(c: Client):
        out = {}
        for name, ops in cases.items():
            out[name] = c.txn([], ops)
            out[name + "/failure_branch"] = c.txn([compare("never", "VERSION", "EQUAL", 1)], [], ops)
        return out

    r = differential(scenario)
    dup = {"put_put", "put_delete", "delete_put", "range_delete_put", "prefix_delete_put",
           "nested_then_else_and_outer", "nested_delete_nested_put", "nested_put_put", "nested_two_txns_same_key", "nested_two_txns_else", "outer_delete_nested_put",
           "nested_delete_outer_put", "nested_deep_dup"}
    for name in cases:
        for key in (name, name + "/failure_branch"):
            if name in dup:
                assert r[key] == E_DUPLICATE_KEY, key
            else:
                assert not isinstance(r[key], Err), (key, r[key])


def test_txn_too_many_ops_default_128(differential):
    def scenario(c: Client):
        out = {}
        out["128_puts"] = c.txn([], [put_req(f"k{i:03}", "v") for i in range(128)])
        out["129_puts"] = c.txn([], [put_req(f"x{i:03}", "v") for i in range(129)])
        out["129_compares"] = c.txn([compare("k000", "VERSION", "EQUAL", 1)] * 129)
        out["128_compares"] = c.txn([compare("k000", "VERSION", "EQUAL", 1)] * 128)
        out["129_failure_ops"] = c.txn([], [], [range_req("a")] * 129)
        out["128_each"] = c.txn([compare("k000", "VERSION", "EQUAL", 1)] * 128, [range_req("a")] * 128,
                                [range_req("b")] * 128)
        # a nested txn may only use what its parent left: 128 - max(len) of the outer
        out["nested_over"] = c.txn([], [txn_req([], [range_req("a")] * 2)] * 127)
        out["nested_fits"] = c.txn([], [txn_req([], [range_req("a")])] * 64)
        out["nested_2x64"] = c.txn([], [txn_req([], [range_req("a")] * 65)] * 64)
        out["rev"] = c.rev()
        out["count"] = c.range("k", "l", count_only=True)["count"]
        return out

    r = differential(scenario)
    assert r["128_puts"]["header"]["revision"] == 2 and len(r["128_puts"]["responses"]) == 128
    assert r["129_puts"] == E_TOO_MANY_OPS
    assert r["129_compares"] == E_TOO_MANY_OPS
    assert r["128_compares"]["succeeded"] is True
    assert r["129_failure_ops"] == E_TOO_MANY_OPS
    assert r["128_each"]["succeeded"] is True
    assert r["nested_2x64"] == E_TOO_MANY_OPS
    assert r["rev"] == 2 and r["count"] == 128


def test_txn_max_txn_ops_flag(differential):
    def scenario(c: Client):
        out = {}
        out["4_puts"] = c.txn([], [put_req(f"k{i}", "v") for i in range(4)])
        out["5_puts"] = c.txn([], [put_req(f"x{i}", "v") for i in range(5)])
        out["5_compares"] = c.txn([compare("k0", "VERSION", "EQUAL", 1)] * 5)
        out["5_failure"] = c.txn([], [], [range_req("a")] * 5)
        out["nested_ok"] = c.txn([], [txn_req([], [range_req("a")] * 2)] * 2)
        out["nested_over"] = c.txn([], [txn_req([], [range_req("a")] * 3)] * 2)
        out["nested_deeper_over"] = c.txn([], [txn_req([], [txn_req([], [range_req("a")] * 2)])] * 2)
        out["rev"] = c.rev()
        return out

    r = differential(scenario, args=["--max-txn-ops", "4"])
    assert r["4_puts"]["header"]["revision"] == 2
    assert r["5_puts"] == E_TOO_MANY_OPS and r["5_compares"] == E_TOO_MANY_OPS and r["5_failure"] == E_TOO_MANY_OPS
    assert r["nested_ok"]["succeeded"] is True
    assert r["nested_over"] == E_TOO_MANY_OPS
    assert r["rev"] == 2
