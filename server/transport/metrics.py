"""``/metrics``: etcd's Prometheus series, in the text format Go's promhttp writes.

Counting is plain integer increments where the work happens (the gRPC handler guard in
``api/__init__.py``, the health handlers); everything else is read from the node when
``/metrics`` is scraped.  Series names, HELP texts and label sets are etcd 3.5's.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from ..api.health import HealthCounters, NodeFigures
from ..version import CLUSTER_VERSION, SERVER_VERSION

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# grpc-go's names for the status codes, indexed by code number
GO_CODE_NAMES = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
                 "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
                 "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated")


def code_number(code: grpc.StatusCode) -> int:
    return code.value[0]


def grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming and server_streaming:
        return "bidi_stream"
    if client_streaming:
        return "client_stream"
    if server_streaming:
        return "server_stream"
    return "unary"


class MethodStats:
    """One RPC's counters: a started count and a handled count per status code."""

    __slots__ = ("service", "method", "type", "started", "handled", "observe")

    def __init__(self, service: str, method: str, rpc_type: str) -> None:
        self.service = service
        self.method = method
        self.type = rpc_type
        self.started = 0
        self.handled = [0] * len(GO_CODE_NAMES)
        # called with (request, response) after a successful unary call, if set
        self.observe: Callable[[Any, Any], None] | None = None

    def done(self, code: grpc.StatusCode) -> None:
        self.handled[code_number(code)] += 1


class GrpcMetrics:
    """grpc_server_started_total / grpc_server_handled_total, as go-grpc-prometheus keeps them."""

    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}

    def register(self, service: str, method: str, rpc_type: str) -> MethodStats:
        stats = MethodStats(service, method, rpc_type)
        self.methods[f"/{service}/{method}"] = stats
        return stats


@dataclass
class MvccCounters:
    """etcd_mvcc_{range,put,delete,txn}_total, counted per operation as etcd's metricsTxnWrite."""

    range: int = 0
    put: int = 0
    delete: int = 0
    txn: int = 0

    def _end(self, ranges: int, puts: int, deletes: int) -> None:
        if ranges + puts + deletes > 1:
            self.txn += 1
        self.range += ranges
        self.put += puts
        self.delete += deletes

    def observe_range(self, request: Any, response: Any) -> None:
        self._end(1, 0, 0)

    def observe_put(self, request: Any, response: Any) -> None:
        reads = 1 if (request.prev_kv or request.ignore_value or request.ignore_lease) else 0
        self._end(reads, 1, 0)

    def observe_delete(self, request: Any, response: Any) -> None:
        self._end(1 if request.prev_kv else 0, 0, 1)

    def observe_txn(self, request: Any, response: Any) -> None:
        counts = [0, 0, 0]
        _count_txn(request, response, counts)
        self._end(*counts)


def _count_txn(request: Any, response: Any, counts: list[int]) -> None:
    counts[0] += len(request.compare)
    ops = request.success if response.succeeded else request.failure
    for op, result in zip(ops, response.responses):
        which = op.WhichOneof("request")
        if which == "request_range":
            counts[0] += 1
        elif which == "request_put":
            put = op.request_put
            counts[0] += 1 if (put.prev_kv or put.ignore_value or put.ignore_lease) else 0
            counts[1] += 1
        elif which == "request_delete_range":
            counts[0] += 1 if op.request_delete_range.prev_kv else 0
            counts[2] += 1
        elif which == "request_txn":
            _count_txn(op.request_txn, result.response_txn, counts)


@dataclass
class ServerMetrics:
    """Everything counted in this process; read by ``render``."""

    grpc: GrpcMetrics = field(default_factory=GrpcMetrics)
    mvcc: MvccCounters = field(default_factory=MvccCounters)
    health: HealthCounters = field(default_factory=HealthCounters)

    def wire_kv_observers(self) -> None:
        """Count KV operations after each successful KV call (registered methods only)."""
        observers = {"Range": self.mvcc.observe_range, "Put": self.mvcc.observe_put,
                     "DeleteRange": self.mvcc.observe_delete, "Txn": self.mvcc.observe_txn}
        for stats in self.grpc.methods.values():
            if stats.service == "etcdserverpb.KV" and stats.method in observers:
                stats.observe = observers[stats.method]


# -- the text format ---------------------------------------------------------------------------

def go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64), as Prometheus' Go client writes sample values."""
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(v)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    dp = len(ds) + int(exponent)  # where the decimal point goes
    x = dp - 1
    neg = "-" if sign else ""
    if x < -4 or x >= 6:  # Go's shortest 'g' switches to an exponent at these
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= len(ds):
        return f"{neg}{ds}{'0' * (dp - len(ds))}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


Sample = tuple[dict[str, str], float]


