"""One etcd member's state: the store, the lessor and the KV applier, wired together.

The gRPC servicers get a Node and hold nothing of their own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import errors
from .alarm import CORRUPT, NOSPACE, AlarmStore
from .auth import AuthStore
from .compactor import Compactor, new_compactor
from .config import DEFAULT_QUOTA_BACKEND_BYTES, Config
from .kv import KVApplier
from .lease import Lessor
from .membership import Member, Membership
from .mvcc import MVCCStore
from .pb.etcdserverpb import rpc_pb2 as pb
from .raftstate import FIRST_TERM, RaftState, start_term
from .wal import WAL, DiskFaults, Recovery, WALOptions
from .watch import WatchHub

log = logging.getLogger("etcdlite")



class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.member_id = config.member_id
        self.cluster_id = config.cluster_id
        self.raft_term = FIRST_TERM  # this start's, once open_storage() has counted it (raftstate.py)
        self._raft = RaftState(FIRST_TERM, 0)
        self.store = MVCCStore()
        self.lessor = Lessor(self.store.write_txn, self.member_id)
        self.store.leases = self.lessor
        self.kv = KVApplier(self.store, self.lessor)
        local = Member(self.member_id, config.name, config.peer_urls, config.advertise_client_urls)
        self.membership = Membership(local, config.initial_cluster_token,
                                     Path(config.data_dir) / "member" / "members.json",
                                     fsync=not config.unsafe_no_fsync)
        self.watches = WatchHub(self.store)
        self.auth = AuthStore.from_config(config, self._lease_keys)
        self.alarms = AlarmStore(Path(config.data_dir) / "member" / "alarms", fsync=not config.unsafe_no_fsync)
        self.wal: WAL | None = None  # set by open_storage(); until then writes are journaled in memory
        self.compactor: Compactor | None = new_compactor(
            config.auto_compaction_mode, config.auto_compaction_retention,
            lambda: self.store.visible_revision, self._auto_compact)

    # -- the data dir (issue 4) -------------------------------------------------------------------
    def open_storage(self) -> Recovery:
        """Recover the state from the data dir; from now on every write is journaled there."""
        cfg = self.config
        options = WALOptions(fsync=not cfg.unsafe_no_fsync, snapshot_count=cfg.snapshot_count or 100_000,
                             batch_limit=max(cfg.backend_batch_limit, 0), faults=DiskFaults.from_env())
        wal = WAL(cfg.data_dir, self.store, self.lessor, options)
        rec = wal.open()
        self.alarms.load()
        self.store.use_journal(wal)
        self.wal = wal
        self._raft = start_term(wal.member_dir, fsync=not cfg.unsafe_no_fsync)
        self.raft_term = self._raft.term
        log.info("recovered the data dir", extra={"fields": {
            "data-dir": cfg.data_dir, "revision": rec.revision, "compact-revision": self.store.compact_revision,
            "index": rec.index, "snapshot": str(rec.snapshot or ""), "replayed-entries": rec.replayed,
            "leases": len(self.lessor.leases())}})
        return rec

    async def start(self) -> None:
        """Open the data dir (unless done) and start the log writer and the auto-compactor."""
        if self.wal is None:
            self.open_storage()
        assert self.wal is not None
        self.wal.start()
        if self.compactor is not None:
            self.compactor.start()

    def close(self) -> None:
        if self.compactor is not None:
            self.compactor.close()
        if self.wal is not None:
            self.wal.close()

    async def wait_closed(self) -> None:
        """Returns once the auto-compactor stopped and every queued write is on disk."""
        if self.compactor is not None:
            await self.compactor.wait_closed()
        if self.wal is not None:
            await self.wal.wait_closed()

    async def _auto_compact(self, revision: int) -> None:
        _, seq = self.kv.compact(pb.CompactionRequest(revision=revision))
        await self.store.wait_durable(seq)

    @property
    def quota_bytes(self) -> int:
        """--quota-backend-bytes: 0 is etcd's default (2 GiB), negative turns the quota off."""
        quota = self.config.quota_backend_bytes
        return DEFAULT_QUOTA_BACKEND_BYTES if quota == 0 else quota

    @property
    def raft_index(self) -> int:
        """etcd's raftIndex (= raftAppliedIndex: one member applies what it commits, and etcdlite
        counts only durable entries)."""
        return self._raft.base_index + (self.wal.durable_index if self.wal is not None else 0)

    def db_size(self) -> int:
        """Bytes on disk (etcd's dbSize)."""
        return self.wal.disk_size() if self.wal is not None else 0

    def _lease_keys(self, lease_id: int) -> set[bytes] | None:
        lease = self.lessor.lookup(lease_id)
        return None if lease is None else lease.keys

    def fill_header(self, header: pb.ResponseHeader) -> None:
        """etcd's header.fill: identity always, the revision only where the handler left none."""
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.raft_term
        if header.revision == 0:
            header.revision = self.store.visible_revision

    def check_space(self) -> None:
        """Before writes that add data (puts, txns with puts, lease grants), as etcd's quota check:
        refused under a NOSPACE or CORRUPT alarm, or once the data dir reaches the quota (which
        raises NOSPACE); and once the log cannot be written."""
        if self.alarms.active(CORRUPT):
            raise errors.CORRUPT
        if self.wal is not None:
            self.wal.check_writable()
        if self.alarms.active(NOSPACE):
            raise errors.NO_SPACE
        quota = self.quota_bytes
        if 0 < quota <= self.db_size():
            log.warning("message exceeded backend quota; raising alarm", extra={"fields": {
                "quota-size-bytes": quota, "db-size-bytes": self.db_size(), "error": errors.NO_SPACE.message}})
            self.alarms.activate(self.member_id, NOSPACE)
            raise errors.NO_SPACE
