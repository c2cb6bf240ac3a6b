"""Fault injection (``--experimental-fault-injection``, ``/debug/inject``): the HTTP API, each fault as
real clients see it (gRPC, etcdctl, the JSON gateway), the flag off, and ``Server.inject``.

The application-style test with the ``etcd3`` client is in tests/clients/test_fault_injection.py.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import grpc
import pytest

from etcdlite import FaultInjectionError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as pb_grpc
from harness import ETCDCTL, EtcdProcess, etcdctl

pytestmark = pytest.mark.timeout(60)

FLAG = "--experimental-fault-injection"
LEADER_CHANGED = ("UNAVAILABLE", "etcdserver: leader changed")
NO_LEADER = ("UNAVAILABLE", "etcdserver: no leader")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    server = EtcdProcess("etcdlite", tmp_path_factory.mktemp("faults") / "data", args=[FLAG])
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _cleared(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "srv" in request.fixturenames:
        request.getfixturevalue("srv").clear_faults()


def http(server: EtcdProcess, method: str, path: str, body: Any = None, raw: bytes | None = None
         ) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON or text body) of one request to the server's HTTP side."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.endpoint + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers, payload = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, payload = exc.code, dict(exc.headers), exc.read()
    try:
        return status, headers, json.loads(payload)
    except ValueError:
        return status, headers, payload.decode()


def rpc_error(call: Any, *args: Any, **kw: Any) -> tuple[str, str] | None:
    """(code, message) of a failed call; None when it succeeds."""
    try:
        call(*args, timeout=10, **kw)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return None


def get(server: EtcdProcess, key: bytes = b"k") -> tuple[str, str] | None:
    return rpc_error(server.stubs().kv.Range, pb.RangeRequest(key=key))


def put(server: EtcdProcess, key: bytes = b"k", value: bytes = b"v", lease: int = 0) -> tuple[str, str] | None:
    return rpc_error(server.stubs().kv.Put, pb.PutRequest(key=key, value=value, lease=lease))


def injected_lines(server: EtcdProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log(whole=True).splitlines()
            if '"msg": "injected fault"' in line]


# -- the flag --------------------------------------------------------------------------------------
def test_without_the_flag_debug_inject_is_404(server_factory: Any) -> None:
    plain = server_factory("etcdlite")
    for method, path in (("GET", "/debug/inject"), ("POST", "/debug/inject/error"), ("DELETE", "/debug/inject")):
        status, _, body = http(plain, method, path, {"error": "timeout"} if method == "POST" else None)
        assert (status, body) == (404, "404 page not found\n")
    with pytest.raises(FaultInjectionError, match="--experimental-fault-injection") as info:
        plain.inject("error", methods="KV/Put", error="timeout")
    assert info.value.status == 404
    assert put(plain) is None  # and nothing was injected


def test_the_flag_from_the_environment(server_factory: Any) -> None:
    server = server_factory("etcdlite", env={"ETCD_EXPERIMENTAL_FAULT_INJECTION": "true"})
    assert http(server, "GET", "/debug/inject")[2] == {"faults": []}
    assert "fault injection is on" in server.log()


def test_not_served_on_the_metrics_listener(server_factory: Any) -> None:
    from harness import free_port

    port = free_port()
    server = server_factory("etcdlite", args=[FLAG, "--listen-metrics-urls", f"http://127.0.0.1:{port}"])
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/inject", timeout=10)
    assert info.value.code == 404
    assert http(server, "GET", "/debug/inject")[0] == 200


# -- the HTTP API ------------------------------------------------------------------------------------
def test_set_list_and_clear(srv: EtcdProcess) -> None:
    status, headers, first = http(srv, "POST", "/debug/inject/error",
                                  {"methods": ["KV/Put"], "error": "leader-changed", "count": 3})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert first == {"id": first["id"], "fault": "error", "methods": ["KV/Put"], "error": "leader-changed",
                     "code": "UNAVAILABLE", "message": "etcdserver: leader changed", "count": 3, "injected": 0}
    _, _, second = http(srv, "POST", "/debug/inject/latency",
                        {"methods": "etcdserverpb.KV/Range", "delay": "250ms", "fraction": 0.5, "duration": 60})
    assert second["delay"] == 0.25 and second["fraction"] == 0.5 and second["methods"] == ["KV/Range"]
    assert 59 < second["remaining"] <= 60
    _, _, third = http(srv, "POST", "/debug/inject/error", {"methods": "Lease/*", "error": "nospace"})
    assert third["methods"] == ["Lease/LeaseGrant", "Lease/LeaseKeepAlive", "Lease/LeaseLeases",
                                "Lease/LeaseRevoke", "Lease/LeaseTimeToLive"]
    assert third["count"] == 1  # an error fault with no limit given: the next request only
    assert [f["id"] for f in http(srv, "GET", "/debug/inject")[2]["faults"]] == [first["id"], second["id"], third["id"]]

    assert http(srv, "DELETE", f"/debug/inject/{second['id']}")[:3:2] == (200, {"cleared": 1})
    assert http(srv, "DELETE", f"/debug/inject/{second['id']}")[0] == 404
    assert [f["id"] for f in srv.faults()] == [first["id"], third["id"]]
    assert http(srv, "DELETE", "/debug/inject")[2] == {"cleared": 2}
    assert http(srv, "GET", "/debug/inject")[2] == {"faults": []}
    assert put(srv) is None  # cleared: nothing is injected any more


def test_the_error_table_is_etcds(srv: EtcdProcess) -> None:
    table = http(srv, "GET", "/debug/inject/errors")[2]["errors"]
    # etcd's rpctypes (api/v3rpc/rpctypes/error.go)
    assert table["leader-changed"] == {"code": "UNAVAILABLE", "message": "etcdserver: leader changed"}
    assert table["no-leader"] == {"code": "UNAVAILABLE", "message": "etcdserver: no leader"}
    assert table["timeout"] == {"code": "UNAVAILABLE", "message": "etcdserver: request timed out"}
    assert table["timeout-leader-fail"] == {
        "code": "UNAVAILABLE", "message": "etcdserver: request timed out, possibly due to previous leader failure"}
    assert table["compacted"] == {"code": "OUT_OF_RANGE",
                                  "message": "etcdserver: mvcc: required revision has been compacted"}
    assert table["nospace"] == {"code": "RESOURCE_EXHAUSTED", "message": "etcdserver: mvcc: database space exceeded"}
    assert table["too-many-requests"] == {"code": "RESOURCE_EXHAUSTED", "message": "etcdserver: too many requests"}
    assert table["corrupt"] == {"code": "DATA_LOSS", "message": "etcdserver: corrupt cluster"}


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/debug/inject/error", b"{not json", "not JSON"),
    ("/debug/inject/error", b"[1, 2]", "JSON object"),
    ("/debug/inject/error", {"error": "leader-changed", "colour": "red"}, "unknown field 'colour'"),
    ("/debug/inject/error", {}, 'needs "error"'),
    ("/debug/inject/error", {"error": "meltdown"}, '"error" must be one of: leader-changed'),
    ("/debug/inject/error", {"error": "timeout", "methods": "KV/Get"}, "unknown method 'KV/Get'"),
    ("/debug/inject/error", {"error": "timeout", "methods": "Nope/*"}, "unknown method 'Nope/*'"),
    ("/debug/inject/error", {"error": "timeout", "methods": []}, '"methods" must be'),
    ("/debug/inject/error", {"error": "timeout", "methods": [1]}, '"methods" must be'),
    ("/debug/inject/error", {"error": "timeout", "count": 0}, '"count" must be'),
    ("/debug/inject/error", {"error": "timeout", "count": "2"}, '"count" must be'),
    ("/debug/inject/error", {"error": "timeout", "count": True}, '"count" must be'),
    ("/debug/inject/error", {"error": "timeout", "fraction": 0}, '"fraction" must be'),
    ("/debug/inject/error", {"error": "timeout", "fraction": 1.5}, '"fraction" must be'),
    ("/debug/inject/error", {"error": "timeout", "duration": "soon"}, "not a duration"),
    ("/debug/inject/error", {"error": "timeout", "delay": 1}, "unknown field 'delay'"),
    ("/debug/inject/latency", {}, 'needs "delay"'),
    ("/debug/inject/latency", {"delay": -1}, '"delay" must be between 0 and 3600'),
    ("/debug/inject/latency", {"delay": "2h"}, '"delay" must be between 0 and 3600'),
    ("/debug/inject/latency", {"delay": [1]}, '"delay" must be a number'),
    ("/debug/inject/pause", {}, 'needs "duration"'),
    ("/debug/inject/pause", {"duration": 1, "count": 2}, "unknown field 'count'"),
    ("/debug/inject/cut-watches", {"error": "nope"}, '"error" must be one of'),
    ("/debug/inject/expire-lease", {}, '"id" must be a lease ID'),
    ("/debug/inject/expire-lease", {"id": -5}, '"id" must be a lease ID'),
    ("/debug/inject/expire-lease", {"id": "0x10"}, '"id" must be a lease ID'),
])
def test_bad_input_is_400(srv: EtcdProcess, path: str, body: Any, words: str) -> None:
    raw = body if isinstance(body, bytes) else None
    status, headers, answer = http(srv, "POST", path, None if raw else body, raw=raw)
    assert status == 400, answer
    assert headers["Content-Type"] == "application/json"
    assert words in answer["error"]
    assert srv.faults() == []


def test_wrong_method_unknown_path_and_large_body(srv: EtcdProcess) -> None:
    status, headers, answer = http(srv, "GET", "/debug/inject/error")
    assert (status, headers["Allow"], answer) == (405, "POST", {"error": "method GET not allowed"})
    assert http(srv, "PUT", "/debug/inject")[0] == 405
    assert http(srv, "GET", "/debug/inject/nothing")[:3:2] == (
        404, {"error": "no such fault injection endpoint: /debug/inject/nothing"})
    status, _, answer = http(srv, "POST", "/debug/inject/error", raw=b" " * (65 * 1024))
    assert status == 413


def test_server_inject_raises_on_refusal(srv: EtcdProcess) -> None:
    with pytest.raises(FaultInjectionError, match="unknown method 'KV/Nope'") as info:
        srv.inject("error", methods="KV/Nope", error="timeout")
    assert info.value.status == 400
    fault = srv.inject("error", methods="KV/Range", error="timeout", count=2)
    assert srv.faults() == [fault]
    assert srv.clear_faults() == 1


# -- errors, as clients see them -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["leader-changed", "no-leader", "timeout", "compacted", "nospace", "corrupt"])
def test_the_next_n_requests_fail_with_etcds_error(srv: EtcdProcess, name: str) -> None:
    table = http(srv, "GET", "/debug/inject/errors")[2]["errors"]
    expected = (table[name]["code"], table[name]["message"])
    srv.inject("error", methods="KV/Range", error=name, count=2)
    assert put(srv) is None  # another method is not hit
    assert [get(srv), get(srv), get(srv)] == [expected, expected, None]
    assert srv.faults() == []  # spent


def test_etcdctl_sees_the_errors(srv: EtcdProcess) -> None:
    srv.inject("error", methods="KV/Put", error="leader-changed")
    rc, out, err = etcdctl(srv.endpoint, "put", "etcdctl-k", "v")
    assert rc != 0 and "Error: etcdserver: leader changed" in err
    # etcd's client retries a read on UNAVAILABLE: the application never sees these two
    srv.inject("error", methods="KV/Range", error="leader-changed", count=2)
    rc, out, err = etcdctl(srv.endpoint, "get", "etcdctl-k")
    assert (rc, out) == (0, ""), err  # and the failed put was not applied
    assert err.count("etcdserver: leader changed") == 2
    srv.inject("error", methods="KV/Range", error="nospace")  # not retried: not UNAVAILABLE
    rc, out, err = etcdctl(srv.endpoint, "get", "etcdctl-k")
    assert rc != 0 and "Error: etcdserver: mvcc: database space exceeded" in err


def test_each_injected_fault_is_logged(srv: EtcdProcess) -> None:
    before = len(injected_lines(srv))
    srv.inject("error", methods="KV/Put", error="timeout", count=2)
    put(srv)
    put(srv)
    put(srv)
    lines = injected_lines(srv)[before:]
    assert [(line["fault"], line["method"], line["error"], line["level"]) for line in lines] == \
        [("error", "KV/Put", "etcdserver: request timed out", "warn")] * 2


def test_a_fraction_of_requests(srv: EtcdProcess) -> None:
    fault = srv.inject("error", methods="KV/Range", error="timeout", fraction=0.5)
    results = [get(srv) for _ in range(200)]
    failed = sum(r is not None for r in results)
    assert 50 < failed < 150
    assert set(results) == {None, ("UNAVAILABLE", "etcdserver: request timed out")}
    assert srv.faults()[0]["injected"] == failed and "count" not in fault


def test_a_fault_for_a_while(srv: EtcdProcess) -> None:
    srv.inject("error", methods="KV/Put", error="no-leader", duration=0.5)
    assert [put(srv), put(srv)] == [NO_LEADER, NO_LEADER]  # every request while it lasts
    deadline = time.monotonic() + 10
    while srv.faults() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.faults() == []
    assert put(srv) is None


def test_wildcards_and_full_names(srv: EtcdProcess) -> None:
    srv.inject("error", methods="*", error="leader-changed")
    status = rpc_error(srv.stubs().maintenance.Status, pb.StatusRequest())
    assert status == LEADER_CHANGED
    srv.inject("error", methods=["/etcdserverpb.Lease/LeaseGrant"], error="nospace")
    assert get(srv) is None
    assert rpc_error(srv.stubs().lease.LeaseGrant, pb.LeaseGrantRequest(TTL=5)) == \
        ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")


def test_two_faults_on_one_method_fail_it_once_each(srv: EtcdProcess) -> None:
    srv.inject("error", methods="KV/Put", error="timeout")
    srv.inject("error", methods="KV/Put", error="leader-changed")
    assert [put(srv), put(srv), put(srv)] == [("UNAVAILABLE", "etcdserver: request timed out"), LEADER_CHANGED, None]


class RequestStream:
    """The requests of a client stream, sent one at a time."""

    def __init__(self) -> None:
        self._q: queue.Queue[Any] = queue.Queue()

    def send(self, request: Any) -> None:
        self._q.put(request)

    def close(self) -> None:
        self._q.put(None)

    def __iter__(self) -> Iterator[Any]:
        while (item := self._q.get()) is not None:
            yield item


def test_an_open_keepalive_stream_is_hit_per_request(srv: EtcdProcess) -> None:
    lease = srv.stubs().lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=10).ID
    requests = RequestStream()
    answers = srv.stubs().lease.LeaseKeepAlive(iter(requests), timeout=20)
    requests.send(pb.LeaseKeepAliveRequest(ID=lease))
    assert next(answers).TTL == 30
    srv.inject("error", methods="Lease/LeaseKeepAlive", error="leader-changed")
    requests.send(pb.LeaseKeepAliveRequest(ID=lease))
    with pytest.raises(grpc.RpcError) as info:
        next(answers)
    assert (info.value.code().name, info.value.details()) == LEADER_CHANGED
    requests.close()
    # the next stream is served again
    assert [r.TTL for r in srv.stubs().lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]),
                                                           timeout=10)] == [30]


def test_a_watch_request_is_hit(srv: EtcdProcess) -> None:
    srv.inject("error", methods="Watch/Watch", error="no-leader")
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))
    with pytest.raises(grpc.RpcError) as info:
        list(srv.stubs().watch.Watch(iter([create]), timeout=10))
    assert (info.value.code().name, info.value.details()) == NO_LEADER


def test_the_json_gateway_is_hit_too(srv: EtcdProcess) -> None:
    srv.inject("error", methods="KV/Put", error="leader-changed")
    status, _, body = http(srv, "POST", "/v3/kv/put", {"key": "aw==", "value": "dg=="})
    assert (status, body) == (503, {"error": "etcdserver: leader changed", "code": 14,
                                    "message": "etcdserver: leader changed"})
    srv.inject("error", methods="Watch/Watch", error="no-leader")
    status, _, body = http(srv, "POST", "/v3/watch", {"create_request": {"key": "aw=="}})
    assert status == 503 and body["error"]["message"] == "etcdserver: no leader"


# -- latency and pause ----------------------------------------------------------------------------
def test_latency(srv: EtcdProcess) -> None:
    srv.inject("latency", methods="KV/Range", delay=0.4, count=1)
    started = time.monotonic()
    assert get(srv) is None
    assert time.monotonic() - started >= 0.4
    assert srv.faults() == []
    lines = injected_lines(srv)
    assert (lines[-1]["fault"], lines[-1]["method"], lines[-1]["delay"]) == ("latency", "KV/Range", 0.4)


def test_latency_with_an_error(srv: EtcdProcess) -> None:
    srv.inject("latency", methods="KV/Put", delay="300ms", count=1)
    srv.inject("error", methods="KV/Put", error="timeout")
    started = time.monotonic()
    assert put(srv) == ("UNAVAILABLE", "etcdserver: request timed out")
    assert time.monotonic() - started >= 0.3


def test_pause_holds_requests_then_serves_them(srv: EtcdProcess) -> None:
    srv.inject("pause", duration=0.6)
    started = time.monotonic()
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(put(srv, b"paused", b"1"))) for _ in range(3)]
    for t in threads:
        t.start()
    assert get(srv, b"paused") is None
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 0.5
    assert results == [None, None, None]  # nothing failed: they waited, then proceeded
    assert srv.stubs().kv.Range(pb.RangeRequest(key=b"paused"), timeout=10).kvs[0].version == 3


def test_clearing_ends_a_pause(srv: EtcdProcess) -> None:
    srv.inject("pause", duration=30)
    srv.inject("error", methods="KV/Range", error="timeout")
    done = threading.Event()
    results: list[Any] = []
    t = threading.Thread(target=lambda: (results.append(get(srv)), done.set()))
    t.start()
    assert not done.wait(0.3)  # held
    assert srv.clear_faults() == 2
    assert done.wait(10)
    t.join()
    assert results == [None]  # the error fault was cleared while the request waited: not injected


def test_a_stopping_server_ends_its_pause(server_factory: Any) -> None:
    server = server_factory("etcdlite", args=[FLAG])
    server.inject("pause", duration=60)
    results: list[Any] = []
    channel = grpc.insecure_channel(server.address)  # its own: stop() closes the server's
    kv = pb_grpc.KVStub(channel)
    t = threading.Thread(target=lambda: results.append(rpc_error(kv.Put, pb.PutRequest(key=b"held", value=b"1"))))
    t.start()
    deadline = time.monotonic() + 10
    while not injected_lines(server) and time.monotonic() < deadline:
        time.sleep(0.02)  # until the put is held
    assert server.stop() == 0
    t.join()
    channel.close()
    assert results == [None]  # served, not dropped, when SIGTERM came


def test_pause_of_chosen_methods(srv: EtcdProcess) -> None:
    srv.inject("pause", duration=30, methods="KV/Put")
    assert get(srv) is None  # not paused
    srv.clear_faults()


# -- cut watch streams --------------------------------------------------------------------------------
def test_cut_watches_ends_every_stream_with_no_leader(srv: EtcdProcess) -> None:
    streams = []
    for key in (b"a", b"b"):
        requests = RequestStream()
        answers = srv.stubs().watch.Watch(iter(requests), timeout=20)
        requests.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
        assert next(answers).created
        streams.append((requests, answers))
    status, _, body = http(srv, "POST", "/debug/inject/cut-watches")
    assert (status, body) == (200, {"streams": 2, "code": "UNAVAILABLE", "message": "etcdserver: no leader"})
    for requests, answers in streams:
        with pytest.raises(grpc.RpcError) as info:
            next(answers)
        assert (info.value.code().name, info.value.details()) == NO_LEADER
        requests.close()
    line = injected_lines(srv)[-1]
    assert (line["fault"], line["method"], line["streams"]) == ("cut-watches", "Watch/Watch", 2)


class Lines:
    """A process's stdout lines, read by a thread (None at its end)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def next(self, timeout: float) -> str | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return "<nothing>"


