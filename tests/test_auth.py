"""Auth: etcdlite against real etcd 3.5.1, through etcdctl and through gRPC with tokens.

* every etcdctl auth command (user, role, auth; the error cases too): outputs compared
  after dropping the client's own log lines;
* the permission matrix: read / write / readwrite roles on a key, a prefix, a range and
  a from-key range, against get, range, put, delete, txn (compares and both branches),
  watch, lease revoke with attached keys, lease time-to-live and compact: every answer
  compared;
* management errors, UserGet/RoleGet on oneself, admin-only RPCs, bad tokens, tokens
  of deleted users, simple and JWT tokens (JWTs carry the auth revision: "revision of
  auth store is old" after a change), the auth state surviving a restart.

Where etcd 3.5.1 lets a request through that later etcd 3.5 releases refuse (nested
txns, a from-key watch checked as one key, LeaseTimeToLive's keys), etcdlite refuses
it; those answers are asserted separately, for each server (see ``KNOWN``).

Both servers run with ``--bcrypt-cost 4`` to keep the tests fast.
"""

from __future__ import annotations

import base64
import collections
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from etcdlite.config import ConfigError
from etcdlite.core.auth import model
from etcdlite.core.auth import tokens as tokenmod
from etcdlite.core.auth.store import AuthStore
from etcdlite.errors import EtcdError
from etcdlite.pb.authpb import auth_pb2
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import (
    ETCD_BIN,
    Client,
    Err,
    EtcdProcess,
    Stubs,
    delete_req,
    diff_transcripts,
    put_req,
    range_req,
    run_parallel,
    to_data,
    txn_req,
)

FAST = ("--bcrypt-cost", "4")
ROOT_PW = "rootpw"

E_USER_EMPTY = Err("INVALID_ARGUMENT", "etcdserver: user name is empty")
E_DENIED = Err("PERMISSION_DENIED", "etcdserver: permission denied")
E_BAD_TOKEN = Err("UNAUTHENTICATED", "etcdserver: invalid auth token")
E_AUTH_FAILED = Err("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
E_OLD_REVISION = Err("UNKNOWN", "auth: revision in header is old")  # etcd 3.5.1 leaves it unconverted
E_NOT_ENABLED = Err("FAILED_PRECONDITION", "etcdserver: authentication is not enabled")
E_NO_PASSWORD_USER = Err("UNKNOWN", "auth: authentication failed, password was given for no password user")
WATCH_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"


# -- servers and clients -------------------------------------------------------------------------
def _targets(config: pytest.Config) -> list[str]:
    try:
        choice = config.getoption("--target")
    except ValueError:
        choice = "both"
    targets = ["etcdlite", "etcd"] if choice == "both" else [choice]
    return [t for t in targets if t != "etcd" or ETCD_BIN is not None]


@pytest.fixture
def targets(request: pytest.FixtureRequest) -> list[str]:
    return _targets(request.config)


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds fixed metadata (the ``token``) to every call."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._md = metadata

    def _details(self, d: grpc.ClientCallDetails) -> _Details:
        return _Details(d.method, d.timeout, [*(d.metadata or []), *self._md], d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, cont, details, request):  # type: ignore[no-untyped-def]
        return cont(self._details(details), request)

    def intercept_unary_stream(self, cont, details, request):  # type: ignore[no-untyped-def]
        return cont(self._details(details), request)

    def intercept_stream_unary(self, cont, details, it):  # type: ignore[no-untyped-def]
        return cont(self._details(details), it)

    def intercept_stream_stream(self, cont, details, it):  # type: ignore[no-untyped-def]
        return cont(self._details(details), it)


def as_user(c: Client, token: str | None, key: str = "token") -> Client:
    """A client on the same server sending ``token``; it records into ``c``'s transcript."""
    channel = c.stubs.channel if token is None else grpc.intercept_channel(c.stubs.channel,
                                                                           _Metadata([(key, token)]))
    u = Client(Stubs.for_channel(channel), name=c.name)
    u.transcript, u.requests, u.aliases = c.transcript, c.requests, c.aliases
    return u


def token_of(c: Client, name: str, password: str) -> str:
    """Authenticate (recorded as a success or failure; the token itself differs between servers)."""
    r = c.stubs.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=c.timeout)
    c.record(f"Authenticate({name})", "ok")
    return r.token


def login(c: Client, name: str, password: str) -> Client:
    return as_user(c, token_of(c, name, password))


def watch_create(c: Client, creq: pb.WatchCreateRequest) -> Any:
    """Open a Watch stream, create one watcher, record the first answer."""
    call = c.stubs.watch.Watch(iter([pb.WatchRequest(create_request=creq)]), timeout=c.timeout)
    try:
        out: Any = to_data(next(call), c.aliases)
    except grpc.RpcError as exc:
        out = Err(exc.code().name, exc.details())
    finally:
        call.cancel()
    return c.record(f"Watch.create({creq.key!r}, {creq.range_end!r})", out)


def auth_call(c: Client, rpc: str, request: Any) -> Any:
    """An Auth RPC; an issued token is recorded as "<token>" (its text differs between servers)."""
    out = c.call(f"Auth.{rpc}", request)
    if isinstance(out, dict) and out.get("token"):
        out["token"] = "<token>"
    return out


