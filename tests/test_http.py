"""The HTTP side (issue 8): etcd's JSON gateway, /health, /livez, /readyz, /version, /metrics.

Differential: the same HTTP requests go to etcdlite (its ``--listen-client-http-urls`` listener)
and to real etcd 3.5.1 (HTTP on its client port), and the answers are compared after replacing
only what differs legitimately between two servers: lease IDs (by order of appearance), the
client URLs (ports) and a lease's remaining TTL.  Both servers are given the same peer URL, so
member and cluster IDs match.  Real etcd is skipped, never failed, when it is absent.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.transport import gojson, jsonpb
from etcdlite.transport.metrics import go_float
from harness import ETCD_BIN, EtcdProcess, free_port, run_parallel

CURL = shutil.which("curl")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def data(self) -> Any:
        """The body as JSON when it parses (a list for a stream of JSON lines), else as text."""
        try:
            return self.json()
        except ValueError:
            pass
        try:
            return [json.loads(line) for line in self.body.splitlines()]
        except ValueError:
            return self.body.decode()


class Http:
    """A keep-alive HTTP/1.1 client on one server (http.client)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.close()
            return Reply(resp.status, hdrs, data)
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any = None) -> Reply:
        raw = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        return self.request("POST", path, raw)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Target:
    name: str
    proc: EtcdProcess
    http: Http  # where the gateway and /health are
    metrics: Http | None = None  # etcdlite's --listen-metrics-urls
    extra: dict[str, Any] = field(default_factory=dict)


def _start(name: str, base: Path, peer_port: int, extra_args: list[str] = ()) -> Target:  # type: ignore[assignment]
    peer = f"http://127.0.0.1:{peer_port}"
    if name == "etcdlite":
        http_port, metrics_port = free_port(), free_port()
        args = ["--unsafe-no-fsync", "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}",
                "--listen-client-http-urls", f"http://127.0.0.1:{http_port}",
                "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}", *extra_args]
        proc = EtcdProcess("etcdlite", base / "etcdlite.data", args=args, peer_port=peer_port).start()
        return Target(name, proc, Http(http_port), Http(metrics_port))
    proc = EtcdProcess("etcd", base / "etcd.data", args=list(extra_args), peer_port=peer_port).start()
    return Target(name, proc, Http(proc.port))


def _targets(base: Path) -> dict[str, Target]:
    names = ["etcdlite"] + (["etcd"] if ETCD_BIN else [])
    peer_port = free_port()
    return run_parallel({n: (lambda n=n: _start(n, base, peer_port)) for n in names})


def _stop(targets: dict[str, Target]) -> None:
    for t in targets.values():
        t.http.close()
        if t.metrics is not None:
            t.metrics.close()
        t.proc.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[dict[str, Target]]:
    """A fresh etcdlite and (when installed) a fresh real etcd."""
    targets = _targets(tmp_path)
    yield targets
    _stop(targets)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    """One etcdlite and one etcd for the tests that do not depend on the servers' history."""
    targets = _targets(tmp_path_factory.mktemp("http"))
    yield targets
    _stop(targets)


# -- normalization ------------------------------------------------------------------------------

class Normalizer:
    """Lease IDs become lease#N by order of appearance; client URLs lose their ports."""

    def __init__(self) -> None:
        self.leases: dict[str, str] = {}

    def __call__(self, obj: Any, parent_key: str = "") -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in ("ID", "lease") and isinstance(v, str) and parent_key != "members":
                    out[k] = self.leases.setdefault(v, f"lease#{len(self.leases) + 1}")
                elif k == "clientURLs":
                    out[k] = [re.sub(r":\d+$", ":PORT", u) for u in v]
                elif k == "TTL" and "grantedTTL" in obj and int(v) >= int(obj["grantedTTL"]) - 2:
                    out[k] = "remaining"
                else:
                    out[k] = self(v, k)
            return out
        if isinstance(obj, list):
            return [self(v, parent_key) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self(v, parent_key) for v in obj)
        return obj


def differential(targets: dict[str, Target], scenario: Callable[[Target], list[Any]]) -> list[Any]:
    """Run ``scenario`` on every target; assert equal transcripts; return etcdlite's."""
    results = {name: Normalizer()(scenario(t)) for name, t in targets.items()}
    if "etcd" in results:
        for i, (mine, theirs) in enumerate(zip(results["etcdlite"], results["etcd"])):
            assert mine == theirs, f"step {i}: etcdlite {mine!r}\n   etcd {theirs!r}"
        assert len(results["etcdlite"]) == len(results["etcd"])
    return results["etcdlite"]


