"""A wheel built without a C compiler installs and serves: the relay runs its Python loop.

``make test-deps-range`` builds the wheel with CC naming no compiler (the relay extension is optional),
installs it at the oldest end of the dependency ranges and runs this with ETCDLITE_WHEEL_WITHOUT_EXTENSION=1;
elsewhere (an editable install, which has the extension where gcc is at hand) these tests skip.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import etcdlite
from etcdlite.transport import splice

pytestmark = pytest.mark.skipif(not os.environ.get("ETCDLITE_WHEEL_WITHOUT_EXTENSION"),
                                reason="runs on a wheel built without a compiler (make test-deps-range)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[etcdlite.Server]:
    srv = etcdlite.Server(tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


def _relay_command(pid: int) -> list[str]:
    """The command line of the server's relay process (its only child)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    return c.read().decode().split("\0")
    raise AssertionError("no relay process")


def _http(port: int, method: str, path: str, body: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_installed_package_has_no_extension() -> None:
    assert "site-packages" in Path(etcdlite.__file__).parts, etcdlite.__file__  # the wheel, not the tree
    assert importlib.util.find_spec("etcdlite.transport._splice") is None
    assert splice.relay_program() is None
    module, path = splice.relay_loop_file()
    assert module == "relay_loop"
    assert Path(path).is_file()


def test_grpc_and_http_on_one_client_port_through_the_python_relay(server: etcdlite.Server) -> None:
    from harness import pb, pb_grpc

    assert server.pid is not None
    relay = _relay_command(server.pid)
    assert "relay_loop" in relay and any(arg.endswith("relay_loop.py") for arg in relay), relay
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        kv = pb_grpc.KVStub(channel)
        put = kv.Put(pb.PutRequest(key=b"wheel", value=b"no compiler"), timeout=10)
        got = kv.Range(pb.RangeRequest(key=b"wheel"), timeout=10)
    assert put.header.revision == 2
    assert [(kv.key, kv.value, kv.mod_revision) for kv in got.kvs] == [(b"wheel", b"no compiler", 2)]

    status, body = _http(server.port, "POST", "/v3/kv/range", {"key": base64.b64encode(b"wheel").decode()})
    assert status == 200, body
    answer = json.loads(body)
    assert [(base64.b64decode(kv["key"]), base64.b64decode(kv["value"])) for kv in answer["kvs"]] == \
        [(b"wheel", b"no compiler")]
    assert answer["header"]["revision"] == "2"

    status, body = _http(server.port, "POST", "/v3/kv/put", {"key": base64.b64encode(b"via-http").decode(),
                                                            "value": base64.b64encode(b"too").decode()})
    assert status == 200, body
    assert json.loads(body)["header"]["revision"] == "3"

    assert _http(server.port, "GET", "/health") == (200, b'{"health":"true","reason":""}')
    status, page = _http(server.port, "GET", "/ui/")  # the console's files are in the wheel too
    assert status == 200 and b"<html" in page.lower()
    status, script = _http(server.port, "GET", "/ui/js/main.js")
    assert status == 200 and script
