"""The client matrix of issue 8 (the README's table): etcd3gw over etcd's JSON gateway, and
etcdctl 3.4 (Debian's) and 3.5 over gRPC, each against etcdlite and real etcd.

etcdlite runs twice for etcd3gw: with ``--listen-client-http-urls`` (the gateway on its own port)
and with ``--client-http-mux`` (HTTP beside gRPC on the client port, as etcd serves it).  Nothing
here imports etcdlite's protobuf stubs (see conftest.py).
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from etcdlite.process import Server, free_port

VENV_BIN = Path(sys.executable).parent
ETCD = shutil.which("etcd", path=str(VENV_BIN)) or shutil.which("etcd")
ETCDCTL_35 = shutil.which("etcdctl", path=str(VENV_BIN))
ETCDCTL_34 = "/usr/bin/etcdctl" if Path("/usr/bin/etcdctl").exists() else None


@dataclass
class Endpoint:
    grpc_port: int
    http_port: int


def _start_etcd(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    if ETCD is None:
        pytest.skip("real etcd is not installed")
    port, peer_port = free_port(), free_port()
    url, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    log = open(tmp / "etcd.log", "wb")
    proc = subprocess.Popen([ETCD, "--name", "default", "--data-dir", str(tmp / "etcd.data"),
                             "--listen-client-urls", url, "--advertise-client-urls", url,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"default={peer}", "--unsafe-no-fsync", "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            out = subprocess.run(["curl", "-s", f"{url}/health"], capture_output=True, text=True) \
                if shutil.which("curl") else None
            if out is None or '"health":"true"' in out.stdout:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("etcd did not start:\n" + (tmp / "etcd.log").read_text())


@pytest.fixture(scope="module", params=["etcdlite", "etcdlite-mux", "etcd"])
def endpoint_http(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "etcd":
        proc, port = _start_etcd(tmp)
        try:
            yield Endpoint(port, port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        return
    http_port = free_port()
    args = ["--unsafe-no-fsync"]
    args += ["--client-http-mux"] if request.param == "etcdlite-mux" else [
        "--listen-client-http-urls", f"http://127.0.0.1:{http_port}"]
    with Server(data_dir=tmp / "data", args=args) as server:
        yield Endpoint(server.port, server.port if request.param == "etcdlite-mux" else http_port)


@pytest.fixture
def gw(endpoint_http: Endpoint):
    import etcd3gw

    client = etcd3gw.client(host="127.0.0.1", port=endpoint_http.http_port, timeout=10)
    yield client
    client.session.close()


# -- etcd3gw ------------------------------------------------------------------------------------

def test_etcd3gw_kv(gw, request) -> None:
    p = request.node.name.split("[")[1].rstrip("]") + "/"
    assert gw.api_path == "/v3/"  # from /version
    assert gw.put(p + "a", "1") is True
    assert gw.put(p + "b", "2") is True
    assert gw.get(p + "a") == [b"1"]
    assert gw.get(p + "missing") == []
    [(value, meta)] = gw.get(p + "a", metadata=True)
    assert value == b"1" and meta["key"] == (p + "a").encode() and int(meta["version"]) == 1
    assert sorted(v for v, _ in gw.get_prefix(p)) == [b"1", b"2"]
    assert gw.replace(p + "a", "1", "3") is True
    assert gw.replace(p + "a", "1", "4") is False
    assert gw.get(p + "a") == [b"3"]
    assert gw.delete(p + "a") is True
    assert gw.delete(p + "a") is False
    assert gw.delete_prefix(p) is True
    assert gw.get_prefix(p) == []
    assert gw.status()["leader"] and len(gw.members()) == 1


def test_etcd3gw_lease(gw, request) -> None:
    p = request.node.name.split("[")[1].rstrip("]") + "/"
    lease = gw.lease(ttl=60)
    assert 58 <= lease.ttl() <= 60
    gw.put(p + "k", "v", lease=lease)
    assert lease.keys() == [(p + "k").encode()]
    assert lease.refresh() == 60
    assert lease.revoke() is True
    assert gw.get(p + "k") == []
    assert lease.ttl() == -1
    assert lease.refresh() == -1


def test_etcd3gw_watch(gw, request) -> None:
    p = request.node.name.split("[")[1].rstrip("]") + "/"
    events, cancel = gw.watch(p + "w", prev_kv=True)
    try:
        time.sleep(0.2)  # etcd3gw creates the watch in a thread
        gw.put(p + "w", "1")
        gw.put(p + "w", "2")
        gw.delete(p + "w")
        got = [next(events) for _ in range(3)]
    finally:
        cancel()
    assert [e.get("type", "PUT") for e in got] == ["PUT", "PUT", "DELETE"]
    assert [e["kv"].get("value") for e in got] == [b"1", b"2", None]
    assert got[1]["prev_kv"]["value"] == "MQ=="  # etcd3gw decodes kv only
    first = gw.watch_once(p + "w", timeout=5, start_revision=1)  # history: the first put
    assert (first["kv"]["key"], first["kv"]["value"]) == ((p + "w").encode(), b"1")


# -- etcdctl 3.4 and 3.5 over gRPC --------------------------------------------------------------

ETCDCTLS = [pytest.param(ETCDCTL_35, id="etcdctl-3.5"), pytest.param(ETCDCTL_34, id="etcdctl-3.4")]


def _etcdctl(binary: str, port: int, *args: str) -> str:
    r = subprocess.run([binary, f"--endpoints=127.0.0.1:{port}", *args], capture_output=True, text=True,
                       timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    return f"rc={r.returncode}\n{r.stdout}{r.stderr}"


def _etcdctl_session(binary: str, port: int) -> list[str]:
    out = [_etcdctl(binary, port, "put", "k1", "v1"), _etcdctl(binary, port, "put", "k2", "v2"),
           _etcdctl(binary, port, "get", "k", "--prefix"), _etcdctl(binary, port, "get", "k1", "-w", "json"),
           _etcdctl(binary, port, "del", "k2"), _etcdctl(binary, port, "get", "nothing")]
    grant = _etcdctl(binary, port, "lease", "grant", "100")
    out.append(grant)
    lease = re.search(r"lease ([0-9a-f]+) granted", grant).group(1)  # type: ignore[union-attr]
    out += [_etcdctl(binary, port, "put", "lk", "lv", f"--lease={lease}"),
            _etcdctl(binary, port, "lease", "timetolive", lease, "--keys"),
            _etcdctl(binary, port, "lease", "keep-alive", "--once", lease),
            _etcdctl(binary, port, "lease", "list"),
            _etcdctl(binary, port, "lease", "revoke", lease),
            _etcdctl(binary, port, "get", "lk"),
            _etcdctl(binary, port, "lease", "revoke", lease)]
    return out


def _normalize(lines: list[str]) -> list[str]:
    leases: dict[str, str] = {}

    def alias(m: re.Match[str]) -> str:
        return leases.setdefault(m.group(0), f"LEASE{len(leases)}")
    out = []
    for text in lines:
        text = re.sub(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{14,16}\b|\b\d{17,20}\b", alias, text)  # lease IDs
        text = re.sub(r"remaining\(\d+s\)", "remaining(Ns)", text)
        text = re.sub(r'"(cluster_id|member_id)":\d+', r'"\1":ID', text)
        text = re.sub(r"\{\"level\".*\n?", "", text)  # client-side log lines
        out.append(text)
    return out


@pytest.mark.parametrize("binary", ETCDCTLS)
def test_etcdctl_kv_and_lease_match_etcd(binary: str | None, tmp_path: Path) -> None:
    if binary is None:
        pytest.skip("this etcdctl is not installed")
    results = {}
    with Server(data_dir=tmp_path / "lite", args=["--unsafe-no-fsync"]) as server:
        results["etcdlite"] = _normalize(_etcdctl_session(binary, server.port))
    if ETCD is not None:
        proc, port = _start_etcd(tmp_path)
        try:
            results["etcd"] = _normalize(_etcdctl_session(binary, port))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        assert results["etcdlite"] == results["etcd"]
    lite = results["etcdlite"]
    assert lite[2] == "rc=0\nk1\nv1\nk2\nv2\n"
    assert lite[-1].startswith("rc=1") and "requested lease not found" in lite[-1]
