"""The watch hub: etcd's watchable store (mvcc/watchable_store.go, watcher_group.go, watcher.go).

Every watcher is in exactly one place:

- **synced**: it has seen everything up to the visible revision; each newly
  durable revision is handed to it at once, one response per revision.
- **unsynced**: it is behind (a ``start_revision`` in the past, or it was a
  victim); the hub's worker catches it up from the store's history in bounded
  batches (at most ``WATCH_BATCH_MAX_REVS`` revisions a watcher, at most
  ``MAX_WATCHERS_PER_SYNC`` watchers and ``MAX_REVS_SCANNED_PER_SYNC``
  revisions a pass), then it becomes synced.
- **victim**: its stream's send queue was full; it keeps the one response it
  could not queue and is retried when the stream drains, then rejoins as
  synced or unsynced.  Writers never wait for a watcher and a slow client
  costs at most ``CHAN_BUF_LEN`` queued responses plus one per victim.

``min_rev`` is the next revision a watcher still needs: events below it were
delivered, so nothing is lost or repeated across these moves.  A watcher that
needs history below the compact revision is canceled with the compact revision
(etcd's ``ErrCompacted`` watch response).  Everything runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from itertools import islice

from ..errors import EtcdError
from ..lifecycle import OwnedTask
from ..storage.backend import Backend, KeyValue
from .watchers import (
    AUTO_WATCH_ID,
    ERR_DUPLICATE_ID,
    ERR_EMPTY_RANGE,
    INVALID_WATCH_ID,
    State,
    StreamClosed,
    Watcher,
    WatcherGroup,
    WatchError,
    WatchResponse,
    WatchSpec,
)

log = logging.getLogger("etcdlite.watch")

CHAN_BUF_LEN = 128  # etcd's chanBufLen: event responses one stream may have queued
CTRL_BUF_LEN = 16  # etcd's ctrlStreamBufLen: control responses before the reader waits
MAX_WATCHERS_PER_SYNC = 512  # etcd's maxWatchersPerSync
WATCH_BATCH_MAX_REVS = 1000  # etcd's watchBatchMaxRevs
MAX_REVS_SCANNED_PER_SYNC = 10_000  # history revisions one sync pass reads before yielding



class _Batch:
    """The events of one catch-up response: at most WATCH_BATCH_MAX_REVS revisions (etcd's eventBatch)."""

    __slots__ = ("events", "revs", "more_rev")

    def __init__(self) -> None:
        self.events: list[KeyValue] = []
        self.revs = 0
        self.more_rev = 0  # first revision left for the next batch

    def add(self, kv: KeyValue) -> None:
        if self.more_rev:
            return
        if not self.events or kv.mod_revision > self.events[-1].mod_revision:
            if self.revs == WATCH_BATCH_MAX_REVS:
                self.more_rev = kv.mod_revision
                return
            self.revs += 1
        self.events.append(kv)


class WatchStream:
    """One client stream's watchers and its bounded send queue (etcd's mvcc.watchStream + its chan)."""

    def __init__(self, hub: WatchHub, capacity: int = CHAN_BUF_LEN) -> None:
        self._hub = hub
        self._capacity = capacity
        self._queue: deque[WatchResponse] = deque()
        self._events_queued = 0
        self._control_queued = 0
        self._ready = asyncio.Event()  # something queued, or closed
        self._control_room = asyncio.Event()
        self._control_room.set()
        self._watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self.victims = 0  # this stream's watchers waiting as victims
        self.closed = False
        self.ended_by: EtcdError | None = None  # the error the stream's RPC ends with (a cut stream)

    # -- the owner's side ---------------------------------------------------------------
    def rev(self) -> int:
        return self._hub.revision

    def create(self, spec: WatchSpec) -> Watcher | None:
        """etcd's watch create: queue the created response (or the refusal), then start the watcher."""
        revision = self._hub.revision
        try:
            watch_id = self._claim_id(spec)
        except WatchError as exc:
            self._push_control(WatchResponse(INVALID_WATCH_ID, revision, created=True, canceled=True,
                                             cancel_reason=str(exc)))
            return None
        w = Watcher(watch_id, spec, self)
        self._watchers[watch_id] = w
        self._push_control(WatchResponse(watch_id, revision, watcher=w, created=True))
        self._hub.add(w, spec.start_revision)
        return w

    def _claim_id(self, spec: WatchSpec) -> int:
        if spec.end and spec.key >= spec.end:
            raise WatchError(ERR_EMPTY_RANGE)
        if self.closed:
            raise WatchError(ERR_EMPTY_RANGE)  # what etcd says for a closed stream
        if spec.watch_id == AUTO_WATCH_ID:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
            return watch_id
        if spec.watch_id in self._watchers:
            raise WatchError(ERR_DUPLICATE_ID)
        return spec.watch_id

    def refuse(self, watch_id: int, reason: str) -> None:
        """Answer a create that is not allowed at all: created and canceled, with ``reason``."""
        self._push_control(WatchResponse(watch_id, self._hub.revision, created=True, canceled=True,
                                         cancel_reason=reason))

    def cancel(self, watch_id: int) -> Watcher | None:
        """Cancel a watcher: its queued events are dropped and a canceled response is queued.

        Returns the watcher, or None (and queues nothing) when the id is unknown, as etcd.
        """
        w = self._watchers.get(watch_id)
        if w is None or self.closed:
            return None
        del self._watchers[watch_id]
        self._hub.cancel(w)
        self._drop_events_of(w)
        self._push_control(WatchResponse(watch_id, self._hub.revision, watcher=w, canceled=True))
        return w

    def request_progress(self, watch_id: int) -> None:
        """A progress notification for one watcher, sent only if it is synced (etcd's RequestProgress)."""
        w = self._watchers.get(watch_id)
        if w is not None:
            self._hub.progress(w)

    def progress_all(self) -> None:
        """Answer a progress request: the current revision, for no watcher in particular."""
        self._push_control(WatchResponse(INVALID_WATCH_ID, self._hub.revision))

    def pop(self) -> WatchResponse | None:
        if not self._queue:
            if not self.closed:
                self._ready.clear()
            return None
        resp = self._queue.popleft()
        if resp.control:
            self._control_queued -= 1
            if self._control_queued < CTRL_BUF_LEN:
                self._control_room.set()
        else:
            self._events_queued -= 1
            if self.victims:
                self._hub.kick()
        return resp

    def wake(self) -> None:
        """Wake the consumer with nothing queued (it has something else to look at)."""
        self._ready.set()

    async def wait_ready(self) -> None:
        """Until something is queued or the stream is closed."""
        await self._ready.wait()

    async def next(self) -> WatchResponse:
        """The next response; raises StreamClosed once closed."""
        while True:
            if self.closed:
                raise StreamClosed
            resp = self.pop()
            if resp is not None:
                return resp
            await self._ready.wait()

    async def wait_control_room(self) -> None:
        """Back-pressure on requests: wait while CTRL_BUF_LEN control responses are unsent."""
        await self._control_room.wait()

    def close(self, ended_by: EtcdError | None = None) -> None:
        """Cancel every watcher and wake the consumer; idempotent.  ``ended_by``: the error the
        stream's RPC is to end with."""
        if self.closed:
            return
        self.closed = True
        self.ended_by = ended_by
        for w in self._watchers.values():
            self._hub.cancel(w)
        self._watchers.clear()
        self._queue.clear()
        self._events_queued = self._control_queued = 0
        self._ready.set()
        self._control_room.set()
        self._hub.forget(self)

    # -- the hub's side -----------------------------------------------------------------
    def offer(self, resp: WatchResponse) -> bool:
        """Queue an event response unless the queue is full (then the watcher becomes a victim)."""
        if self.closed:
            return True
        if self._events_queued >= self._capacity:
            return False
        self._queue.append(resp)
        self._events_queued += 1
        self._ready.set()
        return True

    def _push_control(self, resp: WatchResponse) -> None:
        if self.closed:
            return
        resp.control = True
        self._queue.append(resp)
        self._control_queued += 1
        if self._control_queued >= CTRL_BUF_LEN:
            self._control_room.clear()
        self._ready.set()

    def push_compacted(self, w: Watcher, compact_revision: int) -> None:
        # etcd sends it with no header revision
        self._push_control(WatchResponse(w.id, 0, watcher=w, canceled=True, compact_revision=compact_revision))

    def _drop_events_of(self, w: Watcher) -> None:
        if any(r.watcher is w and not r.control for r in self._queue):
            self._queue = deque(r for r in self._queue if r.control or r.watcher is not w)
            self._events_queued = sum(1 for r in self._queue if not r.control)


class WatchHub:
    """All watchers of one store; fed by the store's durable listener and one worker task."""

    def __init__(self, store: Backend) -> None:
        self._store = store
        self._synced = WatcherGroup()
        self._unsynced = WatcherGroup()
        self._victims: dict[Watcher, WatchResponse] = {}
        self._streams: set[WatchStream] = set()
        self._wake = asyncio.Event()
        self._task = OwnedTask("watch-hub", self._run)
        self.closed = False
        store.add_durable_listener(self._on_durable)

    @property
    def revision(self) -> int:
        """What watchers have seen the store at: its visible (durable) revision."""
        return self._store.visible_revision

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if not self.closed:
            self._task.start()

    def close(self) -> None:
        """Close every stream (their consumers see StreamClosed) and stop the worker."""
        if self.closed:
            return
        self.closed = True
        for stream in list(self._streams):
            stream.close()
        self._task.cancel()

    async def wait_closed(self) -> None:
        await self._task.wait()

    def cut(self, error: EtcdError) -> int:
        """End every open stream with ``error``, as a member that lost its leader does; returns how many."""
        streams = list(self._streams)
        for stream in streams:
            stream.close(error)
        return len(streams)

    def new_stream(self, capacity: int = CHAN_BUF_LEN) -> WatchStream:
        stream = WatchStream(self, capacity)
        if self.closed:
            stream.close()
        else:
            self._streams.add(stream)
        return stream

    def forget(self, stream: WatchStream) -> None:
        self._streams.discard(stream)

    def kick(self) -> None:
        self._wake.set()

    def stats(self) -> dict[str, int]:
        return {"synced": len(self._synced), "unsynced": len(self._unsynced), "victims": len(self._victims),
                "streams": len(self._streams)}

    # -- watchers -------------------------------------------------------------------------
    def add(self, w: Watcher, start_revision: int) -> None:
        """etcd's watchableStore.watch: synced if it starts after the current revision, else unsynced."""
        current = self.revision
        if start_revision == 0 or start_revision > current:
            w.min_rev = max(current + 1, start_revision)
            self._to_synced(w)
        else:
            w.min_rev = start_revision
            self._to_unsynced(w)

    def cancel(self, w: Watcher) -> None:
        state = w.state
        if state is State.SYNCED:
            self._synced.remove(w)
        elif state is State.UNSYNCED:
            self._unsynced.remove(w)
        elif state is State.VICTIM:
            del self._victims[w]
            w.stream.victims -= 1
        w.state = State.CANCELED

    def progress(self, w: Watcher) -> None:
        if w.state is State.SYNCED:
            w.stream.offer(WatchResponse(w.id, self.revision, watcher=w))

    def _to_synced(self, w: Watcher) -> None:
        w.state = State.SYNCED
        self._synced.add(w)

    def _to_unsynced(self, w: Watcher) -> None:
        w.state = State.UNSYNCED
        self._unsynced.add(w)
        self._wake.set()

    def _to_victim(self, w: Watcher, resp: WatchResponse) -> None:
        w.state = State.VICTIM
        self._victims[w] = resp
        w.stream.victims += 1

    def _send(self, w: Watcher, resp: WatchResponse) -> bool:
        """Filter and queue; a response whose events were all filtered out is not sent at all."""
        if resp.events:
            resp.events = w.filter(resp.events)
            if not resp.events:
                return True
        return w.stream.offer(resp)

    # -- live events ----------------------------------------------------------------------
    def _on_durable(self, old: int, new: int) -> None:
        if self.closed or not self._synced:
            return
        try:
            for revision, changes in self._store.changes_since(old + 1, new):
                self._notify(revision, changes)
        except Exception:  # a broken watcher must not fail the write that made this durable
            log.exception("notifying watchers of revisions %d..%d failed", old + 1, new)

    def _notify(self, revision: int, changes: list[KeyValue]) -> None:
        batches: dict[Watcher, list[KeyValue]] = {}
        synced = self._synced
        for kv in changes:
            for w in synced.matching(kv.key):
                if revision >= w.min_rev:
                    batches.setdefault(w, []).append(kv)
        for w, events in batches.items():
            w.min_rev = revision + 1
            resp = WatchResponse(w.id, revision, events, watcher=w)
            if not self._send(w, resp):
                synced.remove(w)
                self._to_victim(w, resp)

    # -- catching up ----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._victims:
                    self._move_victims()
                if self._unsynced and self._sync_unsynced():
                    self._wake.set()  # more to do: yield, then go on
            except Exception:
                log.exception("watch sync pass failed")
            await asyncio.sleep(0)

    def _move_victims(self) -> None:
        """Retry the responses victims could not queue; those that fit rejoin (etcd's moveVictims)."""
        current = self.revision
        for w, resp in list(self._victims.items()):
            resp.revision = w.min_rev - 1
            if not w.stream.offer(resp):
                continue
            del self._victims[w]
            w.stream.victims -= 1
            if w.min_rev <= current:
                self._to_unsynced(w)
            else:
                self._to_synced(w)

    def _sync_unsynced(self) -> int:
        """One catch-up pass over some unsynced watchers (etcd's syncWatchers); returns how many remain."""
        current = self.revision
        compacted = self._compact_revision()
        live: list[Watcher] = []
        for w in list(islice(self._unsynced.watchers, MAX_WATCHERS_PER_SYNC)):
            if w.min_rev < compacted:
                self._unsynced.remove(w)
                w.state = State.COMPACTED
                w.stream.push_compacted(w, compacted)
            elif w.min_rev > current or w.min_rev < 0:
                # etcd reads history for a negative start from an empty range: it just goes live
                w.min_rev = max(w.min_rev, current + 1)
                self._unsynced.remove(w)
                self._to_synced(w)
            else:
                live.append(w)
        if live:
            batches, scanned_to = self._read_history(live, current, compacted)
            for w in live:
                self._deliver_history(w, batches.get(w), scanned_to, current)
                if w.state is State.UNSYNCED:
                    self._unsynced.to_back(w)  # the next pass starts with the watchers this one skipped
        return len(self._unsynced)

    def _compact_revision(self) -> int:
        """etcd's compactMainRev: -1 until the first compaction (so only a negative start is "compacted")."""
        return self._store.compact_revision or -1

    def _read_history(self, watchers: list[Watcher], current: int, compacted: int
                      ) -> tuple[dict[Watcher, _Batch], int]:
        """Events for ``watchers`` from their min_rev on; returns them and the last revision read."""
        group = WatcherGroup(watchers)
        start = min(w.min_rev for w in watchers)
        batches: dict[Watcher, _Batch] = {}
        scanned_to = current
        for n, (revision, changes) in enumerate(self._store.changes_since(start, current)):
            if n == MAX_REVS_SCANNED_PER_SYNC:
                scanned_to = revision - 1
                break
            for kv in changes:
                if revision == compacted and kv.is_tombstone:
                    continue  # etcd's compaction drops the tombstones at the compact revision
                for w in group.matching(kv.key):
                    if revision >= w.min_rev:
                        batch = batches.get(w)
                        if batch is None:
                            batch = batches[w] = _Batch()
                        batch.add(kv)
        return batches, scanned_to

    def _deliver_history(self, w: Watcher, batch: _Batch | None, scanned_to: int, current: int) -> None:
        # the pass read up to scanned_to from the group's oldest need, which may be below this watcher's
        caught_up_to = max(w.min_rev, scanned_to + 1)
        if batch is None:
            w.min_rev = caught_up_to
        else:
            w.min_rev = batch.more_rev or caught_up_to
            resp = WatchResponse(w.id, current, batch.events, watcher=w)
            if not self._send(w, resp):
                self._unsynced.remove(w)
                self._to_victim(w, resp)
                return
        if w.min_rev > current:
            self._unsynced.remove(w)
            self._to_synced(w)
