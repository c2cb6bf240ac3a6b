"""What etcd's HTTP endpoints ask of the server: /health, /livez and /readyz checks (etcd 3.5's
checkV3Health, 3.6's check registries) and the figures /metrics reads at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .. import errors
from ..core.alarm import CORRUPT, NOSPACE, alarm_name
from ..core.server import Core
from ..pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("etcdlite.http")


class HealthCounters:
    """etcd_server_health_success / _failures."""

    def __init__(self) -> None:
        self.success = 0
        self.failures = 0


@dataclass
class NodeFigures:
    """What /metrics reads from the server at scrape time (kept apart so it is easy to test)."""

    member_id: int
    revision: int
    compact_revision: int
    keys: int
    applied_index: int
    db_size: int
    quota_bytes: int
    watch_streams: int | None = None
    watchers: int | None = None


@dataclass
class Health:
    health: bool
    reason: str = ""


class HealthChecks:
    """The checks behind /health, /livez and /readyz, and the figures /metrics shows."""

    def __init__(self, core: Core, health: HealthCounters) -> None:
        self._core = core
        self._counters = health
        self.stopping = False  # set once the server begins to stop: reads then fail as "server stopped"

    def read(self, serializable: bool) -> str | None:
        """etcd's Range{KeysOnly, Limit: 1}; the error text, or None when it is served."""
        if self.stopping:
            return errors.STOPPED.message
        try:
            if not serializable:
                self._core.backend.check_readable()  # a shared store out of reach fails linearizable reads
            self._core.kv.range(pb.RangeRequest(keys_only=True, limit=1, serializable=serializable))
        except errors.EtcdError as exc:
            return exc.message
        return None

    def alarms(self, excluded: set[str]) -> Health:
        for member in self._core.alarms.get():
            name = alarm_name(member.alarm)
            if name in excluded:
                continue
            reason = {NOSPACE: "ALARM NOSPACE", CORRUPT: "ALARM CORRUPT"}.get(member.alarm, "ALARM UNKNOWN")
            log.warning("serving /health false due to an alarm", extra={"fields": {"alarm": name}})
            return Health(False, reason)
        return Health(True)

    def health(self, excluded: set[str], serializable: bool) -> Health:
        """etcd 3.5's checkV3Health: alarms, then the leader (always this member), then a read."""
        h = self.alarms(excluded)
        if h.health:
            error = self.read(serializable)
            if error is not None:
                log.warning("serving /health false; Range fails", extra={"fields": {"error": error}})
                h = Health(False, f"RANGE ERROR:{error}")
        if h.health:
            self._counters.success += 1
        else:
            self._counters.failures += 1
        return h

    def registry(self, kind: str) -> dict[str, Callable[[], str | None]]:
        """The named checks of /livez or /readyz: each returns an error text or None."""
        checks: dict[str, Callable[[], str | None]] = {"serializable_read": lambda: self.read(True)}
        if kind == "readyz":
            checks["data_corruption"] = lambda: (
                "alarm activated: CORRUPT" if self._core.alarms.active(CORRUPT) else None)
            checks["linearizable_read"] = lambda: self.read(False)
        return checks

    def figures(self) -> NodeFigures:
        core = self._core
        backend = core.backend
        return NodeFigures(member_id=core.member_id, revision=backend.visible_revision,
                           compact_revision=backend.compact_revision, keys=backend.key_count(),
                           applied_index=core.raft_index, db_size=core.db_size(), quota_bytes=core.quota_bytes)