def start_servers(server_factory: Callable[..., EtcdProcess], targets: list[str],
                  args: tuple[str, ...] | list[str] = FAST) -> dict[str, EtcdProcess]:
    return run_parallel({t: (lambda t=t: server_factory(t, args=list(args))) for t in targets})


def run_scenario(servers: dict[str, EtcdProcess], scenario: Callable[[Client], Any]) -> dict[str, Any]:
    """Run ``scenario`` on each server; their transcripts must be equal.  Returns each one's value."""
    clients = {t: srv.client() for t, srv in servers.items()}
    for t, c in clients.items():
        c.server = servers[t]  # type: ignore[attr-defined]
    values = run_parallel({t: (lambda t=t: scenario(clients[t])) for t in servers})
    report = diff_transcripts({t: (None, c) for t, c in clients.items()})
    if report:
        pytest.fail(f"etcdlite and etcd answered differently in {scenario.__name__}:\n{report}", pytrace=False)
    return values


def setup_root(c: Client) -> Client:
    """root with the root role, auth enabled; returns root's client."""
    auth_call(c, "UserAdd", pb.AuthUserAddRequest(name="root", password=ROOT_PW))
    auth_call(c, "RoleAdd", pb.AuthRoleAddRequest(name="root"))
    auth_call(c, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
    assert auth_call(c, "AuthEnable", pb.AuthEnableRequest()) == {"header": {"revision": 1}}
    return login(c, "root", ROOT_PW)


# -- etcdctl -------------------------------------------------------------------------------------
_CLIENT_LOG = re.compile(r'^\{"level":')


def ctl(srv: EtcdProcess, *args: str, user: str | None = None, input: str | None = None) -> tuple[int, str, str]:
    """etcdctl's exit code, stdout and stderr without the client library's JSON log lines."""
    extra = ["--user", user] if user else []
    rc, out, err = srv.etcdctl(*extra, *args, input=input)
    err = "\n".join(line for line in err.splitlines() if not _CLIENT_LOG.match(line))
    return rc, out, err


CTL_SCRIPT: list[tuple[tuple[str, ...], str | None]] = [
    # (args, --user) in order; root exists from the third step on
    (("auth", "status"), None),
    (("auth", "enable"), None),  # no root user
    (("user", "add", "root:" + ROOT_PW), None),
    (("user", "add", "alice:apw"), None),
    (("user", "add", "alice:again"), None),
    (("user", "add", "bob", "--no-password"), None),
    (("user", "add", "carol", "--new-user-password", "cpw"), None),
    (("user", "list"), None),
    (("user", "get", "alice"), None),
    (("user", "get", "nobody"), None),
    (("role", "add", "r1"), None),
    (("role", "add", "r1"), None),
    (("role", "add", "r2"), None),
    (("role", "list"), None),
    (("role", "grant-permission", "r1", "read", "a"), None),
    (("role", "grant-permission", "r1", "write", "b", "c"), None),
    (("role", "grant-permission", "r1", "readwrite", "p/", "--prefix"), None),
    (("role", "grant-permission", "r1", "read", "f", "--from-key"), None),
    (("role", "grant-permission", "r1", "write", "a"), None),  # updates a's READ to WRITE
    (("role", "grant-permission", "r2", "readwrite", "x", "--prefix"), None),
    (("role", "grant-permission", "nope", "read", "a"), None),
    (("role", "grant-permission", "r1", "bogus", "a"), None),
    (("role", "get", "r1"), None),
    (("role", "get", "r2"), None),
    (("role", "get", "nope"), None),
    (("user", "grant-role", "alice", "r1"), None),
    (("user", "grant-role", "alice", "r1"), None),  # already granted: ignored
    (("user", "grant-role", "alice", "r2"), None),
    (("user", "grant-role", "alice", "nope"), None),
    (("user", "grant-role", "nobody", "r1"), None),
    (("user", "grant-role", "bob", "r2"), None),
    (("user", "get", "alice"), None),
    (("user", "get", "alice", "--detail"), None),
    (("user", "revoke-role", "alice", "r2"), None),
    (("user", "revoke-role", "alice", "r2"), None),
    (("user", "revoke-role", "nobody", "r2"), None),
    (("role", "revoke-permission", "r1", "b", "c"), None),
    (("role", "revoke-permission", "r1", "p/", "--prefix"), None),
    (("role", "revoke-permission", "r1", "f", "--from-key"), None),
    (("role", "revoke-permission", "r1", "zzz"), None),
    (("role", "revoke-permission", "nope", "a"), None),
    (("role", "get", "r1"), None),
    (("role", "delete", "r2"), None),
    (("role", "delete", "r2"), None),
    (("user", "get", "bob"), None),
    (("user", "delete", "carol"), None),
    (("user", "delete", "carol"), None),
    (("auth", "status"), None),
    (("auth", "enable"), None),  # adds the root role to root, then enables
    (("auth", "status"), None),
    (("auth", "status"), "root:" + ROOT_PW),
    (("auth", "enable"), "root:" + ROOT_PW),
    (("user", "list"), None),
    (("user", "list"), "alice:apw"),
    (("user", "list"), "alice:wrong"),
    (("user", "list"), "bob:x"),
    (("user", "list"), "root:" + ROOT_PW),
    (("role", "list"), "root:" + ROOT_PW),
    (("user", "get", "alice"), "alice:apw"),  # oneself: allowed
    (("user", "get", "root"), "alice:apw"),
    (("role", "get", "r1"), "alice:apw"),  # a role one has: allowed
    (("role", "get", "root"), "alice:apw"),
    (("user", "delete", "root"), "root:" + ROOT_PW),
    (("user", "revoke-role", "root", "root"), "root:" + ROOT_PW),
    (("role", "delete", "root"), "root:" + ROOT_PW),
    (("user", "add", "dave:dpw"), "alice:apw"),
    (("user", "add", "dave:dpw"), "root:" + ROOT_PW),
    (("role", "add", "r3"), "root:" + ROOT_PW),
    (("role", "grant-permission", "r3", "read", "k1", "k9"), "root:" + ROOT_PW),
    (("user", "grant-role", "dave", "r3"), "root:" + ROOT_PW),
    (("get", "k1", "k9"), "dave:dpw"),
    (("get", "k0", "k9"), "dave:dpw"),
    (("put", "k1", "v"), "dave:dpw"),
    (("put", "k1", "v"), "root:" + ROOT_PW),
    (("get", "k1"), "dave:dpw"),
    (("del", "k1"), "dave:dpw"),
    (("get", "", "--prefix"), "dave:dpw"),
    (("get", "", "--prefix", "--keys-only"), "root:" + ROOT_PW),
    (("auth", "status"), "root:" + ROOT_PW),
    (("auth", "disable"), "alice:apw"),
    (("auth", "disable"), "root:" + ROOT_PW),
    (("auth", "status"), None),
    (("get", "k1"), None),
    (("user", "delete", "root"), None),  # allowed once auth is off
    (("user", "list"), None),
]


def test_etcdctl_auth_commands(server_factory, targets):
    servers = start_servers(server_factory, targets)

    def transcript(srv: EtcdProcess) -> list[tuple[str, tuple[int, str, str]]]:
        out = []
        for args, user in CTL_SCRIPT:
            out.append((" ".join(args) + (f" --user {user}" if user else ""), ctl(srv, *args, user=user)))
        out.append(("user passwd", ctl(srv, "user", "passwd", "alice", "--interactive=false", input="new\n")))
        out.append(("get k1 (new password)", ctl(srv, "get", "k1", user="alice:new")))
        out.append(("auth status -w json", _json_status(ctl(srv, "auth", "status", "-w", "json"))))
        return out

    results = run_parallel({t: (lambda t=t: transcript(servers[t])) for t in servers})
    if "etcdlite" not in results:
        return  # --target etcd: the script ran on etcd alone
    lite = results["etcdlite"]
    if "etcd" in results:
        diffs = [f"{name}:\n    etcd:     {e!r}\n    etcdlite: {l!r}"
                 for (name, e), (_, l) in zip(results["etcd"], lite) if e != l]
        assert not diffs, "etcdctl output differs:\n" + "\n".join(diffs)
    # etcdlite's own answers, concretely (also when real etcd is absent)
    first: dict[str, tuple[int, Any, str]] = {}
    for name, res in lite:
        first.setdefault(name, res)
    assert first["role get r1"][1] == ("Role r1\nKV Read:\n\t[f, <open ended>\n\t[p/, p0) (prefix p/)\n"
                                       "KV Write:\n\ta\n\t[b, c) (prefix b)\n\t[p/, p0) (prefix p/)\n")
    assert first["auth enable"][2] == "Error: etcdserver: root user does not exist"
    assert first["user list --user alice:apw"][2] == "Error: etcdserver: permission denied"
    assert [res for name, res in lite if name == "user list"][1][2] == "Error: etcdserver: user name is empty"
    assert first["get k0 k9 --user dave:dpw"][2] == "Error: etcdserver: permission denied"
    assert lite[-2][1] == (0, "k1\nv\n", "")


def _json_status(res: tuple[int, str, str]) -> tuple[int, Any, str]:
    rc, out, err = res
    data = json.loads(out) if rc == 0 else out
    if isinstance(data, dict):
        data.get("header", {}).pop("cluster_id", None)
        data.get("header", {}).pop("member_id", None)
        data.get("header", {}).pop("raft_term", None)
    return rc, data, err


# -- the permission matrix -----------------------------------------------------------------------
# perm shape -> (key, range_end, a key inside, the whole range as (key, end))
SHAPES: dict[str, tuple[bytes, bytes, bytes]] = {
    "key": (b"k", b"", b"k"),
    "prefix": (b"p/", b"p0", b"p/a"),
    "range": (b"r1", b"r5", b"r2"),
    "fromkey": (b"y", b"\x00", b"y1"),
}
KINDS = {"read": auth_pb2.Permission.READ, "write": auth_pb2.Permission.WRITE,
         "readwrite": auth_pb2.Permission.READWRITE}
OUTSIDE = b"o"  # in no shape's range


def matrix_users(root: Client) -> None:
    for kind, ptype in KINDS.items():
        for shape, (key, end, _) in SHAPES.items():
            name = f"{kind}-{shape}"
            auth_call(root, "UserAdd", pb.AuthUserAddRequest(name=name, password="pw"))
            auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name=name))
            perm = auth_pb2.Permission(permType=ptype, key=key, range_end=end)
            auth_call(root, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name=name, perm=perm))
            auth_call(root, "UserGrantRole", pb.AuthUserGrantRoleRequest(user=name, role=name))
    for _, _, inside in SHAPES.values():
        root.put(inside, b"v0")
    root.put(OUTSIDE, b"v0")


