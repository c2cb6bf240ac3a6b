"""Sorting by a non-key target leaves ties where etcd 3.5's Go 1.16 sort.Sort leaves them.

Small ranges (<= 12 keys) take Go's shell-sort pass; larger ones its quicksort
with ninther pivots and duplicate protection.  Both paths are compared with
real etcd, in both orders, over values with many ties.
"""

from __future__ import annotations

import random

import pytest

from etcdlite.core.gosort import go_sort

pytestmark = pytest.mark.timeout(120)

TARGETS = ("VERSION", "CREATE", "MOD", "VALUE")


def _scenario(n_keys: int, seed: int):
    rng = random.Random(seed)
    keys = [f"k{i:03d}" for i in range(n_keys)]
    writes = [(k, rng.choice("abc")) for k in keys]
    writes += [(rng.choice(keys), rng.choice("abc")) for _ in range(n_keys)]

    def scenario(c):
        with c.quiet():
            for k, v in writes:
                c.put(k, v)
        return {(order, target): [kv["key"] for kv in c.range(b"k", b"l", sort_order=order,
                                                               sort_target=target)["kvs"]]
                for order in ("ASCEND", "DESCEND") for target in TARGETS}

    return scenario


@pytest.mark.parametrize("n_keys", [9, 60, 300])
def test_sort_ties_match_etcd(differential, n_keys):
    result = differential(_scenario(n_keys, seed=n_keys))
    assert len(result[("ASCEND", "VERSION")]) == n_keys


def test_go_sort_sorts():
    rng = random.Random(7)
    for n in (0, 1, 5, 13, 41, 500):
        values = [rng.randint(0, 5) for _ in range(n)]
        perm = go_sort(values)
        assert sorted(perm) == list(range(n))
        assert [values[i] for i in perm] == sorted(values)
        down = [values[i] for i in go_sort(values, reverse=True)]
        assert down == sorted(values, reverse=True)
