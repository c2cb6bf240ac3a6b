"""Issue 16.2: an alarm of a type etcd does not know is refused before anything is stored, and
alarm state on disk that does not parse never breaks Status or /health."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCD_BIN, Client, Err, EtcdProcess

ACTIVATE, DEACTIVATE, GET = pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE, pb.AlarmRequest.GET
MEMBER = 0x1234  # explicit: etcd and etcdlite have different member IDs in these tests


def alarm(c: Client, action: int, kind: int, member: int = MEMBER) -> Any:
    return c.call("Maintenance.Alarm", pb.AlarmRequest(action=action, memberID=member, alarm=kind))


def health(srv: EtcdProcess) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"{srv.endpoint}/health", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_unknown_alarm_type_is_refused_before_it_is_stored(server_factory: Callable[..., EtcdProcess]) -> None:
    srv = server_factory("etcdlite")
    c = srv.client()
    assert alarm(c, ACTIVATE, 9) == Err("INVALID_ARGUMENT", "etcdserver: unknown alarm type 9")
    assert alarm(c, ACTIVATE, -1) == Err("INVALID_ARGUMENT", "etcdserver: unknown alarm type -1")
    assert alarm(c, 7, pb.NOSPACE) == Err("INVALID_ARGUMENT", "etcdserver: unknown alarm action 7")
    assert alarm(c, GET, 0)["alarms"] == []
    status = c.call("Maintenance.Status", pb.StatusRequest())
    assert not isinstance(status, Err) and status["errors"] == [], status
    assert health(srv) == (200, {"health": "true", "reason": ""})
    srv.restart()
    assert alarm(srv.client(), GET, 0)["alarms"] == []
    assert health(srv) == (200, {"health": "true", "reason": ""})
    assert "Traceback" not in srv.log(whole=True)


@pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")
@pytest.mark.parametrize("action, kind, panic", [
    (ACTIVATE, 9, "unimplemented alarm activation"),
    (7, pb.NOSPACE, "invalid memory address or nil pointer dereference"),
], ids=["unknown-type", "unknown-action"])
def test_etcd_3_5_1_dies_of_an_unknown_alarm(action: int, kind: int, panic: str, tmp_path: Path) -> None:
    """The oracle is worse here: etcd 3.5.1 panics, so the request gets no answer and the server is
    gone; etcdlite answers INVALID_ARGUMENT."""
    srv = EtcdProcess("etcd", tmp_path / "etcd.data").start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            srv.stubs().maintenance.Alarm(pb.AlarmRequest(action=action, alarm=kind), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert srv.proc is not None and srv.proc.wait(10) != 0
        assert panic in srv.log()
    finally:
        srv.kill()


def scenario_alarm_actions(c: Client) -> None:
    """What is the same on both: known types, NONE, GET/DEACTIVATE of an unknown type."""
    alarm(c, ACTIVATE, pb.NOSPACE)
    alarm(c, ACTIVATE, pb.NONE)
    alarm(c, GET, 9)
    alarm(c, DEACTIVATE, 9)
    alarm(c, GET, pb.NONE)
    alarm(c, GET, pb.NOSPACE)
    alarm(c, DEACTIVATE, pb.NOSPACE)
    alarm(c, GET, pb.NONE)


def test_alarm_actions_as_etcd(differential: Callable[..., Any]) -> None:
    differential(scenario_alarm_actions)


@pytest.mark.parametrize("content, expected_health", [
    (b"[[9, 4660]]", (200, {"health": "true", "reason": ""})),  # stored by an etcdlite before this fix
    (b"[[1, 4660], [9, 4660], [-3, 1]]", (503, {"health": "false", "reason": "ALARM NOSPACE"})),
    (b"{not json", (200, {"health": "true", "reason": ""})),
    (b'"a string"', (200, {"health": "true", "reason": ""})),
    (b"[[1]]", (200, {"health": "true", "reason": ""})),
    (b"[[1, null]]", (200, {"health": "true", "reason": ""})),
    (b"\xff\xfe", (200, {"health": "true", "reason": ""})),
], ids=["unknown-type", "known-and-unknown", "not-json", "not-a-list", "short-pair", "null", "not-utf8"])
def test_alarm_state_that_does_not_parse_never_breaks_status_or_health(
        content: bytes, expected_health: tuple[int, dict[str, str]],
        server_factory: Callable[..., EtcdProcess]) -> None:
    srv = server_factory("etcdlite")
    srv.stop()
    (srv.data_dir / "member" / "alarms").write_bytes(content)
    srv.start()
    c = srv.client()
    status = c.call("Maintenance.Status", pb.StatusRequest())
    assert not isinstance(status, Err), status
    nospace = expected_health[0] == 503
    assert status["errors"] == (["memberID:4660 alarm:NOSPACE "] if nospace else []), status
    for _ in range(3):
        assert health(srv) == expected_health
    listed = alarm(c, GET, pb.NONE)["alarms"]
    assert listed == ([{"memberID": MEMBER, "alarm": "NOSPACE"}] if nospace else []), listed
    time.sleep(0.2)
    log = srv.log()
    assert "Traceback" not in log, log
    assert "ignoring an unreadable alarms file" in log or "ignoring an alarm of unknown type" in log, log