def matrix_requests(root: Client, u: Client, shape: str) -> dict[str, Any]:
    """One user's requests; returns the answers etcd 3.5.1 and etcdlite may differ on."""
    key, end, inside = SHAPES[shape]
    whole = (key, end or b"")
    u.get(inside)
    u.get(OUTSIDE)
    u.range(*whole)
    u.range(b"\x00", b"\x00")  # every key
    u.range(inside, b"\x00")  # from inside on
    u.range(b"q", b"a")  # a reversed (empty) range
    u.range(inside, count_only=True)
    u.put(inside, b"v1")
    u.put(OUTSIDE, b"v1")
    u.put(inside, b"v2", prev_kv=True)
    u.call("KV.Put", put_req(inside, b"v3", ignore_value=False))
    u.delete(OUTSIDE)
    u.delete(inside, prev_kv=True)
    root.put(inside, b"v0")
    u.delete(*whole)
    root.put(inside, b"v0")
    # txn: compares and every op of both branches are checked
    cmp_in = pb.Compare(key=inside, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)
    cmp_out = pb.Compare(key=OUTSIDE, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)
    u.call("KV.Txn", txn_req([cmp_in], [range_req(inside)]))
    u.call("KV.Txn", txn_req([cmp_in], [put_req(inside, b"t")]))
    u.call("KV.Txn", txn_req([cmp_out], [range_req(inside)]))
    u.call("KV.Txn", txn_req([cmp_in], [range_req(inside)], [range_req(OUTSIDE)]))
    u.call("KV.Txn", txn_req([], [delete_req(inside, prev_kv=True)], [put_req(OUTSIDE)]))
    root.put(inside, b"v0")
    u.call("KV.Txn", txn_req([cmp_in], [], [range_req(*whole)]))
    # watch
    watch_create(u, pb.WatchCreateRequest(key=inside))
    watch_create(u, pb.WatchCreateRequest(key=OUTSIDE))
    watch_create(u, pb.WatchCreateRequest(key=whole[0], range_end=whole[1]))
    watch_create(u, pb.WatchCreateRequest(key=b"", range_end=b"\x00"))
    # leases: revoking deletes the attached keys
    only_inside = root.grant(100)
    both = root.grant(100)
    bare = root.grant(100)
    root.put(inside, b"l", lease=only_inside["ID"])
    root.put(inside + b"-2", b"l", lease=both["ID"])
    root.put(OUTSIDE, b"l", lease=both["ID"])
    u.ttl(only_inside["ID"])
    u.revoke(both["ID"])
    u.revoke(only_inside["ID"])
    u.revoke(bare["ID"])
    root.revoke(both["ID"])
    root.put(inside, b"v0")
    root.put(OUTSIDE, b"v0")
    u.compact(root.rev())
    # where etcd 3.5.1 is more permissive (see KNOWN)
    with u.quiet():
        lease = root.grant(100)
        root.put(inside, b"l", lease=lease["ID"])
        root.put(OUTSIDE, b"l", lease=lease["ID"])
        known = {  # none of these change anything on either server, so the transcripts stay comparable
            "nested txn": u.call("KV.Txn", txn_req([], [txn_req([], [range_req(OUTSIDE)])])),
            "txn put with an unwritable lease": u.call("KV.Txn", txn_req([], [], [put_req(inside, b"x",
                                                                                    lease=lease["ID"])])),
            "from-key watch": watch_create(u, pb.WatchCreateRequest(key=inside, range_end=b"\x00"))["cancel_reason"],
            "ttl keys": u.ttl(lease["ID"], keys=True),
        }
        root.revoke(lease["ID"])
        root.put(inside, b"v0")
        root.put(OUTSIDE, b"v0")
    return known


