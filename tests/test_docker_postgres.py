"""docker/compose.postgres.yaml, checked without Docker (none runs here): its structure, then each
etcdlite service run as its container would run it (the image's ENV, the service's environment,
the entrypoint without arguments) over a throw-away PostgreSQL in place of the ``postgres`` service."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from test_docker import DOCKERFILE, healthcheck_command, image_env

from etcdlite.config import from_args
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as pb_grpc
from etcdlite.process import free_port

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "compose.postgres.yaml"
ETCDLITE_SERVICES = ("etcd-1", "etcd-2")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_postgres_is_two_members_over_one_database_behind_one_name() -> None:
    services = compose()["services"]
    pg = services["postgres"]
    assert pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    urls = set()
    member_ids = set()
    for name in ETCDLITE_SERVICES:
        svc = services[name]
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert svc["healthcheck"]["test"][1:] == healthcheck_command()
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "etcd" in svc["networks"]["default"]["aliases"]  # one name for both
        env = svc["environment"]
        url = urlsplit(env["ETCDLITE_BACKEND"])
        assert (url.hostname, url.port, url.username, url.password, url.path) == (
            "postgres", 5432, pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_PASSWORD"],
            "/" + pg["environment"]["POSTGRES_DB"])
        urls.add(env["ETCDLITE_BACKEND"])
        config, _ = from_args([], environ={**image_env(2379, Path("/var/lib/etcd")), **env})
        assert config.backend == env["ETCDLITE_BACKEND"]
        member_ids.add(config.member_id)
    assert len(urls) == 1 and len(member_ids) == len(ETCDLITE_SERVICES)  # one database, distinct members
    app = services["app"]
    assert all(app["depends_on"][name]["condition"] == "service_healthy" for name in ETCDLITE_SERVICES)
    assert urlsplit(app["environment"]["ETCD_ENDPOINTS"]).hostname == "etcd"


def _service_env(name: str, database_url: str, port: int, tmp: Path) -> dict[str, str]:
    env = image_env(port, tmp / name)
    env.update(compose()["services"][name]["environment"])
    env["ETCDLITE_BACKEND"] = database_url  # the postgres service is the test's throw-away server
    env["ETCD_LISTEN_CLIENT_URLS"] = env["ETCD_ADVERTISE_CLIENT_URLS"] = f"http://127.0.0.1:{port}"
    return env


def test_the_compose_services_run_as_their_containers_would(pg_cluster: Any, tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = pg_cluster.new_database()
    ports = [free_port() for _ in ETCDLITE_SERVICES]
    procs = [subprocess.Popen([sys.executable, "-m", "etcdlite"], env=_service_env(name, url, port, tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, port in zip(ETCDLITE_SERVICES, ports)]
    try:
        for port in ports:
            health = [sys.executable if c == "python" else c for c in healthcheck_command()]
            health[-1] = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while (r := subprocess.run(health, capture_output=True, text=True)).returncode != 0:
                assert time.monotonic() < deadline, r.stdout + r.stderr
                time.sleep(0.2)
        first, second = (pb_grpc.KVStub(grpc.insecure_channel(f"127.0.0.1:{p}")) for p in ports)
        first.Put(pb.PutRequest(key=b"compose", value=b"one etcd"), timeout=10)
        assert second.Range(pb.RangeRequest(key=b"compose"), timeout=10).kvs[0].value == b"one etcd"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert proc.wait(20) == 0