class Exposition:
    """Collects metric families and writes them sorted by name, series sorted by labels."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[Sample]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float | None = None,
            samples: Iterable[Sample] = ()) -> None:
        series = list(samples)
        if value is not None:
            series.append(({}, value))
        self._families[name] = (kind, help_text, series)

    def render(self) -> str:
        out: list[str] = []
        for name in sorted(self._families):
            kind, help_text, series = self._families[name]
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            for labels, value in sorted(series, key=lambda s: sorted(s[0].items())):
                if labels:
                    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                    out.append(f"{name}{{{inner}}} {go_float(value)}\n")
                else:
                    out.append(f"{name} {go_float(value)}\n")
        return "".join(out)


def add_grpc(exp: Exposition, grpc_metrics: GrpcMetrics) -> None:
    started: list[Sample] = []
    handled: list[Sample] = []
    for s in grpc_metrics.methods.values():
        labels = {"grpc_method": s.method, "grpc_service": s.service, "grpc_type": s.type}
        started.append((labels, s.started))
        for i, count in enumerate(s.handled):
            handled.append(({**labels, "grpc_code": GO_CODE_NAMES[i]}, count))
    exp.add("grpc_server_started_total", "counter", "Total number of RPCs started on the server.",
            samples=started)
    exp.add("grpc_server_handled_total", "counter",
            "Total number of RPCs completed on the server, regardless of success or failure.", samples=handled)


# -- process_* (what Go's process collector reports, read from /proc) --------------------------

_START = time.time()


def _proc_stat() -> tuple[float, int, int, float] | None:
    """(cpu seconds, virtual bytes, resident bytes, start time) from /proc, or None."""
    try:
        stat = Path("/proc/self/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    start = boot + int(fields[19]) / ticks
    return cpu, int(fields[20]), int(fields[21]) * resource.getpagesize(), start


def _limit(value: int) -> float:
    return float(2**64 - 1) if value == resource.RLIM_INFINITY else float(value)


def add_process(exp: Exposition) -> None:
    stat = _proc_stat()
    if stat is not None:
        cpu, vsize, rss, start = stat
    else:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, vsize, rss, start = usage.ru_utime + usage.ru_stime, 0, usage.ru_maxrss * 1024, _START
    try:
        open_fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_fds = 0
    max_fds = _limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    exp.add("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu)
    exp.add("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds)
    exp.add("process_open_fds", "gauge", "Number of open file descriptors.", open_fds)
    exp.add("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss)
    exp.add("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
            round(start, 2))
    if vsize:
        exp.add("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize)
    exp.add("process_virtual_memory_max_bytes", "gauge",
            "Maximum amount of virtual memory available in bytes.", _limit(resource.getrlimit(resource.RLIMIT_AS)[0]))
    exp.add("os_fd_used", "gauge", "The number of used file descriptors.", open_fds)
    exp.add("os_fd_limit", "gauge", "The file descriptor limit.", max_fds)
    v = sys.version_info
    exp.add("python_info", "gauge", "Python platform information", samples=[(
        {"implementation": sys.implementation.name, "major": str(v.major), "minor": str(v.minor),
         "patchlevel": str(v.micro), "version": f"{v.major}.{v.minor}.{v.micro}"}, 1)])


# -- etcd_* from the node ----------------------------------------------------------------------


def add_etcd(exp: Exposition, m: ServerMetrics, fig: NodeFigures) -> None:
    add = exp.add
    add("etcd_cluster_version", "gauge",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        samples=[({"cluster_version": CLUSTER_VERSION.rsplit(".", 1)[0]}, 1)])
    add("etcd_server_version", "gauge", "Which version is running. 1 for 'server_version' label with current version.",
        samples=[({"server_version": SERVER_VERSION}, 1)])
    add("etcd_server_id", "gauge", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        samples=[({"server_id": f"{fig.member_id:x}"}, 1)])
    add("etcd_server_has_leader", "gauge", "Whether or not a leader exists. 1 is existence, 0 is not.", 1)
    add("etcd_server_is_leader", "gauge", "Whether or not this member is a leader. 1 if is, 0 otherwise.", 1)
    add("etcd_server_is_learner", "gauge", "Whether or not this member is a learner. 1 if is, 0 otherwise.", 0)
    add("etcd_server_leader_changes_seen_total", "counter", "The number of leader changes seen.", 1)
    add("etcd_server_proposals_committed_total", "gauge", "The total number of consensus proposals committed.",
        fig.applied_index)
    add("etcd_server_proposals_applied_total", "gauge", "The total number of consensus proposals applied.",
        fig.applied_index)
    add("etcd_server_proposals_pending", "gauge", "The current number of pending proposals to commit.", 0)
    add("etcd_server_proposals_failed_total", "counter", "The total number of failed proposals seen.", 0)
    add("etcd_server_quota_backend_bytes", "gauge", "Current backend storage quota size in bytes.", fig.quota_bytes)
    add("etcd_server_health_success", "counter", "The total number of successful health checks", m.health.success)
    add("etcd_server_health_failures", "counter", "The total number of failed health checks", m.health.failures)
    add("etcd_debugging_mvcc_current_revision", "gauge", "The current revision of store.", fig.revision)
    add("etcd_debugging_mvcc_compact_revision", "gauge", "The revision of the last compaction in store.",
        fig.compact_revision)
    add("etcd_debugging_mvcc_keys_total", "gauge", "Total number of keys.", fig.keys)
    if fig.watch_streams is not None:
        add("etcd_debugging_mvcc_watch_stream_total", "gauge", "Total number of watch streams.", fig.watch_streams)
    if fig.watchers is not None:
        add("etcd_debugging_mvcc_watcher_total", "gauge", "Total number of watchers.", fig.watchers)
    add("etcd_mvcc_db_total_size_in_bytes", "gauge",
        "Total size of the underlying database physically allocated in bytes.", fig.db_size)
    add("etcd_mvcc_range_total", "counter", "Total number of ranges seen by this member.", m.mvcc.range)
    add("etcd_mvcc_put_total", "counter", "Total number of puts seen by this member.", m.mvcc.put)
    add("etcd_mvcc_delete_total", "counter", "Total number of deletes seen by this member.", m.mvcc.delete)
    add("etcd_mvcc_txn_total", "counter", "Total number of txns seen by this member.", m.mvcc.txn)


def render(m: ServerMetrics, fig: NodeFigures) -> str:
    exp = Exposition()
    add_etcd(exp, m, fig)
    add_grpc(exp, m.grpc)
    add_process(exp)
    return exp.render()