def test_permission_matrix(server_factory, targets):
    def scenario(c: Client) -> dict[str, dict[str, Any]]:
        root = setup_root(c)
        matrix_users(root)
        known = {}
        for kind in KINDS:
            for shape in SHAPES:
                name = f"{kind}-{shape}"
                known[name] = matrix_requests(root, login(c, name, "pw"), shape)
        return known

    values = run_scenario(start_servers(server_factory, targets), scenario)
    for target, known in values.items():
        for name, answers in known.items():
            kind = name.split("-")[0]
            writable = kind != "read"
            readable = kind != "write"
            assert answers["nested txn"] == (E_DENIED if target == "etcdlite" else answers["nested txn"])
            if target == "etcdlite":
                assert answers["txn put with an unwritable lease"] == E_DENIED, name
                assert answers["from-key watch"] == (WATCH_DENIED if not name.endswith("fromkey") or not readable
                                                     else ""), name
                assert answers["ttl keys"] == E_DENIED, name
            elif ETCD_BIN is not None:  # etcd 3.5.1 checks none of these
                assert not isinstance(answers["nested txn"], Err), name
                if writable:
                    assert not isinstance(answers["txn put with an unwritable lease"], Err), name
                assert answers["from-key watch"] == ("" if readable else WATCH_DENIED), name
                assert not isinstance(answers["ttl keys"], Err), name