def test_cut_watches_ends_gateway_watches_too(srv: EtcdProcess) -> None:
    conn = HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("POST", "/v3/watch", body=json.dumps({"create_request": {"key": "aw=="}}))
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.readline())["result"]["created"] is True
    assert srv.inject("cut-watches", error="leader-changed")["streams"] >= 1
    assert json.loads(resp.read()) == {"error": {"grpc_code": 14, "http_code": 503, "http_status": "Service Unavailable",
                                                 "message": "etcdserver: leader changed"}}
    conn.close()


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed")
@pytest.mark.parametrize(("error", "resumes"), [("no-leader", False), ("leader-changed", True)])
def test_etcdctl_watch_after_a_cut(srv: EtcdProcess, error: str, resumes: bool) -> None:
    """etcd's Go client gives up a watch cut with "no leader" (etcdctl says so and exits) and
    resumes one cut with any other UNAVAILABLE error where it left off."""
    assert ETCDCTL is not None
    key = f"cut-{error}"
    watch = subprocess.Popen([ETCDCTL, "--endpoints", srv.endpoint, "watch", key], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    lines = Lines(watch)
    try:
        seen = "<nothing>"
        deadline = time.monotonic() + 10
        while seen == "<nothing>" and time.monotonic() < deadline:  # until etcdctl watches
            assert etcdctl(srv.endpoint, "put", key, "before")[0] == 0
            seen = lines.next(timeout=0.3) or ""
        assert seen == "PUT"
        while lines.next(timeout=0.3) != "<nothing>":
            pass  # the rest of what was put meanwhile
        assert srv.inject("cut-watches", error=error)["streams"] >= 1
        assert etcdctl(srv.endpoint, "put", key, "after")[0] == 0
        if resumes:
            assert [lines.next(timeout=10) for _ in range(3)] == ["PUT", key, "after"]
            assert watch.poll() is None
        else:
            assert lines.next(timeout=10) is None
            assert watch.wait(timeout=10) != 0
            assert watch.stderr is not None
            assert "watch was canceled (etcdserver: no leader)" in watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.terminate()
        watch.communicate(timeout=5)


# -- expire a lease -------------------------------------------------------------------------------
def test_expire_lease_revokes_it_and_its_keys(srv: EtcdProcess) -> None:
    stubs = srv.stubs()
    lease = stubs.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10).ID
    assert put(srv, b"leased/1", lease=lease) is None and put(srv, b"leased/2", lease=lease) is None
    requests = RequestStream()
    events = stubs.watch.Watch(iter(requests), timeout=20)
    requests.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"leased/", range_end=b"leased0")))
    assert next(events).created
    status, _, body = http(srv, "POST", "/debug/inject/expire-lease", {"id": str(lease)})
    assert (status, body) == (200, {"id": str(lease), "keys": 2})
    # answered once revoked: the keys are gone, the lease too, and watchers saw one revision of deletes
    assert stubs.kv.Range(pb.RangeRequest(key=b"leased/", range_end=b"leased0"), timeout=10).count == 0
    assert stubs.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease), timeout=10).TTL == -1
    keepalive = list(stubs.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=10))
    assert [k.TTL for k in keepalive] == [0]
    deleted = next(events)
    assert [(e.type, e.kv.key) for e in deleted.events] == [(1, b"leased/1"), (1, b"leased/2")]
    assert len({e.kv.mod_revision for e in deleted.events}) == 1
    events.cancel()
    line = injected_lines(srv)[-1]
    assert (line["fault"], line["lease-id"], line["keys"]) == ("expire-lease", f"{lease:016x}", 2)
    # a lease that is not there: etcd's words, 404
    status, _, body = http(srv, "POST", "/debug/inject/expire-lease", {"id": lease})
    assert (status, body) == (404, {"error": "etcdserver: requested lease not found"})


