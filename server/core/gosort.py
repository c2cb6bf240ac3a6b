"""Go 1.16's sort.Sort, ported: the order etcd 3.5 (built with go1.16) leaves equal elements in.

Go's sort is not stable, and ``etcdctl get --sort-by=VERSION`` prints whatever
order it leaves ties in, so a drop-in etcd has to reproduce the algorithm, not
just the sort keys.  ``go_sort(values, reverse)`` returns the permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class _Data:
    __slots__ = ("keys", "perm", "reverse")

    def __init__(self, keys: Sequence[Any], reverse: bool) -> None:
        self.keys = keys
        self.perm = list(range(len(keys)))
        self.reverse = reverse  # sort.Reverse: Less(i, j) is the underlying Less(j, i)

    def less(self, i: int, j: int) -> bool:
        k, p = self.keys, self.perm
        if self.reverse:
            return bool(k[p[j]] < k[p[i]])
        return bool(k[p[i]] < k[p[j]])

    def swap(self, i: int, j: int) -> None:
        p = self.perm
        p[i], p[j] = p[j], p[i]


def _insertion_sort(d: _Data, a: int, b: int) -> None:
    for i in range(a + 1, b):
        j = i
        while j > a and d.less(j, j - 1):
            d.swap(j, j - 1)
            j -= 1


def _sift_down(d: _Data, lo: int, hi: int, first: int) -> None:
    root = lo
    while True:
        child = 2 * root + 1
        if child >= hi:
            return
        if child + 1 < hi and d.less(first + child, first + child + 1):
            child += 1
        if not d.less(first + root, first + child):
            return
        d.swap(first + root, first + child)
        root = child


def _heap_sort(d: _Data, a: int, b: int) -> None:
    first, lo, hi = a, 0, b - a
    for i in range((hi - 1) // 2, -1, -1):
        _sift_down(d, i, hi, first)
    for i in range(hi - 1, -1, -1):
        d.swap(first, first + i)
        _sift_down(d, lo, i, first)


def _median_of_three(d: _Data, m1: int, m0: int, m2: int) -> None:
    if d.less(m1, m0):
        d.swap(m1, m0)
    if d.less(m2, m1):
        d.swap(m2, m1)
        if d.less(m1, m0):
            d.swap(m1, m0)


def _do_pivot(d: _Data, lo: int, hi: int) -> tuple[int, int]:
    m = (lo + hi) >> 1
    if hi - lo > 40:
        s = (hi - lo) // 8
        _median_of_three(d, lo, lo + s, lo + 2 * s)
        _median_of_three(d, m, m - s, m + s)
        _median_of_three(d, hi - 1, hi - 1 - s, hi - 1 - 2 * s)
    _median_of_three(d, lo, m, hi - 1)
    pivot = lo
    a, c = lo + 1, hi - 1
    while a < c and d.less(a, pivot):
        a += 1
    b = a
    while True:
        while b < c and not d.less(pivot, b):
            b += 1
        while b < c and d.less(pivot, c - 1):
            c -= 1
        if b >= c:
            break
        d.swap(b, c - 1)
        b += 1
        c -= 1
    protect = hi - c < 5
    if not protect and hi - c < (hi - lo) // 4:
        dups = 0
        if not d.less(pivot, hi - 1):
            d.swap(c, hi - 1)
            c += 1
            dups += 1
        if not d.less(b - 1, pivot):
            b -= 1
            dups += 1
        if not d.less(m, pivot):
            d.swap(m, b - 1)
            b -= 1
            dups += 1
        protect = dups > 1
    if protect:
        while True:
            while a < b and not d.less(b - 1, pivot):
                b -= 1
            while a < b and d.less(a, pivot):
                a += 1
            if a >= b:
                break
            d.swap(a, b - 1)
            a += 1
            b -= 1
    d.swap(pivot, b - 1)
    return b - 1, c


def _quick_sort(d: _Data, a: int, b: int, max_depth: int) -> None:
    while b - a > 12:
        if max_depth == 0:
            _heap_sort(d, a, b)
            return
        max_depth -= 1
        mlo, mhi = _do_pivot(d, a, b)
        if mlo - a < b - mhi:
            _quick_sort(d, a, mlo, max_depth)
            a = mhi
        else:
            _quick_sort(d, mhi, b, max_depth)
            b = mlo
    if b - a > 1:
        for i in range(a + 6, b):  # one ShellSort pass with gap 6
            if d.less(i, i - 6):
                d.swap(i, i - 6)
        _insertion_sort(d, a, b)


def go_sort(keys: Sequence[Any], reverse: bool = False) -> list[int]:
    """The permutation Go 1.16's ``sort.Sort`` (or ``sort.Sort(sort.Reverse(...))``) produces."""
    n = len(keys)
    d = _Data(keys, reverse)
    depth = 0
    i = n
    while i > 0:
        depth += 1
        i >>= 1
    _quick_sort(d, 0, n, depth * 2)
    return d.perm
