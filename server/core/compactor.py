"""Auto-compaction, as etcd's v3compactor: ``--auto-compaction-mode periodic|revision`` with
``--auto-compaction-retention``.

*periodic*: the retention is a duration (``"1h"``, ``"30m"``, or a bare integer meaning hours).  The
revision is sampled every tenth of min(retention, 1 h); once a retention has passed, the server is
compacted to the revision sampled a retention ago, then every min(retention, 1 h).

*revision*: every 5 minutes, compact to (current revision - retention) unless that was done already.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .. import errors
from ..config import ConfigError, parse_go_duration
from ..lifecycle import OwnedTask

log = logging.getLogger("etcdlite.compactor")

MODE_PERIODIC = "periodic"
MODE_REVISION = "revision"
REVISION_INTERVAL = 300.0  # etcd's revInterval
RETRY_DIVISOR = 10
HOUR = 3600.0

RevisionGetter = Callable[[], int]
Compact = Callable[[int], Awaitable[None]]


def parse_retention(mode: str, retention: str) -> float:
    """etcd's parseCompactionRetention: seconds (periodic) or revisions (revision); 0 is off."""
    if mode not in (MODE_PERIODIC, MODE_REVISION):
        raise ConfigError(f'unknown auto-compaction-mode "{mode}"')
    try:
        hours_or_revisions = int(retention)
    except ValueError:
        hours_or_revisions = -1
    if hours_or_revisions >= 0:
        return float(hours_or_revisions) * (HOUR if mode == MODE_PERIODIC else 1)
    try:
        seconds = parse_go_duration(retention.strip())
    except ValueError:
        raise ConfigError(f'error parsing CompactionRetention: time: invalid duration "{retention}"') from None
    if mode == MODE_REVISION:  # etcd takes the duration's nanoseconds as a revision count
        return float(int(seconds * 1e9))
    return seconds


class Compactor(abc.ABC):
    """Owns the compaction task: ``start()``, ``close()``, ``wait_closed()``."""

    def __init__(self, revision: RevisionGetter, compact: Compact, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._revision = revision
        self._compact = compact
        self._clock = clock
        self._task = OwnedTask(type(self).__name__, self._run)

    @abc.abstractmethod
    async def _run(self) -> None:
        """The compaction loop (runs until cancelled)."""

    def start(self) -> None:
        self._task.start()

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        await self._task.wait()

    async def _try(self, rev: int, fields: dict[str, object]) -> bool:
        """Compact to ``rev``; "already compacted" counts as done, as in etcd."""
        try:
            await self._compact(rev)
        except errors.EtcdError as exc:
            if exc.message == errors.COMPACTED.message:
                return True
            log.warning("failed auto compaction", extra={"fields": {**fields, "revision": rev,
                                                                    "error": exc.message}})
            return False
        return True


class PeriodicCompactor(Compactor):
    def __init__(self, period: float, revision: RevisionGetter, compact: Compact,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(revision, compact, clock)
        self.period = period
        self.interval = min(period, HOUR)
        self.retry_interval = self.interval / RETRY_DIVISOR
        self.retentions = int(period / self.retry_interval) + 1

    async def _run(self) -> None:
        last_success = self._clock()
        base = self.period
        revs: list[int] = []
        while True:
            revs.append(self._revision())
            if len(revs) > self.retentions:
                del revs[0]  # revs[0] is the revision one period ago
            await asyncio.sleep(self.retry_interval)
            if self._clock() - last_success < base:
                continue
            base = self.interval
            rev = revs[0]
            fields: dict[str, object] = {"compact-period": f"{self.period}s"}
            log.info("starting auto periodic compaction", extra={"fields": {**fields, "revision": rev}})
            if await self._try(rev, fields):
                log.info("completed auto periodic compaction", extra={"fields": {**fields, "revision": rev}})
                last_success = self._clock()


class RevisionCompactor(Compactor):
    def __init__(self, retention: int, revision: RevisionGetter, compact: Compact,
                 interval: float = REVISION_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(revision, compact, clock)
        self.retention = retention
        self.interval = interval

    async def _run(self) -> None:
        prev = 0
        while True:
            await asyncio.sleep(self.interval)
            rev = self._revision() - self.retention
            if rev <= 0 or rev == prev:
                continue
            fields: dict[str, object] = {"revision-compaction-retention": self.retention}
            log.info("starting auto revision compaction", extra={"fields": {**fields, "revision": rev}})
            if await self._try(rev, fields):
                prev = rev
                log.info("completed auto revision compaction", extra={"fields": {**fields, "revision": rev}})


def new_compactor(mode: str, retention: str, revision: RevisionGetter, compact: Compact) -> Compactor | None:
    """The compactor the flags ask for, or None when retention is 0 (etcd's default: off)."""
    amount = parse_retention(mode, retention)
    if amount <= 0:
        return None
    if mode == MODE_PERIODIC:
        return PeriodicCompactor(amount, revision, compact)
    return RevisionCompactor(int(amount), revision, compact)