@pytest.mark.skipif(ETCDCTL is None, reason="etcdctl is not installed")
def test_etcdctl_keep_alive_sees_the_lease_expire(srv: EtcdProcess) -> None:
    assert ETCDCTL is not None
    lease = srv.stubs().lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3), timeout=10).ID
    keep = subprocess.Popen([ETCDCTL, "--endpoints", srv.endpoint, "lease", "keep-alive", f"{lease:x}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert keep.stdout is not None
        assert keep.stdout.readline() == f"lease {lease:016x} keepalived with TTL(3)\n"
        srv.inject("expire-lease", id=lease)
        out, _ = keep.communicate(timeout=10)
        assert f"lease {lease:016x} expired or revoked.\n" in out
    finally:
        if keep.poll() is None:
            keep.kill()
            keep.communicate()


def test_server_inject_loads_no_stubs() -> None:
    """Server.inject and the pytest helper speak HTTP with the standard library: an application's
    process gets none of etcdlite's protobuf stubs (nor grpc) from them."""
    code = ("import sys, etcdlite, etcdlite.pytest_plugin; "
            "s = etcdlite.Server(fault_injection=True); "
            "assert s.command()[-1] == '--experimental-fault-injection'; "
            "print(sorted(m for m in sys.modules if m.startswith(('etcdlite.pb', 'grpc', 'google'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr
