"""Simple auth tokens over PostgreSQL: a token any instance issued is valid on every instance as soon as
Authenticate returned, as a token of any etcd member is valid on every member (it went through raft).

Three etcdlite processes over one database, driven by gRPC and by etcdctl; then instances in process, to
pin down the path where an instance has not applied the token's log entry yet, and what the log holds.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from etcdlite import errors
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCDCTL, EtcdProcess, free_port

psycopg = pytest.importorskip("psycopg")

from test_postgres import POLL_SECONDS_BEFORE, run_instances  # noqa: E402

from etcdlite.storage.postgres import applier as applier_module  # noqa: E402

BAD_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
ROUNDS = 50


# -- three processes -------------------------------------------------------------------------------------------

@pytest.fixture
def instances(pg_cluster: Any, tmp_path: Path) -> Iterator[list[EtcdProcess]]:
    url = pg_cluster.new_database()
    procs = [EtcdProcess("etcdlite", tmp_path / name, name=name, args=[
        "--backend", url, "--initial-advertise-peer-urls", f"http://127.0.0.1:{free_port()}", "--bcrypt-cost", "4"])
        for name in ("a", "b", "c")]
    for proc in procs:
        proc.start(wait=False)
    for proc in procs:
        proc.wait_ready(60)
    _enable_auth(procs[0])
    yield procs
    for proc in procs:
        proc.stop()


def _enable_auth(proc: EtcdProcess) -> None:
    """root and a user ``u`` with read-write on ``k*``; auth on."""
    auth = proc.stubs().auth
    for name in ("root", "u"):
        auth.UserAdd(pb.AuthUserAddRequest(name=name, password="pw"), timeout=10)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    auth.RoleAdd(pb.AuthRoleAddRequest(name="rw"), timeout=10)
    from etcdlite.pb.authpb import auth_pb2
    perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"k", range_end=b"l")
    auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="rw", perm=perm), timeout=10)
    auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="u", role="rw"), timeout=10)
    auth.AuthEnable(pb.AuthEnableRequest(), timeout=10)


def _token(proc: EtcdProcess, name: str = "u", password: str = "pw") -> str:
    token: str = proc.stubs().auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=10).token
    return token


def _md(token: str) -> list[tuple[str, str]]:
    return [("token", token)]


def _put(proc: EtcdProcess, token: str, key: bytes, value: bytes = b"v") -> pb.PutResponse:
    return proc.stubs().kv.Put(pb.PutRequest(key=key, value=value), metadata=_md(token), timeout=10)


def _get(proc: EtcdProcess, token: str, key: bytes, serializable: bool = False) -> pb.RangeResponse:
    return proc.stubs().kv.Range(pb.RangeRequest(key=key, serializable=serializable), metadata=_md(token), timeout=10)


def _refused(call: Any, *args: Any, **kw: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kw)
    return raised.value.code(), raised.value.details()


def test_a_token_issued_on_one_instance_is_valid_on_every_instance_at_once(instances: list[EtcdProcess]) -> None:
    for n in range(ROUNDS):
        issuer, writer, reader = instances[n % 3], instances[(n + 1) % 3], instances[(n + 2) % 3]
        token = _token(issuer)
        key = f"k{n}".encode()
        assert _put(writer, token, key, str(n).encode()).header.revision > 0
        assert [kv.value for kv in _get(reader, token, key).kvs] == [str(n).encode()]
        # serializable: served at once, maybe behind the write; the token is accepted all the same
        assert [kv.value for kv in _get(issuer, token, key, serializable=True).kvs] in ([], [str(n).encode()])
        # the user's permissions still hold everywhere: outside k* is denied, not an unknown token
        assert _refused(_put, reader, token, b"x") == (grpc.StatusCode.PERMISSION_DENIED,
                                                                "etcdserver: permission denied")
    # tokens from different instances never share an index (the log position of the entry that issued them)
    tokens = [_token(p) for p in instances for _ in range(3)]
    assert len({t.split(".")[1] for t in tokens}) == len(tokens)


def test_a_watch_and_a_keep_alive_stream_accept_a_token_issued_elsewhere(instances: list[EtcdProcess]) -> None:
    a, b, c = instances
    root = _token(a, "root")
    lease = b.stubs().lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), metadata=_md(root), timeout=10).ID
    token = _token(a, "root")
    replies = c.stubs().lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]), metadata=_md(token),
                                             timeout=10)
    assert [r.TTL for r in replies] == [30]
    token = _token(c, "u")
    watch = b.stubs().watch.Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"kw"))]),
                                  metadata=_md(token), timeout=10)
    created = next(watch)
    assert created.created and not created.canceled
    watch.cancel()


def test_deleting_a_user_or_changing_its_password_ends_its_tokens_on_every_instance(
        instances: list[EtcdProcess]) -> None:
    a, b, c = instances
    root = _token(b, "root")
    token = _token(a)
    _put(c, token, b"k1")
    b.stubs().auth.UserDelete(pb.AuthUserDeleteRequest(name="u"), metadata=_md(root), timeout=10)
    for proc in (a, c, b):  # at once: a write is checked again when applied, a read after its read index
        assert _refused(_put, proc, token, b"k2") == BAD_TOKEN
        assert _refused(_get, proc, token, b"k1") == BAD_TOKEN

    b.stubs().auth.UserAdd(pb.AuthUserAddRequest(name="u", password="pw"), metadata=_md(root), timeout=10)
    b.stubs().auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="u", role="rw"), metadata=_md(root), timeout=10)
    assert _refused(_get, a, token, b"k1") == BAD_TOKEN  # the old token stays dead
    token = _token(c)
    _put(a, token, b"k3")
    a.stubs().auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="u", password="new"),
                                      metadata=_md(root), timeout=10)
    for proc in (b, c, a):
        assert _refused(_put, proc, token, b"k4") == BAD_TOKEN
    assert _refused(_token, b) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "etcdserver: authentication failed, invalid user ID or password")
    _put(b, _token(a, password="new"), b"k5")


def test_auth_disabled_on_one_instance_ends_every_token_everywhere(instances: list[EtcdProcess]) -> None:
    a, b, c = instances
    root = _token(a, "root")
    token = _token(c)
    _put(b, token, b"k1")
    b.stubs().auth.AuthDisable(pb.AuthDisableRequest(), metadata=_md(root), timeout=10)
    for proc in instances:  # etcd 3.5.1 refuses a token it does not know even while auth is off
        assert _refused(_get, proc, token, b"k1") == BAD_TOKEN
        assert _refused(_get, proc, root, b"k1") == BAD_TOKEN
        assert [kv.key for kv in proc.stubs().kv.Range(pb.RangeRequest(key=b"k1"), timeout=10).kvs] == [b"k1"]
    assert _refused(_token, a) == (grpc.StatusCode.FAILED_PRECONDITION,
                                           "etcdserver: authentication is not enabled")


def test_unknown_and_forged_tokens_get_etcds_error_everywhere(instances: list[EtcdProcess]) -> None:
    a, b, c = instances
    token = _token(a)
    prefix, index = token.split(".")
    forged = [
        "bogus",
        f"{prefix}.{int(index) + 1_000_000}",  # an index no entry has reached yet: the log is read, then refused
        f"{'x' * len(prefix)}.{index}",  # the right index, another prefix
        f"{prefix}.{index}.1",
        f"{prefix}.",
    ]
    for proc in instances:
        for bad in forged:
            assert _refused(_get, proc, bad, b"k1") == BAD_TOKEN, bad
            assert _refused(_put, proc, bad, b"k1") == BAD_TOKEN, bad
        _get(proc, token, b"k1")  # the real one still works


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed")
def test_etcdctl_with_a_user_over_every_instance(instances: list[EtcdProcess]) -> None:
    """etcdctl authenticates on one endpoint and spreads its requests over all of them."""
    from harness import etcdctl
    endpoints = ",".join(p.endpoint for p in reversed(instances))
    for n in range(6):
        rc, out, err = etcdctl(endpoints, "--user", "u:pw", "put", f"k{n}", f"v{n}")
        assert (rc, out.strip()) == (0, "OK"), err
        rc, out, err = etcdctl(endpoints, "--user", "u:pw", "get", "--prefix", "k")
        assert rc == 0, err
        assert out.split()[1::2] == [f"v{i}" for i in range(n + 1)]
    rc, out, err = etcdctl(endpoints, "--user", "u:wrong", "get", "k0")
    assert rc != 0 and "authentication failed, invalid user ID or password" in err


# -- in process: an instance that has not applied the token's entry yet --------------------------------------

def _context(token: str) -> Any:
    return types.SimpleNamespace(invocation_metadata=lambda: [("token", token)])


def test_an_instance_behind_the_log_catches_up_for_a_token_it_does_not_know(
        pg_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(cores: list[Any]) -> None:
        from etcdlite.api.credentials import CredentialsReader, TokenCatchUp
        from etcdlite.core.auth.admin import AuthAdmin
        from etcdlite.core.auth.model import Credentials

        a, b = cores
        admin = AuthAdmin(a)
        await admin.user_add(pb.AuthUserAddRequest(name="root", password="pw"), None)
        await admin.user_grant_role(pb.AuthUserGrantRoleRequest(user="root", role="root"), None)
        await admin.auth_enable(pb.AuthEnableRequest(), None)
        await b.backend.read_index()
        # b hears of nothing more by itself (no notification, no poll)
        monkeypatch.setattr(applier_module, "POLL_SECONDS", 60.0)
        monkeypatch.setattr(b.backend._applier, "announced", lambda index: None)
        await asyncio.sleep(POLL_SECONDS_BEFORE)

        token = (await admin.authenticate(pb.AuthenticateRequest(name="root", password="pw"), None)).token
        gate_b = TokenCatchUp(CredentialsReader(False), b.auth, b.backend)
        gate_a = TokenCatchUp(CredentialsReader(False), a.auth, a.backend)
        assert not gate_a.pending(_context(token))  # known where it was issued: no wait
        assert gate_b.pending(_context(token))
        with pytest.raises(errors.EtcdError) as raised:  # what b would say without the catch-up
            b.auth.auth_info(Credentials(token=token))
        assert raised.value is errors.INVALID_AUTH_TOKEN
        await gate_b.wait()
        assert not gate_b.pending(_context(token))
        assert b.auth.auth_info(Credentials(token=token)).username == "root"  # type: ignore[union-attr]
        await b.put(pb.PutRequest(key=b"k", value=b"v"), Credentials(token=token))
        # a token the applied log never issued is not worth a wait: refused at once
        for bad in ("bogus", f"{'x' * 16}.{token.split('.')[1]}", "abc.1"):
            assert not gate_b.pending(_context(bad))
        assert gate_b.pending(_context("abc.99999999"))
        assert not gate_b.pending(types.SimpleNamespace(invocation_metadata=lambda: []))
    run_instances(pg_cluster, tmp_path, 2, scenario, bcrypt_cost=4)


def test_the_log_holds_the_token_prefix_never_the_password_and_a_new_instance_has_no_old_tokens(
        pg_cluster: Any, tmp_path: Path) -> None:
    url = pg_cluster.new_database()

    async def main() -> None:
        from test_postgres import start_instances, stop_all

        from etcdlite.core.auth.admin import AuthAdmin
        from etcdlite.core.auth.model import Credentials

        cores = await start_instances(url, tmp_path, 1, bcrypt_cost=4)
        try:
            admin = AuthAdmin(cores[0])
            await admin.user_add(pb.AuthUserAddRequest(name="root", password="s3cret-pw"), None)
            await admin.user_grant_role(pb.AuthUserGrantRoleRequest(user="root", role="root"), None)
            await admin.auth_enable(pb.AuthEnableRequest(), None)
            token = await cores[0].auth.authenticate("root", "s3cret-pw")
        finally:
            await stop_all(cores)
        with psycopg.connect(url, autocommit=True) as conn:
            events = conn.execute("SELECT idx, entry FROM etcdlite_log WHERE kind = 3").fetchall()
            log_text = b"".join(bytes(r[0]) for r in conn.execute("SELECT entry FROM etcdlite_log").fetchall())
            documents = [r[0] for r in conn.execute("SELECT name FROM etcdlite_state").fetchall()]
        assert [(idx, json.loads(bytes(entry).partition(b"\0")[2])) for idx, entry in events] == [
            (int(token.split(".")[1]), {"user": "root", "prefix": token.split(".")[0]})]
        assert b"s3cret-pw" not in log_text
        assert "auth-token" not in documents
        later = await start_instances(url, tmp_path / "later", 1, bcrypt_cost=4)
        try:  # tokens end with the processes that knew them, as etcd's end with a restart
            with pytest.raises(errors.EtcdError) as raised:
                later[0].auth.auth_info(Credentials(token=token))
            assert raised.value is errors.INVALID_AUTH_TOKEN
            assert await later[0].auth.authenticate("root", "s3cret-pw")
        finally:
            await stop_all(later)
    asyncio.run(main())