def test_txn_checks_every_branch_and_nested_txn(server_factory, targets):
    """A compare, a failure-branch op or an op in a nested txn out of reach refuses the whole txn."""
    def scenario(c: Client) -> dict[str, Any]:
        root = setup_root(c)
        auth_call(root, "UserAdd", pb.AuthUserAddRequest(name="u", password="pw"))
        auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name="rw"))
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a/", range_end=b"a0")
        auth_call(root, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="rw", perm=perm))
        auth_call(root, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="u", role="rw"))
        u = login(c, "u", "pw")
        u.txn([], [put_req("a/1", "x")], [put_req("b", "x")])
        u.txn([pb.Compare(key=b"b", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"")],
              [put_req("a/1", "x")])
        u.txn([], [txn_req([], [put_req("a/2", "x")])])
        with u.quiet():
            nested = u.call("KV.Txn", txn_req([], [txn_req([], [], [put_req("b", "x")])]))
            deep = u.call("KV.Txn", txn_req([], [txn_req([], [txn_req([], [range_req("b")])])]))
        root.get("b")
        return {"nested": nested, "deep": deep}

    values = run_scenario(start_servers(server_factory, targets), scenario)
    if "etcdlite" in values:
        assert values["etcdlite"] == {"nested": E_DENIED, "deep": E_DENIED}


