"""The pytest plugin's fixtures and etcdlite.Server, used the way a downstream project would."""

from __future__ import annotations

import etcdlite


def test_etcd_fixture_gives_a_fresh_server(etcd):
    client = etcd.client()
    assert etcd.endpoint == f"http://127.0.0.1:{etcd.port}"
    assert client.get("k") == (None, None)
    client.put("k", "v")
    assert client.get("k")[0] == b"v"


def test_each_test_gets_its_own_server(etcd):
    assert etcd.client().get("k") == (None, None)


def test_session_fixture_is_shared(etcd_session, request):
    c = etcd_session.client()
    c.put(request.node.name, "1")
    assert c.get(request.node.name)[0] == b"1"


def test_server_context_manager_keeps_data_across_restart(tmp_path):
    import etcd3

    data = tmp_path / "data"
    with etcdlite.Server(data_dir=data) as server:
        etcd3.client(host=server.host, port=server.port).put("durable", "yes")
    assert data.exists()
    with etcdlite.Server(data_dir=data) as server:
        assert etcd3.client(host=server.host, port=server.port).get("durable")[0] == b"yes"
