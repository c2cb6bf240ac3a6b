"""etcd's KV semantics over the MVCC store (etcd's etcdserver/apply.go and v3rpc/key.go checks).

Requests and responses are etcd's protobuf messages.  The write methods run
inside a backend write txn (``Backend.write``), which makes them durable before
the caller answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import errors
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..pb.mvccpb import kv_pb2
from ..storage.backend import Backend, KeyValue, WriteTxn
from .gosort import go_sort
from .lease import Lessor

RangeRequest = pb.RangeRequest
Compare = pb.Compare

DEFAULT_MAX_TXN_OPS = 128


def to_pb(kv: KeyValue, keys_only: bool = False) -> kv_pb2.KeyValue:
    m = kv_pb2.KeyValue()
    set_kv(m, kv, keys_only)
    return m


def set_kv(m: kv_pb2.KeyValue, kv: KeyValue, keys_only: bool = False) -> None:
    """Fill an (empty) mvccpb.KeyValue in place: a field at a time is several times cheaper with
    upb than building a message from keyword arguments and copying it into its parent."""
    m.key = kv.key
    m.create_revision = kv.create_revision
    m.mod_revision = kv.mod_revision
    m.version = kv.version
    if not keys_only:
        m.value = kv.value
    if kv.lease:
        m.lease = kv.lease


def add_kvs(repeated: Any, kvs: Iterable[KeyValue], keys_only: bool = False) -> None:
    """Append ``kvs`` to a repeated mvccpb.KeyValue field, built in place."""
    add = repeated.add
    for kv in kvs:
        set_kv(add(), kv, keys_only)


_SORT_KEYS: dict[int, Callable[[KeyValue], object]] = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


# -- request checks (etcd's v3rpc/key.go) ----------------------------------------------------
def check_range(r: pb.RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_put(r: pb.PutRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.ignore_value and r.value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease:
        raise errors.LEASE_PROVIDED


def check_delete(r: pb.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_txn(r: pb.TxnRequest, max_txn_ops: int) -> None:
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for c in r.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for op in (*r.success, *r.failure):
        _check_op(op, max_txn_ops - opc)
    _check_intervals(r.success)
    _check_intervals(r.failure)


def is_read_only(r: pb.TxnRequest) -> bool:
    """etcd's isTxnReadonly: only Range ops, in both branches (a nested txn counts as a write)."""
    return all(op.WhichOneof("request") == "request_range" for op in (*r.success, *r.failure))


def _check_op(op: pb.RequestOp, max_txn_ops: int) -> None:
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range(op.request_range)
    elif which == "request_put":
        check_put(op.request_put)
    elif which == "request_delete_range":
        check_delete(op.request_delete_range)
    elif which == "request_txn":
        check_txn(op.request_txn, max_txn_ops)
    else:  # an empty RequestOp: etcd answers "key not found"
        raise errors.KEY_NOT_FOUND


class _Deletes:
    """The delete ranges of one txn level (etcd's interval tree, as a list)."""

    def __init__(self) -> None:
        self.ranges: list[tuple[bytes, bytes | None]] = []  # (start, end or None for one key)

    def add(self, key: bytes, end: bytes) -> None:
        # etcd's interval tree takes range_end literally here: "\0" (from key) covers nothing
        if end:
            self.ranges.append((key, end))
        else:
            self.ranges.append((key, None))

    def covers(self, key: bytes) -> bool:
        for start, end in self.ranges:
            if end is None:
                if key == start:
                    return True
            elif start <= key < end:
                return True
        return False


def _check_intervals(reqs: Iterable[pb.RequestOp]) -> tuple[set[bytes], _Deletes]:
    """etcd's checkIntervals: no key is put twice, or put and deleted, in one txn."""
    reqs = list(reqs)
    dels = _Deletes()
    for op in reqs:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.add(d.key, d.range_end)
    puts: set[bytes] = set()
    for op in reqs:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or dels.covers(k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.covers(k):
                raise errors.DUPLICATE_KEY
            puts.add(k)
        dels.ranges.extend(dels_then.ranges)
        dels.ranges.extend(dels_else.ranges)
    for op in reqs:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or dels.covers(k):
            raise errors.DUPLICATE_KEY
        puts.add(k)
    return puts, dels


# -- the applier --------------------------------------------------------------------------------
class KVApplier:
    def __init__(self, backend: Backend, lessor: Lessor) -> None:
        self.backend = backend
        self.lessor = lessor

    # Range ------------------------------------------------------------------------------------
    def range(self, r: pb.RangeRequest, txn: WriteTxn | None = None,
              resp: pb.RangeResponse | None = None) -> pb.RangeResponse:
        """The answer to ``r``, built into ``resp`` when given (a txn's sub-response)."""
        limit = r.limit
        if r.sort_order or r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision:
            limit = 0  # fetch everything; filter, sort and truncate afterwards
        elif limit > 0:
            limit += 1  # one extra for `more`
        if txn is None:
            rr = self.backend.range(r.key, r.range_end, r.revision, limit, count_only=r.count_only)
        else:
            rr = txn.range(r.key, r.range_end, r.revision, limit, count_only=r.count_only)
        kvs = rr.kvs
        if r.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
        if r.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
        if r.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
        if r.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
        sort_order = r.sort_order
        if r.sort_target != RangeRequest.KEY and sort_order == RangeRequest.NONE:
            sort_order = RangeRequest.ASCEND
        if sort_order != RangeRequest.NONE and not (sort_order == RangeRequest.ASCEND
                                                    and r.sort_target == RangeRequest.KEY):
            # already in key order otherwise; ties must land where etcd's Go sort puts them
            key = _SORT_KEYS.get(r.sort_target, _SORT_KEYS[RangeRequest.KEY])
            perm = go_sort([key(kv) for kv in kvs], reverse=sort_order == RangeRequest.DESCEND)
            kvs = [kvs[i] for i in perm]
        more = False
        if r.limit > 0 and len(kvs) > r.limit:
            kvs = kvs[: r.limit]
            more = True
        if resp is None:
            resp = pb.RangeResponse()
        if rr.count:
            resp.count = rr.count
        if more:
            resp.more = True
        resp.header.revision = rr.revision
        if kvs:
            add_kvs(resp.kvs, kvs, r.keys_only)
        return resp

    # Put ----------------------------------------------------------------------------------------
    def put(self, txn: WriteTxn, r: pb.PutRequest) -> pb.PutResponse:
        if r.lease and not self.lessor.exists(r.lease):
            raise errors.LEASE_NOT_FOUND
        return self._put(txn, r)

    def _put(self, txn: WriteTxn, r: pb.PutRequest, resp: pb.PutResponse | None = None) -> pb.PutResponse:
        value, lease = r.value, r.lease
        prev = txn.get(r.key) if (r.ignore_value or r.ignore_lease or r.prev_kv) else None
        if (r.ignore_value or r.ignore_lease) and prev is None:
            raise errors.KEY_NOT_FOUND
        if r.ignore_value:
            value = prev.value  # type: ignore[union-attr]
        if r.ignore_lease:
            lease = prev.lease  # type: ignore[union-attr]
        if resp is None:
            resp = pb.PutResponse()
        if r.prev_kv and prev is not None:
            set_kv(resp.prev_kv, prev)
        txn.put(r.key, value, lease)
        resp.header.revision = txn.revision
        return resp

    # DeleteRange ------------------------------------------------------------------------------
    def delete_range(self, txn: WriteTxn, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        return self._delete_range(txn, r)

    def _delete_range(self, txn: WriteTxn, r: pb.DeleteRangeRequest,
                      resp: pb.DeleteRangeResponse | None = None) -> pb.DeleteRangeResponse:
        deleted = txn.delete_range(r.key, r.range_end)
        if resp is None:
            resp = pb.DeleteRangeResponse()
        if deleted:
            resp.deleted = len(deleted)
        if r.prev_kv:
            add_kvs(resp.prev_kvs, deleted)
        resp.header.revision = txn.read_revision
        return resp

    # Txn ----------------------------------------------------------------------------------------
    def txn(self, txn: WriteTxn, r: pb.TxnRequest) -> pb.TxnResponse:
        head = txn.base_revision
        path = self._compare_path(txn, r, head)
        self._check_requests(txn, r, path, head)
        resp = pb.TxnResponse()
        self._apply_txn(txn, r, iter(path), resp)
        resp.header.revision = txn.read_revision
        return resp

    def _compare_path(self, txn: WriteTxn, r: pb.TxnRequest, head: int) -> list[bool]:
        """Which branch each (nested) txn takes, decided up front as etcd does."""
        ok = all(self._compare(txn, c, head) for c in r.compare)
        path = [ok]
        for op in r.success if ok else r.failure:
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._compare_path(txn, op.request_txn, head))
        return path

    def _compare(self, txn: WriteTxn, c: pb.Compare, head: int) -> bool:
        kvs = txn.range(c.key, c.range_end, head).kvs
        target = c.target
        if not kvs:
            if target == Compare.VALUE:
                return False  # a missing key has no value to compare
            return _compare_kv(c, None)
        return all(_compare_kv(c, kv) for kv in kvs)

    def _check_requests(self, txn: WriteTxn, r: pb.TxnRequest, path: list[bool], head: int) -> None:
        it = iter(path)

        def walk(t: pb.TxnRequest) -> None:
            for op in t.success if next(it) else t.failure:
                which = op.WhichOneof("request")
                if which == "request_txn":
                    walk(op.request_txn)
                elif which == "request_put":
                    p = op.request_put
                    if (p.ignore_value or p.ignore_lease) and txn.get(p.key) is None:
                        raise errors.KEY_NOT_FOUND
                    if p.lease and not self.lessor.exists(p.lease):
                        raise errors.LEASE_NOT_FOUND
                elif which == "request_range":
                    rev = op.request_range.revision
                    if rev > head:
                        raise errors.FUTURE_REV
                    if 0 < rev < self.backend.compact_revision:
                        raise errors.COMPACTED

        walk(r)

    def _apply_txn(self, txn: WriteTxn, r: pb.TxnRequest, path: Iterator[bool], resp: pb.TxnResponse) -> None:
        succeeded = next(path)
        resp.succeeded = succeeded
        for op in r.success if succeeded else r.failure:
            which = op.WhichOneof("request")
            out = resp.responses.add()
            # each answer is built in place (SetInParent: present even where every field is default)
            if which == "request_range":
                out.response_range.SetInParent()
                self.range(op.request_range, txn, out.response_range)
            elif which == "request_put":
                out.response_put.SetInParent()
                self._put(txn, op.request_put, out.response_put)
            elif which == "request_delete_range":
                out.response_delete_range.SetInParent()
                self._delete_range(txn, op.request_delete_range, out.response_delete_range)
            elif which == "request_txn":
                self._apply_txn(txn, op.request_txn, path, out.response_txn)
                out.response_txn.header.SetInParent()



def _compare_kv(c: pb.Compare, kv: KeyValue | None) -> bool:
    target = c.target
    if target == Compare.VALUE:
        result = _cmp(kv.value if kv else b"", c.value)
    elif target == Compare.CREATE:
        result = _cmp(kv.create_revision if kv else 0, c.create_revision)
    elif target == Compare.MOD:
        result = _cmp(kv.mod_revision if kv else 0, c.mod_revision)
    elif target == Compare.VERSION:
        result = _cmp(kv.version if kv else 0, c.version)
    elif target == Compare.LEASE:
        result = _cmp(kv.lease if kv else 0, c.lease)
    else:
        result = 0
    res = c.result
    if res == Compare.EQUAL:
        return result == 0
    if res == Compare.NOT_EQUAL:
        return result != 0
    if res == Compare.GREATER:
        return result > 0
    if res == Compare.LESS:
        return result < 0
    return True


def _cmp(a: Any, b: Any) -> int:
    return int((a > b) - (a < b))


def has_put(r: pb.TxnRequest) -> bool:
    """A txn that may add data (the quota applies), in either branch, nested txns too."""
    for op in (*r.success, *r.failure):
        which = op.WhichOneof("request")
        if which == "request_put" or (which == "request_txn" and has_put(op.request_txn)):
            return True
    return False
