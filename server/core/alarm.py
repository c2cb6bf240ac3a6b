"""etcd's alarm store: raised alarms per (member, type), kept across restarts in ``member/alarms``.

A NOSPACE alarm caps the server as etcd's applierV3Capped does (puts, txns with puts and lease
grants fail with "database space exceeded") until ``etcdctl alarm disarm``; a CORRUPT alarm makes
those writes fail with "corrupt cluster".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from .. import errors
from ..pb.etcdserverpb import rpc_pb2 as pb
from ..storage.backend import SharedState
from ..storage.fsutil import write_atomic

log = logging.getLogger("etcdlite.alarm")

ALARMS_FILE = "alarms"  # in member/: a JSON list of [alarm type, member ID]
NONE, NOSPACE, CORRUPT = pb.NONE, pb.NOSPACE, pb.CORRUPT
SHARED_NAME = "alarms"  # the document's name in a shared backend
KNOWN = frozenset({NOSPACE, CORRUPT})  # what etcd 3.5 can raise; it panics on any other type


def unknown_alarm(alarm: int) -> errors.EtcdError:
    """Refused before anything is stored (etcd 3.5.1 stores it, then panics in its apply loop)."""
    return errors.EtcdError(errors.Code.INVALID_ARGUMENT, f"etcdserver: unknown alarm type {alarm}")


def alarm_name(alarm: int) -> str:
    """Go's String() of an AlarmType: its name, or the bare number for one the proto does not know."""
    try:
        return pb.AlarmType.Name(alarm)
    except ValueError:
        return str(alarm)


def describe(member: pb.AlarmMember) -> str:
    """Go's String() of an AlarmMember, as etcd puts it in StatusResponse.errors."""
    out = f"memberID:{member.memberID} " if member.memberID else ""
    return out + f"alarm:{alarm_name(member.alarm)} "


def encode_alarms(alarms: Iterable[tuple[int, int]]) -> bytes:
    """The alarms file's content: (alarm type, member ID) pairs."""
    return json.dumps(sorted(alarms)).encode()


class AlarmStore:
    def __init__(self, path: Path | None = None, fsync: bool = True) -> None:
        self._path = path
        self._fsync = fsync
        self._alarms: set[tuple[int, int]] = set()  # (alarm type, member id)
        self._shared: SharedState | None = None

    def use_shared(self, shared: SharedState) -> None:
        """Keep the alarms in a shared backend (every instance sees them) instead of the file."""
        self._shared = shared

    def load(self) -> None:
        if self._shared is not None:
            data = self._shared.load(SHARED_NAME)
            if data is not None:
                self.replace(data)
            return
        if self._path is None or not self._path.exists():
            return
        try:
            pairs = json.loads(self._path.read_bytes())
            alarms = {(int(alarm), int(member)) for alarm, member in pairs}
        except (OSError, ValueError, TypeError) as exc:  # never a reason not to serve: the file is advisory
            log.warning("ignoring an unreadable alarms file", extra={"fields": {"path": str(self._path),
                                                                                 "error": str(exc)}})
            return
        for alarm, member in sorted(alarms):
            if alarm not in KNOWN:
                log.warning("ignoring an alarm of unknown type in the alarms file", extra={"fields": {
                    "path": str(self._path), "alarm": alarm, "from": f"{member & 0xFFFFFFFFFFFFFFFF:x}"}})
        self._alarms = {(alarm, member) for alarm, member in alarms if alarm in KNOWN}

    def replace(self, data: bytes) -> None:
        """The whole set, as saved (a shared backend's instances apply each other's changes)."""
        pairs = json.loads(data)
        self._alarms = {(int(alarm), int(member)) for alarm, member in pairs}

    def _save(self) -> None:
        if self._shared is not None:
            self._shared.save(SHARED_NAME, json.dumps(sorted(self._alarms)).encode())
            return
        if self._path is None:
            return
        try:
            write_atomic(self._path, encode_alarms(self._alarms), self._fsync)
        except OSError as exc:  # the alarm still holds in memory
            log.warning("cannot persist alarms", extra={"fields": {"path": str(self._path), "error": str(exc)}})

    def get(self, alarm: int = NONE) -> list[pb.AlarmMember]:
        return [pb.AlarmMember(memberID=m, alarm=cast(pb.AlarmType, a))
                for a, m in sorted(self._alarms) if alarm in (NONE, a)]

    def active(self, alarm: int) -> bool:
        return any(a == alarm for a, _ in self._alarms)

    def activate(self, member_id: int, alarm: int) -> pb.AlarmMember | None:
        """Raise an alarm (NONE raises nothing, as etcd 3.5); returns it, raised now or before."""
        if alarm == NONE:
            return None
        if alarm not in KNOWN:
            raise unknown_alarm(alarm)
        if (alarm, member_id) not in self._alarms:
            first = not self.active(alarm)
            self._alarms.add((alarm, member_id))
            self._save()
            if first:
                log.warning("alarm raised", extra={"fields": {"alarm": alarm_name(alarm),
                                                              "from": f"{member_id:x}"}})
        return pb.AlarmMember(memberID=member_id, alarm=cast(pb.AlarmType, alarm))

    def deactivate(self, member_id: int, alarm: int) -> pb.AlarmMember | None:
        if (alarm, member_id) not in self._alarms:
            return None
        self._alarms.discard((alarm, member_id))
        self._save()
        if not self.active(alarm):
            log.warning("alarm disarmed", extra={"fields": {"alarm": alarm_name(alarm),
                                                            "from": f"{member_id:x}"}})
        return pb.AlarmMember(memberID=member_id, alarm=cast(pb.AlarmType, alarm))