def calls(t: Target, steps: list[tuple[str, Any]]) -> list[Any]:
    out = []
    for path, body in steps:
        r = t.http.post(path, body)
        out.append((path, r.status, r.data()))
    return out


# -- the JSON gateway ---------------------------------------------------------------------------

def test_gateway_kv_txn_compaction_match_etcd(pair: dict[str, Target]) -> None:
    foo, bar = b64("foo"), b64("bar")
    steps = [
        ("/v3/kv/put", {"key": foo, "value": bar}),
        ("/v3/kv/put", {"key": foo, "value": b64("baz"), "prev_kv": True}),
        ("/v3/kv/put", {"key": b64("foo2"), "value": b64("<&>\u00e9")}),
        ("/v3/kv/range", {"key": foo}),
        ("/v3/kv/range", {"key": b64("a"), "range_end": b64("z"), "sort_order": "DESCEND",
                          "sort_target": "KEY", "limit": "1"}),
        ("/v3/kv/range", {"key": b64("a"), "range_end": b64("z"), "count_only": True}),
        ("/v3/kv/range", {"key": foo, "keysOnly": True}),  # the JSON name works too
        ("/v3/kv/range", {"key": b64("none")}),
        ("/v3/kv/range", {"key": foo, "revision": 100}),
        ("/v3/kv/put", {"value": bar}),
        ("/v3/kv/put", {"key": foo, "value": bar, "ignore_value": True}),
        ("/v3/kv/txn", {"compare": [{"key": foo, "result": "EQUAL", "target": "VALUE", "value": b64("baz")}],
                        "success": [{"request_put": {"key": b64("t"), "value": b64("1")}},
                                    {"request_range": {"key": foo}}],
                        "failure": [{"request_delete_range": {"key": foo}}]}),
        ("/v3/kv/txn", {"compare": [{"key": foo, "target": "VERSION", "version": "0"}],
                        "success": [{"request_range": {"key": foo}}],
                        "failure": [{"request_txn": {"success": [{"request_range": {"key": b64("t")}}]}}]}),
        ("/v3/kv/txn", {"success": [{"request_put": {"key": foo}}, {"request_put": {"key": foo}}]}),
        ("/v3/kv/deleterange", {"key": b64("foo"), "range_end": b64("foo3"), "prev_kv": True}),
        ("/v3/kv/compaction", {"revision": "3"}),
        ("/v3/kv/range", {"key": foo, "revision": "2"}),
        ("/v3/kv/compaction", {"revision": "100"}),
        ("/v3beta/kv/range", {"key": b64("t")}),
        ("/v3/kv/range", {"key": foo, "sort_order": "NOPE"}),
        ("/v3/kv/range", {}),
    ]
    out = differential(pair, lambda t: calls(t, steps))
    assert out[0][1:] == (200, {"header": {"cluster_id": out[0][2]["header"]["cluster_id"],
                                           "member_id": out[0][2]["header"]["member_id"],
                                           "revision": "2", "raft_term": "2"}})
    assert out[3][2]["kvs"] == [{"key": b64("foo"), "create_revision": "2", "mod_revision": "3",
                                 "version": "2", "value": b64("baz")}]
    assert out[8][1:] == (400, {"error": "etcdserver: mvcc: required revision is a future revision",
                                "code": 11, "message": "etcdserver: mvcc: required revision is a future revision"})
    assert out[9][1] == 400 and out[9][2]["code"] == 3
    assert out[16][2]["code"] == 11 and "compacted" in out[16][2]["error"]


def test_gateway_lease_routes_match_etcd(pair: dict[str, Target]) -> None:
    def scenario(t: Target) -> list[Any]:
        out = calls(t, [("/v3/lease/grant", {"TTL": 100})])
        lease = out[0][2]["ID"]
        out += calls(t, [
            ("/v3/kv/put", {"key": b64("k1"), "value": b64("v"), "lease": lease}),
            ("/v3/kv/put", {"key": b64("k2"), "value": b64("v"), "lease": "12345"}),
            ("/v3/lease/timetolive", {"ID": lease, "keys": True}),
            ("/v3/kv/lease/timetolive", {"ID": lease}),
            ("/v3/lease/leases", {}),
            ("/v3/kv/lease/leases", {}),
            ("/v3/lease/keepalive", {"ID": lease}),
            ("/v3/lease/keepalive", b'{"ID":"%s"}{"ID":"7"}' % lease.encode()),
            ("/v3/lease/keepalive", b""),
            ("/v3/lease/revoke", {"ID": lease}),
            ("/v3/kv/lease/revoke", {"ID": lease}),
            ("/v3/lease/timetolive", {"ID": lease}),
            ("/v3/kv/range", {"key": b64("k1")}),
            ("/v3/lease/grant", {"TTL": 10, "ID": "77"}),
            ("/v3/lease/grant", {"TTL": 10, "ID": "77"}),
            ("/v3/cluster/member/list", {}),
        ])
        return out

    out = differential(pair, scenario)
    assert out[7][2] == {"result": {"header": out[7][2]["result"]["header"], "ID": "lease#1", "TTL": "100"}}
    assert [line["result"].get("TTL") for line in out[8][2]] == ["100", None]  # lease 7 does not exist
    assert out[9][1:] == (200, [])  # no request, no answer: the stream just ends
    assert out[11][1:] == (404, {"error": "etcdserver: requested lease not found", "code": 5,
                                 "message": "etcdserver: requested lease not found"})
    assert out[15][2]["code"] == 9  # lease already exists: FailedPrecondition, HTTP 400


def _watch(t: Target, body: bytes, lines: int, during: Callable[[], None] | None = None) -> list[Any]:
    """POST /v3/watch and read ``lines`` JSON lines (running ``during`` after the first)."""
    conn = http.client.HTTPConnection("127.0.0.1", t.http.port, timeout=10)
    try:
        conn.request("POST", "/v3/watch", body=body)
        resp = conn.getresponse()
        out: list[Any] = [resp.status, resp.getheader("Content-Type")]
        for i in range(lines):
            line = resp.readline()
            out.append(json.loads(line))
            if i == 0 and during is not None:
                during()
        return out
    finally:
        conn.close()


def test_gateway_watch_streams_like_etcd(pair: dict[str, Target]) -> None:
    def scenario(t: Target) -> list[Any]:
        out = calls(t, [("/v3/kv/put", {"key": b64("w"), "value": b64("1")}),
                        ("/v3/kv/put", {"key": b64("w"), "value": b64("2")})])
        out.append(_watch(t, json.dumps({"create_request": {"key": b64("w"), "prev_kv": True}}).encode(), 3,
                          lambda: calls(t, [("/v3/kv/put", {"key": b64("w"), "value": b64("3")}),
                                            ("/v3/kv/deleterange", {"key": b64("w")})])))
        out.append(_watch(t, json.dumps({"create_request": {"key": b64("w"), "start_revision": "2"}}).encode(), 2))
        both = b'{"create_request":{"key":"%s"}} {"progress_request":{}}' % b64("w").encode()
        out.append(_watch(t, both, 2))
        out.append(_watch(t, b'{"create_request":{"key":"%s","filters":["NOPUT"]}}' % b64("w").encode(), 1))
        r = t.http.post("/v3/watch", b"{bad")
        out.append((r.status, r.data()))
        return out

    out = differential(pair, scenario)
    created, put, deleted = out[2][2:]
    assert out[2][:2] == [200, "application/json"]
    assert created["result"]["created"] is True
    assert put["result"]["events"][0]["prev_kv"]["value"] == b64("2")
    assert deleted["result"]["events"][0]["type"] == "DELETE"
    assert out[-1] == (500, {"error": "invalid character 'b' looking for beginning of object key string",
                             "code": 2, "message": "invalid character 'b' looking for beginning of object key string"})


BAD_BODIES = [
    b"", b"{", b'{"key"', b'{"key":', b'{"key":"Zm9v",}', b"[]", b"5", b'"s"', b"null", b"tru", b"-", b"1.x",
    b'{"key":"Zm9v"} trailing', b'{"key":5}', b'{"key":"!!"}', b'{"key":"Zm9"}', b'{"key":"Zg="}',
    b'{"key":"Zm9v\\n"}', b'{"key":"Zm9vYg=x"}', b'{"key":"\\x"}', b'{"key":"\\u12g4"}', b'{"key":"a\nb"}',
    b'{"key":"Zm9v","limit":"abc"}', b'{"key":"Zm9v","limit":""}', b'{"key":"Zm9v","limit":"1.5"}',
    b'{"key":"Zm9v","limit":1e2}', b'{"key":"Zm9v","limit":99999999999999999999}', b'{"key":"Zm9v","limit":true}',
    b'{"key":"Zm9v","limit":"-"}', b'{"key":"Zm9v","limit":"1."}', b'{"key":"Zm9v","sort_order":true}',
    b'{"key":"Zm9v","sort_order":"<\\u00e9>"}', b'{"key":"Zm9v","serializable":"true"}', b'{"key":[102,111,111]}',
    b'{"key":[300]}', b'{"key":{}}', b'{"unknown":1,"key":"Zm9v"}', b'{"key":"\xff"}', b"\xff",
]


@pytest.mark.parametrize("path", ["/v3/kv/range", "/v3/kv/txn"])
def test_gateway_bad_requests_answer_etcds_exact_errors(shared: dict[str, Target], path: str) -> None:
    bodies = BAD_BODIES if path == "/v3/kv/range" else [
        b'{"compare":{}}', b'{"compare":[5]}', b'{"compare":[{"result":"NOPE"}]}', b'{"success":[null]}',
        b'{"compare":[{"key":"Zm9v","target":"MOD","mod_revision":"x"}]}']

    def scenario(t: Target) -> list[Any]:
        out = []
        for body in bodies:
            r = t.http.post(path, body)
            out.append((body, r.status, r.data()))
        return out

    differential(shared, scenario)


def test_http_errors_and_redirects_match_etcd(shared: dict[str, Target]) -> None:
    def scenario(t: Target) -> list[Any]:
        out = []
        for method, path in [("GET", "/v3/kv/range"), ("POST", "/v3/kv/nope"), ("POST", "/v3/"),
                             ("POST", "/v3//kv/range"), ("GET", "/v3"), ("GET", "/nope"), ("POST", "/health"),
                             ("PUT", "/version"), ("POST", "/v3alpha/kv/range"), ("OPTIONS", "/v3/kv/range"),
                             ("GET", "/v3/maintenance/hashkv")]:
            r = t.http.request(method, path, b"{}" if method != "GET" else None)
            out.append((method, path, r.status, r.body.decode(), r.headers.get("location"),
                        r.headers.get("allow"), r.headers.get("access-control-allow-origin")))
        return out

    differential(shared, scenario)


def test_alarm_makes_health_503_and_exclude_clears_it(pair: dict[str, Target]) -> None:
    def scenario(t: Target) -> list[Any]:
        member = t.http.post("/v3/cluster/member/list", {}).json()["header"]["member_id"]
        out = calls(t, [("/v3/maintenance/alarm", {"action": "ACTIVATE", "memberID": member, "alarm": "NOSPACE"})])
        for path in ("/health", "/health?exclude=NOSPACE", "/health?exclude=CORRUPT&serializable=true"):
            r = t.http.get(path)
            out.append((path, r.status, r.body.decode(), r.headers.get("content-type")))
        out += calls(t, [("/v3/kv/put", {"key": b64("k"), "value": b64("v")}),
                         ("/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": member, "alarm": "NOSPACE"}),
                         ("/v3/maintenance/alarm", {"action": "GET"})])
        r = t.http.get("/health")
        out.append((r.status, r.body.decode()))
        return out

    out = differential(pair, scenario)
    assert out[1][1:3] == (503, '{"health":"false","reason":"ALARM NOSPACE"}\n')
    assert out[2][1:3] == (200, '{"health":"true","reason":""}')
    assert out[4][2]["error"] == "etcdserver: mvcc: database space exceeded"
    assert out[-1] == (200, '{"health":"true","reason":""}')


# -- etcd's HTTP endpoints ---------------------------------------------------------------------

def test_health_version_and_metrics_shape(shared: dict[str, Target]) -> None:
    for t in shared.values():
        r = t.http.get("/health")
        assert (r.status, r.json()) == (200, {"health": "true", "reason": ""})
        assert r.headers["access-control-allow-origin"] == "*"
        r = t.http.get("/version")
        assert r.status == 200 and r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"etcdserver", "etcdcluster"}
        assert re.fullmatch(r"3\.5\.\d+", r.json()["etcdserver"])
    with urllib.request.urlopen(f"{shared['etcdlite'].http.base}/version", timeout=10) as r:  # plain urllib
        assert json.load(r) == {"etcdserver": "3.5.1", "etcdcluster": "3.5.0"}  # the release emulated
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(f"{shared['etcdlite'].http.base}/v3/kv/put", data=b"{}"))
    assert err.value.code == 400 and json.load(err.value)["message"] == "etcdserver: key is not provided"

    required = ["etcd_server_has_leader", "etcd_server_is_leader", "etcd_mvcc_db_total_size_in_bytes",
                "etcd_debugging_mvcc_keys_total", "etcd_server_proposals_committed_total",
                "etcd_server_proposals_applied_total", "etcd_mvcc_put_total", "etcd_mvcc_range_total",
                "etcd_mvcc_delete_total", "etcd_mvcc_txn_total", "grpc_server_started_total",
                "grpc_server_handled_total", "process_cpu_seconds_total", "process_resident_memory_bytes",
                "process_open_fds", "process_start_time_seconds", "etcd_server_id", "etcd_server_version"]
    texts = {name: t.http.get("/metrics") for name, t in shared.items()}
    lite = shared["etcdlite"]
    assert lite.metrics is not None
    texts["etcdlite-metrics-listener"] = lite.metrics.get("/metrics")
    for name, r in texts.items():
        assert r.status == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = parse_exposition(r.body.decode())
        for metric in required:
            assert metric in families, f"{name} lacks {metric}"
        kinds = {m: families[m]["type"] for m in required}
        assert kinds["grpc_server_handled_total"] == "counter" and kinds["etcd_server_has_leader"] == "gauge"
        handled = families["grpc_server_handled_total"]["samples"]
        assert any('grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"' in s
                   for s in handled)
        assert families["etcd_server_has_leader"]["samples"] == {"etcd_server_has_leader": 1.0}


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """Prometheus text format: {family: {type, help, samples: {series: value}}}, checked as it goes."""
    families: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, {"samples": {}})["help"] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families.setdefault(name, {"samples": {}})["type"] = kind
        elif line:
            m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)', line)
            assert m, line
            family = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            families.setdefault(family if family in families else m.group(1), {"samples": {}})["samples"][
                m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return families


def _sample(text: str, series: str) -> float:
    return parse_exposition(text)[series.split("{")[0]]["samples"].get(series, 0.0)


def test_metrics_count_grpc_and_gateway_calls(shared: dict[str, Target]) -> None:
    lite = shared["etcdlite"]
    assert lite.metrics is not None
    started = 'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}'
    bad = ('grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Put",'
           'grpc_service="etcdserverpb.KV",grpc_type="unary"}')
    before = lite.metrics.get("/metrics").body.decode()
    lite.http.post("/v3/kv/range", {"key": b64("m")})  # through the gateway
    lite.proc.stubs().kv.Range(pb.RangeRequest(key=b"m"))  # over gRPC
    lite.http.post("/v3/kv/put", {"value": b64("no key")})
    after = lite.metrics.get("/metrics").body.decode()
    assert _sample(after, started) == _sample(before, started) + 2
    assert _sample(after, bad) == _sample(before, bad) + 1
    assert _sample(after, "etcd_mvcc_range_total") >= _sample(before, "etcd_mvcc_range_total") + 2


def test_livez_and_readyz(shared: dict[str, Target]) -> None:
    h = shared["etcdlite"].http
    assert (h.get("/livez").status, h.get("/livez").body) == (200, b"ok\n")
    assert h.get("/readyz?verbose").body == b"[+]data_corruption ok\n[+]linearizable_read ok\n[+]serializable_read ok\nok\n"
    assert h.get("/readyz?verbose&exclude=linearizable_read").body == (
        b"[+]data_corruption ok\n[+]serializable_read ok\nok\n")
    assert h.get("/livez/serializable_read").body == b"ok\n"
    assert h.get("/readyz/nope").status == 404
    assert h.request("POST", "/livez", b"").status == 405


# -- HTTP/1.1 details, curl ---------------------------------------------------------------------

def test_keep_alive_chunked_request_and_head(shared: dict[str, Target]) -> None:
    lite = shared["etcdlite"].http
    conn = http.client.HTTPConnection("127.0.0.1", lite.port, timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"health":"true","reason":""}'
        sock = conn.sock
        body = iter([b'{"key":', b'"', b64("ch").encode(), b'","value":"', b64("unk").encode(), b'"}'])
        conn.request("POST", "/v3/kv/put", body=body, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        assert conn.sock is sock  # one connection for all three
    finally:
        conn.close()
    got = lite.post("/v3/kv/range", {"key": b64("ch")}).json()
    assert got["kvs"][0]["value"] == b64("unk")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl(shared: dict[str, Target]) -> None:
    for t in shared.values():
        out = subprocess.run([CURL, "-sS", "-f", f"{t.http.base}/health"], capture_output=True, text=True, timeout=10)
        assert out.stdout == '{"health":"true","reason":""}', out.stderr
    lite = shared["etcdlite"].http
    value = b64("x" * 3000)  # a body over 1 KiB: curl sends "Expect: 100-continue" and waits for it
    start = time.monotonic()
    out = subprocess.run([CURL, "-sS", "-f", "-X", "POST", f"{lite.base}/v3/kv/put", "-d",
                          json.dumps({"key": b64("curl"), "value": value})], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 0.9  # not curl's 1 s wait for a 100 Continue that never comes
    assert json.loads(out.stdout)["header"]["revision"]
    out = subprocess.run([CURL, "-sS", "-N", "--max-time", "2", "-X", "POST", f"{lite.base}/v3/watch", "-d",
                          json.dumps({"create_request": {"key": b64("curl")}})], capture_output=True, text=True)
    assert json.loads(out.stdout.splitlines()[0])["result"]["created"] is True


# -- where HTTP is served -----------------------------------------------------------------------

def test_client_http_mux_serves_grpc_and_http_on_one_port(tmp_path: Path) -> None:
    srv = EtcdProcess("etcdlite", tmp_path / "data", args=["--client-http-mux", "--unsafe-no-fsync"]).start()
    try:
        h = Http(srv.port)
        assert h.get("/health").json() == {"health": "true", "reason": ""}
        assert h.post("/v3/kv/put", {"key": b64("mux"), "value": b64("1")}).status == 200
        assert srv.stubs().kv.Range(pb.RangeRequest(key=b"mux")).kvs[0].value == b"1"
        h.close()
        rc, out, err = srv.etcdctl("get", "mux")
        assert (rc, out) == (0, "mux\n1\n"), err
    finally:
        assert srv.stop() == 0


def test_open_gateway_watch_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    port = free_port()
    srv = EtcdProcess("etcdlite", tmp_path / "data",
                      args=["--listen-client-http-urls", f"http://127.0.0.1:{port}", "--unsafe-no-fsync"]).start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v3/watch", body=json.dumps({"create_request": {"key": b64("s")}}))
        resp = conn.getresponse()
        assert json.loads(resp.readline())["result"]["created"] is True
        start = time.monotonic()
        assert srv.stop(timeout=10) == 0
        assert time.monotonic() - start < 5
    finally:
        conn.close()
        srv.stop()


# -- gojson on its own ---------------------------------------------------------------------------

def test_encode_follows_jsonpb() -> None:
    c = pb.Compare(key=b"k", target=pb.Compare.MOD, version=0)  # a oneof member set to 0 is present
    assert jsonpb.encode_message(c) == '{"target":"MOD","key":"aw==","version":"0"}'
    member = pb.Member(ID=2**64 - 1, name="<a&b>\u2028\n\x01", peerURLs=["u"])
    assert jsonpb.encode_message(member) == ('{"ID":"18446744073709551615","name":"\\u003ca\\u0026b\\u003e'
                                             '\\u2028\\n\\u0001","peerURLs":["u"]}')
    assert jsonpb.encode_message(pb.RangeResponse()) == "{}"


def test_decode_accepts_what_jsonpb_accepts() -> None:
    raw, _ = gojson.parse_next(b'{"key":"Zm9v\\r\\n","limit":"5","sortOrder":1,"sort_target":"MOD","revision":-1}')
    r = jsonpb.decode_message(raw, pb.RangeRequest())
    assert (r.key, r.limit, r.sort_order, r.sort_target, r.revision) == (b"foo", 5, 1, pb.RangeRequest.MOD, -1)
    with pytest.raises(gojson.Incomplete):
        gojson.parse_next(b'{"key":"Zm', final=False)
    assert gojson.parse_next(b"  ") == (None, 2)


@pytest.mark.parametrize("value, text", [(0, "0"), (13, "13"), (0.31, "0.31"), (20480, "20480"),
                                         (2147483648, "2.147483648e+09"), (1e6, "1e+06"), (999999, "999999"),
                                         (2**64 - 1, "1.8446744073709552e+19"), (1.5e-7, "1.5e-07")])
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text