# -- management, tokens and errors over gRPC ------------------------------------------------------
def test_management_errors_and_tokens(server_factory, targets):
    def scenario(c: Client) -> dict[str, Any]:
        a = lambda rpc, req, cl=c: auth_call(cl, rpc, req)  # noqa: E731
        seen: dict[str, Any] = {}
        a("AuthStatus", pb.AuthStatusRequest())
        a("AuthDisable", pb.AuthDisableRequest())
        seen["not enabled"] = a("Authenticate", pb.AuthenticateRequest(name="root", password="x"))
        a("UserAdd", pb.AuthUserAddRequest(name="", password="x"))
        a("RoleAdd", pb.AuthRoleAddRequest(name=""))
        a("UserAdd", pb.AuthUserAddRequest(name="root", password=ROOT_PW))
        a("AuthEnable", pb.AuthEnableRequest())  # root without the root role
        a("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))  # no such role: fine for root
        a("UserGet", pb.AuthUserGetRequest(name="root"))
        a("RoleGet", pb.AuthRoleGetRequest(role="root"))
        a("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="x"))  # no perm given
        a("UserAdd", pb.AuthUserAddRequest(name="np", options=auth_pb2.UserAddOptions(no_password=True)))
        a("UserChangePassword", pb.AuthUserChangePasswordRequest(name="np", password="p"))
        a("UserChangePassword", pb.AuthUserChangePasswordRequest(name="nobody", password="p"))
        a("UserAdd", pb.AuthUserAddRequest(name="long", password="x" * 100))
        a("UserAdd", pb.AuthUserAddRequest(name="empty", password=""))
        a("UserAdd", pb.AuthUserAddRequest(name="u", password="pw"))
        a("RoleAdd", pb.AuthRoleAddRequest(name="r"))
        for key, end in ((b"b", b""), (b"a", b"c"), (b"a", b""), (b"a", b"b"), (b"a", b"c"), (b"0", b"\x00")):
            perm = auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=key, range_end=end)
            a("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="r", perm=perm))
        a("RoleGet", pb.AuthRoleGetRequest(role="r"))
        a("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="r", key=b"a", range_end=b"b"))
        a("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="r", key=b"a", range_end=b"b"))
        a("UserGrantRole", pb.AuthUserGrantRoleRequest(user="u", role="r"))
        a("UserList", pb.AuthUserListRequest())
        a("RoleList", pb.AuthRoleListRequest())
        a("AuthEnable", pb.AuthEnableRequest())
        a("AuthEnable", pb.AuthEnableRequest())  # no user: refused before anything else
        c.get("a")
        seen["no password user"] = a("Authenticate", pb.AuthenticateRequest(name="np", password=""))
        seen["unknown user"] = a("Authenticate", pb.AuthenticateRequest(name="nobody", password="x"))
        a("Authenticate", pb.AuthenticateRequest(name="", password=""))
        a("Authenticate", pb.AuthenticateRequest(name="empty", password=""))
        seen["72 bytes count"] = a("Authenticate", pb.AuthenticateRequest(name="long",
                                                                          password="x" * 72 + "different tail"))
        a("Authenticate", pb.AuthenticateRequest(name="long", password="x" * 71))
        bad = as_user(c, "abcdefghijklmnop.1")
        seen["bad token"] = bad.get("a")
        as_user(c, "not-a-token").put("a", "x")
        as_user(c, "nodot").compact(1)
        watch_create(bad, pb.WatchCreateRequest(key=b"a"))
        auth_call(bad, "Authenticate", pb.AuthenticateRequest(name="u", password="pw"))  # a bad token is ignored
        root = login(c, "root", ROOT_PW)
        u = login(c, "u", "pw")
        as_user(c, token_of(c, "u", "pw"), key="authorization").get("a")  # the gateway's header name
        u.get("a")
        u.get("b")
        u.range("a", "c")
        u.range("a", "d")
        u.range("0", "\x00")
        auth_call(u, "UserGet", pb.AuthUserGetRequest(name="u"))
        auth_call(u, "UserGet", pb.AuthUserGetRequest(name="root"))
        auth_call(u, "RoleGet", pb.AuthRoleGetRequest(role="r"))
        auth_call(u, "RoleGet", pb.AuthRoleGetRequest(role="root"))
        auth_call(u, "AuthStatus", pb.AuthStatusRequest())
        auth_call(u, "UserDelete", pb.AuthUserDeleteRequest(name="u"))
        auth_call(root, "AuthStatus", pb.AuthStatusRequest())
        auth_call(root, "UserDelete", pb.AuthUserDeleteRequest(name="root"))
        auth_call(root, "RoleDelete", pb.AuthRoleDeleteRequest(role="root"))
        auth_call(root, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="root", role="root"))
        auth_call(root, "UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="u", role="nope"))
        # a changed password ends the user's tokens; so does deleting the user
        auth_call(root, "UserChangePassword", pb.AuthUserChangePasswordRequest(name="u", password="pw2"))
        u.get("a")
        u = login(c, "u", "pw2")
        u.get("a")
        auth_call(root, "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="r", key=b"a",
                                                                                    range_end=b"c"))
        u.range("a", "c")  # simple tokens follow the store: no "old revision"
        auth_call(root, "RoleDelete", pb.AuthRoleDeleteRequest(role="r"))
        auth_call(root, "UserGet", pb.AuthUserGetRequest(name="u"))
        auth_call(root, "UserDelete", pb.AuthUserDeleteRequest(name="u"))
        u.get("a")
        # admin-only elsewhere: member changes
        c.call("Cluster.MemberAdd", pb.MemberAddRequest(peerURLs=["http://10.0.0.1:2380"]))
        # disabling ends every token
        auth_call(root, "AuthDisable", pb.AuthDisableRequest())
        root.get("a")
        c.get("a")
        seen["status"] = auth_call(c, "AuthStatus", pb.AuthStatusRequest())
        auth_call(c, "Authenticate", pb.AuthenticateRequest(name="root", password=ROOT_PW))
        return seen

    values = run_scenario(start_servers(server_factory, targets), scenario)
    lite = values.get("etcdlite") or values["etcd"]  # the same answers (also what etcd alone must give)
    assert lite["not enabled"] == E_NOT_ENABLED
    assert lite["no password user"] == E_NO_PASSWORD_USER
    assert lite["unknown user"] == E_AUTH_FAILED
    assert lite["72 bytes count"] == {"header": {"revision": 1}, "token": "<token>"}
    assert lite["bad token"] == E_BAD_TOKEN
    assert lite["status"]["enabled"] is False


def test_failed_authenticate_is_never_cheap(server_factory):
    """A wrong password and an unknown user both cost a bcrypt comparison (no user enumeration)."""
    import time

    srv = server_factory("etcdlite", args=["--bcrypt-cost", "12"])
    c = srv.client()
    setup_root(c)

    def timed(name: str) -> float:
        t = time.perf_counter()
        assert auth_call(c, "Authenticate", pb.AuthenticateRequest(name=name, password="wrong")) == E_AUTH_FAILED
        return time.perf_counter() - t

    timed("nobody")  # the first unknown user also makes the dummy hash
    wrong, unknown = min(timed("root") for _ in range(2)), min(timed("nobody") for _ in range(2))
    assert wrong > 0.05 and unknown > 0.05
    assert 0.5 < unknown / wrong < 2
    assert "wrong" not in srv.log() and ROOT_PW not in srv.log()


def test_lease_revoke_and_keep_alive_need_write_on_attached_keys(server_factory, targets):
    def scenario(c: Client) -> dict[str, Any]:
        root = setup_root(c)
        auth_call(root, "UserAdd", pb.AuthUserAddRequest(name="u", password="pw"))
        auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name="w"))
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.WRITE, key=b"a", range_end=b"b")
        auth_call(root, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="w", perm=perm))
        auth_call(root, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="u", role="w"))
        u = login(c, "u", "pw")
        mine, mixed = root.grant(60), root.grant(60)
        root.put("a1", "x", lease=mine["ID"])
        root.put("a2", "x", lease=mixed["ID"])
        root.put("z", "x", lease=mixed["ID"])
        u.put("a3", "x", lease=mixed["ID"])  # attaching to a lease one could not revoke
        u.put("a3", "x", lease=mine["ID"])
        u.revoke(mixed["ID"])
        c.revoke(mixed["ID"])  # no user
        u.revoke(123456)  # no such lease
        with u.quiet(), c.quiet():
            known = {"keepalive mixed": u.keepalive(mixed["ID"]), "keepalive mine": u.keepalive(mine["ID"]),
                     "keepalive anonymous": c.keepalive(mine["ID"]), "ttl anonymous": c.ttl(mine["ID"])}
        u.revoke(mine["ID"])
        root.get("a", range_end="b")
        return known

    values = run_scenario(start_servers(server_factory, targets), scenario)
    if "etcdlite" not in values:
        return
    lite = values["etcdlite"]
    assert lite["keepalive mixed"] == E_DENIED
    assert lite["keepalive mine"][0]["TTL"] == 60
    assert lite["keepalive anonymous"] == E_USER_EMPTY
    assert lite["ttl anonymous"] == E_USER_EMPTY


# -- JWT -----------------------------------------------------------------------------------------
def _write_keys(tmp: Path, kind: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / f"{kind}.key", tmp / f"{kind}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def part(s: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    head, body, _ = token.split(".")
    return part(head), part(body)


@pytest.mark.parametrize("method,kind", [("RS256", "rsa"), ("ES256", "ec")])
def test_jwt_tokens(server_factory, targets, tmp_path, method, kind):
    priv, pub = _write_keys(tmp_path, kind)
    args = [*FAST, "--auth-token", f"jwt,pub-key={pub},priv-key={priv},sign-method={method},ttl=10m"]
    servers = start_servers(server_factory, targets, args)
    tokens: dict[str, str] = {}

    def scenario(c: Client) -> None:
        root = setup_root(c)
        auth_call(root, "UserAdd", pb.AuthUserAddRequest(name="u", password="pw"))
        auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name="r"))
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"a")
        auth_call(root, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="r", perm=perm))
        auth_call(root, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="u", role="r"))
        token = token_of(c, "u", "pw")
        tokens[c.name] = token
        u = as_user(c, token)
        u.get("a")
        u.get("b")
        auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name="other"))  # the auth revision moves on
        u.get("a")  # the token carries the old revision
        watch_create(u, pb.WatchCreateRequest(key=b"a"))
        u.put("a", "x")
        root.get("a")  # so does root's
        as_user(c, token[:-4] + "AAAA").get("a")  # a bad signature
        login(c, "u", "pw").get("a")

    run_scenario(servers, scenario)
    for target, token in tokens.items():
        head, claims = _jwt_parts(token)
        assert head == {"alg": method, "typ": "JWT"}, target
        assert sorted(claims) == ["exp", "revision", "username"] and claims["username"] == "u", target
        assert list(claims) == ["exp", "revision", "username"]  # Go's key order
    if len(tokens) == 2:  # the same keys: each server accepts the other's tokens
        for issuer, verifier in (("etcdlite", "etcd"), ("etcd", "etcdlite")):
            c = as_user(servers[verifier].client(), tokens[issuer])
            assert c.get("a") == E_OLD_REVISION  # both moved on since, so the claim is old: but it verified


def test_jwt_options_are_checked_at_start_up(tmp_path):
    priv, pub = _write_keys(tmp_path, "rsa")
    for spec, message in [
        ("jwt,sign-method=RS999", tokenmod.INVALID_AUTH_METHOD),
        ("jwt,sign-method=RS256", tokenmod.MISSING_KEY),
        ("jwt,pub-key", tokenmod.INVALID_AUTH_OPTS),
        (f"jwt,priv-key={priv},priv-key={priv}", tokenmod.INVALID_AUTH_OPTS),
        ("magic", tokenmod.INVALID_AUTH_OPTS),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            tokenmod.new_token_provider(spec, 300)
    verify_only = tokenmod.new_token_provider(f"jwt,pub-key={pub},sign-method=RS256", 300)
    with pytest.raises(EtcdError) as err:
        verify_only.assign("u", 1, "")
    assert err.value.message == "auth: token signing attempted with verify-only key"
    assert isinstance(tokenmod.new_token_provider("", 300), tokenmod.NoTokens)


# -- persistence ---------------------------------------------------------------------------------
def test_auth_state_survives_restart(server_factory, targets):
    servers = start_servers(server_factory, targets)

    def before(c: Client) -> None:
        root = setup_root(c)
        auth_call(root, "UserAdd", pb.AuthUserAddRequest(name="u", password="pw"))
        auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name="r"))
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a", range_end=b"b")
        auth_call(root, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="r", perm=perm))
        auth_call(root, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="u", role="r"))
        login(c, "u", "pw").put("a1", "x")

    def after(c: Client) -> None:
        c.get("a1")
        auth_call(c, "AuthStatus", pb.AuthStatusRequest())
        root = login(c, "root", ROOT_PW)
        auth_call(root, "AuthStatus", pb.AuthStatusRequest())
        auth_call(root, "UserList", pb.AuthUserListRequest())
        auth_call(root, "RoleGet", pb.AuthRoleGetRequest(role="r"))
        u = login(c, "u", "pw")
        u.get("a1")
        u.get("c")
        auth_call(c, "Authenticate", pb.AuthenticateRequest(name="u", password="wrong"))

    run_scenario(servers, before)
    tokens_before = {}
    for t, srv in servers.items():
        tokens_before[t] = token_of(srv.client(), "root", ROOT_PW)
        srv.restart()
    run_scenario(servers, after)
    for t, srv in servers.items():  # simple tokens do not outlive the process
        assert as_user(srv.client(), tokens_before[t]).get("a1") == E_BAD_TOKEN
    if "etcdlite" not in servers:
        return
    lite = servers["etcdlite"]
    if "--backend" in lite.args:  # the shared backend keeps it in the database, beside the log
        url = lite.args[lite.args.index("--backend") + 1]
        out = subprocess.run(["psql", "-X", "-t", "-A", url, "-c",
                              "SELECT convert_from(data, 'UTF8') FROM etcdlite_state WHERE name = 'auth'"],
                             check=True, capture_output=True, text=True).stdout
        state = json.loads(out)
    else:
        state = json.loads((lite.data_dir / "member" / "auth.json").read_text())
        assert (lite.data_dir / "member" / "auth.json").stat().st_mode & 0o077 == 0
    assert state["enabled"] is True and {u["name"] for u in state["users"]} == {"root", "u"}
    # bcrypt hashes (base64), not the passwords: "pw" may well occur inside their random characters
    hashes = [base64.b64decode(u["password"]) for u in state["users"]]
    assert all(re.fullmatch(rb"\$2a\$\d\d\$[./A-Za-z0-9]{53}", h) for h in hashes), hashes


