"""etcd's Downgrade RPC for one member: target versions parsed as etcd parses them, and the job's state.

etcd (server/etcdserver/v3_server.go) reads the target with coreos/go-semver ("major.minor.patch",
optional "-pre" and "+meta", numbers as strconv.ParseInt takes them, leading zeros included) and,
failing that, as "major.minor"; only the cluster version's minor minus one is a valid target.
ENABLE records the job, CANCEL clears it; etcd 3.5.1 answers both only after its 7 s request
timeout (though it applies them), etcdlite answers as later etcd releases do, at once.  The job
is not kept across restarts (etcd keeps it in its backend).
"""

from __future__ import annotations

import re

from ..errors import Code, EtcdError

WRONG_FORMAT = EtcdError(Code.INVALID_ARGUMENT, "etcdserver: wrong downgrade target version format")
INVALID_TARGET = EtcdError(Code.INVALID_ARGUMENT, "etcdserver: invalid downgrade target version")
IN_PROGRESS = EtcdError(Code.FAILED_PRECONDITION, "etcdserver: cluster has a downgrade job in progress")
NO_JOB = EtcdError(Code.FAILED_PRECONDITION, "etcdserver: no inflight downgrade job")
UNKNOWN_METHOD = EtcdError(Code.UNKNOWN, "etcdserver: unknown method")

_IDENTIFIER = re.compile(r"[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*")
_GO_INT = re.compile(r"[+-]?[0-9]+")


def _go_semver(text: str) -> tuple[int, int, int] | None:
    """coreos/go-semver's Version.Set; None where it fails."""
    text, _, metadata = text.partition("+") if "+" in text else (text, "", "")
    text, _, pre = text.partition("-") if "-" in text else (text, "", "")
    for ident in (pre, metadata):
        if ident and not _IDENTIFIER.fullmatch(ident):
            return None
    parts = text.split(".", 2)
    if len(parts) != 3 or not all(_GO_INT.fullmatch(p) for p in parts):
        return None
    major, minor, patch = (int(p) for p in parts)
    return major, minor, patch


def cluster_version_of(target: str) -> tuple[int, int]:
    """etcd's convertToClusterVersion: (major, minor) of "X.Y.Z[-pre][+meta]" or "X.Y"."""
    parsed = _go_semver(target) or _go_semver(target + ".0")
    if parsed is None:
        raise WRONG_FORMAT
    return parsed[0], parsed[1]


class Downgrade:
    """The downgrade job of a cluster whose version is ``cluster_version`` ("3.5.0")."""

    def __init__(self, cluster_version: str) -> None:
        major, minor = (int(x) for x in cluster_version.split(".")[:2])
        self.allowed = (major, minor - 1)
        self.target: tuple[int, int] | None = None  # while a job is in progress

    def validate(self, version: str) -> tuple[int, int]:
        target = cluster_version_of(version)
        if target != self.allowed:
            raise INVALID_TARGET
        if self.target is not None:
            raise IN_PROGRESS
        return target

    def enable(self, version: str) -> None:
        self.target = self.validate(version)

    def cancel(self) -> None:
        if self.target is None:
            raise NO_JOB
        self.target = None
