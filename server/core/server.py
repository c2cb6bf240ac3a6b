"""The core server: one etcd member's state and the request pipeline, written once.

Every KV and Lease request goes through the same steps, as in etcd's ``EtcdServer``:
validate (etcd's v3rpc checks) -> authorize (``who``: the caller's credentials, plain data)
-> size (``--max-request-bytes``) -> quota (NOSPACE, CORRUPT) -> apply in a backend write txn
-> wait until durable -> fill the response header.  The api layer makes one call per request
(``await core.put(request, who)``) and gets etcd's response or an ``errors.EtcdError``.

Maintenance, cluster and auth-management requests live beside this class
(``core.maintenance``, ``core.cluster``, ``core.auth.admin``); they share its header and
identity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .. import errors
from ..config import DEFAULT_QUOTA_BACKEND_BYTES, Config, ConfigError
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..storage.backend import Backend, KeyValue, Recovered, SharedState, WriteTxn
from ..storage.datadir import secure_data_dir
from ..storage.raftstate import FIRST_TERM, RaftTermFile, RaftTermStore
from . import alarm, kv, membership
from .alarm import ALARMS_FILE, CORRUPT, NOSPACE, AlarmStore
from .auth import store as auth_store
from .auth.model import Credentials
from .auth.store import AuthStore
from .compactor import Compactor, new_compactor
from .kv import KVApplier
from .lease import Lessor
from .membership import Member, Membership
from .ranges import EncodedResponse, PartTurns, ReadPins, read_in_parts, sliceable
from .request_size import RaftSizeLimit
from .watch import WatchHub

log = logging.getLogger("etcdlite")

# A keep-alive that finds its lease revoked in the last RACING_REVOKE_SECONDS answers after a head start
# for the revoke's answer (see lease_keep_alive)
RACING_REVOKE_SECONDS = 0.05
REVOKE_ANSWER_HEAD_START = 0.001

R = TypeVar("R")
Who = Credentials | None  # None: an in-process caller, with no credentials


class Core:
    """One member: the backend, the lessor, the watch hub, auth, alarms, membership, compaction."""

    def __init__(self, config: Config, backend: Backend, raft_terms: RaftTermStore | None = None) -> None:
        self.config = config
        secure_data_dir(Path(config.data_dir))  # before anything in it (auth.json, members.json) is read
        member_dir = Path(config.data_dir) / "member"
        self.member_id = config.member_id
        self.cluster_id = config.cluster_id
        # etcd's raft term and the raft entries that are not backend steps, counted by open()
        # (storage/raftstate.py); a fresh one-member etcd reports term 2 (its first election)
        self._raft_terms = raft_terms or RaftTermFile(member_dir, fsync=not config.unsafe_no_fsync)
        self.raft_term = FIRST_TERM
        self._raft_base_index = 0
        self.backend = backend
        self.lessor = Lessor(self.member_id)
        self.lessor.on_expired = self._revoke_expired
        backend.set_lease_attacher(self.lessor)
        if backend.shares_leases:
            self.lessor.local_expiry = False
            backend.set_lease_revoker(self._revoke_expired)
        backend.add_reset_listener(self._backend_reset)
        self.kv = KVApplier(backend, self.lessor)
        local = Member(self.member_id, config.name, config.peer_urls, config.advertise_client_urls)
        self.membership = Membership(local, config.initial_cluster_token, member_dir / "members.json",
                                     fsync=not config.unsafe_no_fsync)
        self.watches = WatchHub(backend)
        self.auth = AuthStore.from_config(config, self._lease_keys)
        self.alarms = AlarmStore(member_dir / ALARMS_FILE, fsync=not config.unsafe_no_fsync)
        self.compactor: Compactor | None = new_compactor(
            config.auto_compaction_mode, config.auto_compaction_retention,
            lambda: backend.visible_revision, self.compact_to)
        self._size_limit = RaftSizeLimit(config.max_request_bytes, self.member_id, self.auth)
        self._max_txn_ops = config.max_txn_ops
        self._recovered: Recovered | None = None
        self._shared = backend.shared_state is not None  # other instances write the same store
        self.on_removed: Callable[[], None] | None = None  # this member was removed: stop serving
        self._read_pins = ReadPins()
        self._part_turns = PartTurns()

    # -- lifecycle ---------------------------------------------------------------------------------
    def open(self) -> Recovered:
        """Recover the state from the backend; nothing is served before this."""
        rec = self.backend.open()
        if rec.cluster_id:
            self.cluster_id = rec.cluster_id
        shared = self.backend.shared_state
        if shared is not None:
            self._use_shared(shared)
        raft = self._raft_terms.begin_term()  # after the backend locked the data dir
        self.raft_term, self._raft_base_index = raft.term, raft.base_index
        self.alarms.load()
        self.restore_leases()
        self._recovered = rec
        log.info("recovered the data dir", extra={"fields": {
            "data-dir": self.config.data_dir, "revision": rec.revision,
            "compact-revision": self.backend.compact_revision, "index": rec.index, "snapshot": rec.source,
            "replayed-entries": rec.replayed, "leases": len(self.lessor.leases())}})
        return rec

    def restore_leases(self) -> None:
        """The lessor from the backend's leases and the keys attached to them."""
        backend = self.backend
        self.lessor.restore(backend.leases(), ((kv.key, kv.lease) for kv in backend.all_live() if kv.lease))

    def _use_shared(self, shared: SharedState) -> None:
        """Auth, alarms and added/removed members in the shared backend, as every instance sees them."""
        self.alarms.use_shared(shared)
        self.auth.use_shared(shared)
        self.membership.use_shared(shared, lambda: [
            Member(i.id, i.name, i.peer_urls, i.client_urls) for i in shared.instances()])
        if self.membership.local_removed:
            raise ConfigError(f"the member has been permanently removed from the cluster (member "
                              f"{self.member_id:x}); start it with another --name and peer URLs")
        shared.on_change(self._shared_changed)

    def _shared_changed(self, name: str, data: bytes) -> None:
        if name == auth_store.SHARED_NAME:
            self.auth.replace_state(data)
        elif name == alarm.SHARED_NAME:
            self.alarms.replace(data)
        elif name == membership.SHARED_NAME:
            self.membership.replace(data)
            if self.membership.local_removed and self.on_removed is not None:
                log.error("the member has been permanently removed from the cluster",
                          extra={"fields": {"local-member-id": f"{self.member_id:x}"}})
                self.on_removed()

    def _backend_reset(self) -> None:
        """The backend rebuilt its state (a shared store's commit failed): the leases again."""
        self.lessor.clear()
        self.restore_leases()

    async def start(self) -> None:
        """Open (unless done), then start the backend's writer, the compactor, the reaper, the watch hub."""
        if self._recovered is None:
            self.open()
        self.backend.start()
        if self.compactor is not None:
            self.compactor.start()
        self.lessor.start()
        self.watches.start()

    def end_watches(self) -> None:
        """Watch streams never end by themselves: the first step of a shutdown ends them."""
        self.watches.close()

    def close(self) -> None:
        """Stop the background work; the backend still makes what it accepted durable."""
        self.watches.close()
        self.lessor.close()
        if self.compactor is not None:
            self.compactor.close()
        self.backend.close()

    async def wait_closed(self) -> None:
        """Returns once every background task ended and every acknowledged write is on disk."""
        await self.watches.wait_closed()
        await self.lessor.wait_closed()
        if self.compactor is not None:
            await self.compactor.wait_closed()
        await self.backend.wait_closed()

    # -- the pipeline's shared steps ---------------------------------------------------------------
    def fill_header(self, header: pb.ResponseHeader) -> None:
        """etcd's header.fill: identity always, the revision only where the handler left none."""
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.raft_term
        if header.revision == 0:
            header.revision = self.backend.visible_revision

    def header(self, revision: int = 0) -> pb.ResponseHeader:
        header = pb.ResponseHeader(revision=revision)
        self.fill_header(header)
        return header


    @property
    def raft_index(self) -> int:
        """etcd's raftIndex (= raftAppliedIndex: one member applies what it commits, and only durable
        steps are counted): the start-ups' entries plus the backend's durable steps."""
        return self._raft_base_index + self.backend.durable_index

    @property
    def quota_bytes(self) -> int:
        """--quota-backend-bytes: 0 is etcd's default (2 GiB), negative turns the quota off."""
        quota = self.config.quota_backend_bytes
        return DEFAULT_QUOTA_BACKEND_BYTES if quota == 0 else quota

    def db_size(self) -> int:
        return self.backend.size()

    def check_space(self) -> None:
        """Before writes that add data (puts, txns with puts, lease grants), as etcd's quota check:
        refused under a NOSPACE or CORRUPT alarm, or once the data dir reaches the quota (which
        raises NOSPACE); and once the backend cannot be written."""
        if self.alarms.active(CORRUPT):
            raise errors.CORRUPT
        self.backend.check_writable()
        if self.alarms.active(NOSPACE):
            raise errors.NO_SPACE
        quota = self.quota_bytes
        if 0 < quota <= self.db_size():
            log.warning("message exceeded backend quota; raising alarm", extra={"fields": {
                "quota-size-bytes": quota, "db-size-bytes": self.db_size(), "error": errors.NO_SPACE.message}})
            self.alarms.activate(self.member_id, NOSPACE)
            raise errors.NO_SPACE

    async def _write(self, request: Any, who: Who, apply: Callable[[WriteTxn], R], *, sized: bool = True,
                     needs_space: bool = False, permitted: Callable[[], None] | None = None) -> R:
        """Size, quota, apply, wait durable, header: the rest of every write's pipeline.

        ``permitted`` (the request's permission check) runs again when the write is applied if other
        instances share the store: an auth change one of them committed may have arrived meanwhile,
        and etcd checks permissions when it applies a write."""
        if sized:
            self._size_limit.check(request, who)  # as etcd measures it: the request wrapped for raft
        if needs_space:
            self.check_space()
        if permitted is not None and self._shared:
            checked = apply

            def apply(txn: WriteTxn) -> R:
                permitted()
                return checked(txn)
        resp = await self.backend.write(apply)
        self.fill_header(resp.header)  # type: ignore[attr-defined]
        return resp

    # -- KV --------------------------------------------------------------------------------------------
    async def range(self, r: pb.RangeRequest, who: Who) -> pb.RangeResponse | EncodedResponse:
        kv.check_range(r)
        if not r.serializable:  # as etcd: the read index first, so the permission check sees every
            await self.backend.read_index()  # auth change committed before the read (a shared backend)
        self.auth.check_range(who, r)
        if sliceable(r):  # a range over many keys is read in parts, the loop free in between
            return await read_in_parts(self.backend, self._read_pins, self._part_turns, r, self.header())
        resp = self.kv.range(r)
        self.fill_header(resp.header)
        return resp

    async def put(self, r: pb.PutRequest, who: Who) -> pb.PutResponse:
        kv.check_put(r)
        self.auth.check_put(who, r)
        return await self._write(r, who, lambda txn: self.kv.put(txn, r), needs_space=True,
                                 permitted=lambda: self.auth.check_put(who, r))

    async def delete_range(self, r: pb.DeleteRangeRequest, who: Who) -> pb.DeleteRangeResponse:
        kv.check_delete(r)
        self.auth.check_delete_range(who, r)
        return await self._write(r, who, lambda txn: self.kv.delete_range(txn, r),
                                 permitted=lambda: self.auth.check_delete_range(who, r))

    async def txn(self, r: pb.TxnRequest, who: Who) -> pb.TxnResponse:
        kv.check_txn(r, self._max_txn_ops)
        self.auth.check_txn(who, r)
        # etcd serves read-only txns without raft, so their size is not checked
        return await self._write(r, who, lambda txn: self.kv.txn(txn, r), sized=not kv.is_read_only(r),
                                 needs_space=kv.has_put(r), permitted=lambda: self.auth.check_txn(who, r))

    async def compact(self, r: pb.CompactionRequest, who: Who) -> pb.CompactionResponse:
        self.auth.check_token(who)  # etcd checks no permission for a compaction
        resp = pb.CompactionResponse()
        resp.header.revision = self.backend.current_revision
        await self._read_pins.wait_below(r.revision)  # a range being read in parts finishes first
        await self.backend.compact(r.revision)
        self.fill_header(resp.header)
        return resp

    async def compact_to(self, revision: int) -> None:
        """The auto-compactor's compaction."""
        await self._read_pins.wait_below(revision)
        await self.backend.compact(revision)

    # -- leases ----------------------------------------------------------------------------------------
    async def lease_grant(self, r: pb.LeaseGrantRequest, who: Who) -> pb.LeaseGrantResponse:
        self.auth.check_token(who)

        def grant(txn: WriteTxn) -> pb.LeaseGrantResponse:
            lease = self.lessor.grant(txn, r.ID, r.TTL)
            return pb.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)

        return await self._write(r, who, grant, needs_space=True)

    async def lease_revoke(self, r: pb.LeaseRevokeRequest, who: Who) -> pb.LeaseRevokeResponse:
        self.auth.check_lease_revoke(who, r)

        def revoke(txn: WriteTxn) -> pb.LeaseRevokeResponse:
            self.lessor.revoke(txn, r.ID)
            return pb.LeaseRevokeResponse()

        return await self._write(r, who, revoke, sized=False)

    def _revoke_expired(self, lease_id: int) -> None:
        self.backend.write_nowait(lambda txn: self.lessor.revoke(txn, lease_id))

    async def lease_keep_alive(self, r: pb.LeaseKeepAliveRequest, who: Who) -> pb.LeaseKeepAliveResponse:
        """One keep-alive of a stream: the lease's TTL, 0 once it is gone."""
        self.auth.check_lease_keep_alive(who, r)
        # as etcd's LeaseRenew waits for the applied index: a grant or revoke not yet durable is not seen
        await self.backend.wait_applied()
        resp = pb.LeaseKeepAliveResponse(ID=r.ID)
        # header before the renew, as etcd: its revision never runs ahead of the renewal
        self.fill_header(resp.header)
        try:
            resp.TTL = self.lessor.renew(r.ID)
        except errors.EtcdError as exc:
            if exc is not errors.LEASE_NOT_FOUND:
                raise
            resp.TTL = 0
            if self.lessor.revoked_within(r.ID, RACING_REVOKE_SECONDS):
                # the revoke's own answer leaves first: its client hears it returned before a keep-alive
                # on another connection says the lease is gone (etcd: ~7% the other way round)
                await asyncio.sleep(REVOKE_ANSWER_HEAD_START)
        else:
            self.backend.lease_renewed(r.ID, resp.TTL)
        return resp

    async def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest, who: Who) -> pb.LeaseTimeToLiveResponse:
        self.auth.check_lease_time_to_live(who, r)
        await self.backend.wait_applied()
        lease = self.lessor.lookup(r.ID)
        if lease is None:
            resp = pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=-1)
        else:
            resp = pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=self.lessor.remaining_seconds(lease), grantedTTL=lease.ttl)
            if r.keys:
                resp.keys.extend(sorted(lease.keys))
        self.fill_header(resp.header)
        return resp

    async def lease_leases(self, r: pb.LeaseLeasesRequest, who: Who) -> pb.LeaseLeasesResponse:
        await self.backend.wait_applied()
        resp = pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=le.id) for le in self.lessor.leases()])
        self.fill_header(resp.header)
        return resp

    def _lease_keys(self, lease_id: int) -> set[bytes] | None:
        lease = self.lessor.lookup(lease_id)
        return None if lease is None else lease.keys

    # -- watch -------------------------------------------------------------------------------------------
    def watch_permitted(self, who: Who, creq: pb.WatchCreateRequest) -> bool:
        return self.auth.is_watch_permitted(who, creq)

    def prev_kv(self, kv: KeyValue) -> KeyValue | None:
        """The key before this event, as etcd reads it at mod_revision-1 (none once compacted away)."""
        rev = kv.mod_revision - 1
        if rev < self.backend.compact_revision:
            return None
        return self.backend.get(kv.key, rev)