# -- the permission checker, in-process --------------------------------------------------------------
def _store(tmp: Path | None = None) -> AuthStore:
    return AuthStore(tmp / "auth.json" if tmp else None, tokenmod.SimpleTokens(), lease_keys=lambda _: None,
                             bcrypt_cost=4)


@pytest.mark.parametrize("perms,key,end,want", [
    ([(b"a", b"c")], b"a", b"c", True),
    ([(b"a", b"c")], b"a", b"d", False),
    ([(b"a", b"c"), (b"c", b"e")], b"a", b"e", True),  # adjacent ranges join
    ([(b"a", b"c"), (b"d", b"e")], b"a", b"e", False),  # a gap
    ([(b"a", b"\x00")], b"x", b"\x00", True),  # from-key covers any from-key above it
    ([(b"a", b"\x00")], b"0", b"\x00", False),
    ([(b"a", b"")], b"a", b"", True),  # a single key
    ([(b"a", b"")], b"a", b"a\x00", True),
    ([(b"a", b"")], b"a", b"b", False),
    ([(b"", b"\x00")], b"\x00", b"\x00", False),  # an empty key is not "the smallest"
    ([(b"\x00", b"\x00")], b"\x00", b"\x00", True),
])
def test_range_permission_cache(perms, key, end, want):
    store = _store()
    store.role_add("r")
    for k, e in perms:
        store.role_grant_permission("r", model.Permission(k, e, model.READ))
    store.user_add("u", None, True)
    store.user_grant_role("u", "r")
    store.user_add("root", None, True)
    store.user_grant_role("root", "root")
    store.enable()
    info = model.AuthInfo("u", store.revision)
    if want:
        store.range_permitted(info, key, end)
    else:
        with pytest.raises(EtcdError, match="permission denied"):
            store.range_permitted(info, key, end)
    with pytest.raises(EtcdError, match="permission denied"):
        store.put_permitted(info, key)


def test_simple_tokens_expire_after_ttl_since_last_use():
    now = [0.0]
    tokens = tokenmod.SimpleTokens(ttl=10, clock=lambda: now[0])
    tokens.enable()
    t = tokens.assign("u", 1, tokens.gen_prefix())
    assert re.fullmatch(r"[a-zA-Z]{16}\.1", t)
    now[0] = 9
    assert tokens.info(t, 5) == model.AuthInfo("u", 5)
    now[0] = 18  # 9s after its last use
    assert tokens.info(t, 5) is not None
    now[0] = 29
    assert tokens.info(t, 5) is None
    assert tokens.info(t.replace(".1", ".01"), 5) is None
    assert tokens.info(t[:-1] + "2", 5) is None


def test_expired_simple_tokens_are_forgotten_by_a_sweep_once_a_second():
    now = [0.0]
    tokens = tokenmod.SimpleTokens(ttl=10, clock=lambda: now[0])
    tokens.enable()
    prefix = tokens.gen_prefix()
    first = [tokens.assign("u", i, prefix) for i in range(1, 101)]
    now[0] = 9.5
    tokens.assign("u", 101, prefix)  # a sweep: nothing has expired yet
    now[0] = 10.2  # the first hundred expired, but the next sweep is not due
    tokens.assign("u", 102, prefix)
    assert len(tokens._tokens) == 102
    now[0] = 10.6
    kept = tokens.assign("u", 103, prefix)
    assert len(tokens._tokens) == 3  # the hundred expired ones are gone from memory
    assert all(tokens.info(t, 1) is None for t in first) and tokens.info(kept, 1) is not None


def test_a_failed_save_changes_nothing(tmp_path):
    store = _store(tmp_path)
    store.user_add("u", None, True)
    (tmp_path / "auth.json.tmp").mkdir()  # the next save cannot write its temporary file
    with pytest.raises(OSError):
        store.role_add("r")
    assert store.role_list() == [] and store.revision == 2
    (tmp_path / "auth.json.tmp").rmdir()
    reloaded = _store(tmp_path)
    assert reloaded.user_list() == ["u"] and reloaded.revision == 2
