"""Fault injection used the way an application's own tests use it: the ``etcd3`` client, the
``etcd_faults`` fixture of etcdlite's pytest plugin, and ``etcdlite.Server.inject``.

Each test is a small piece of application code (a retry loop, a watch that resumes, a
registration that survives its lease expiring) and the fault that code must survive.

``etcd3`` is imported inside the functions, as in this directory's other modules: imported while
pytest collects, its descriptors would clash with aetcd's in test_aetcd_client.py.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

import etcdlite

pytestmark = pytest.mark.timeout(60)


# -- the application's code ------------------------------------------------------------------------
def put_with_retry(client, key, value, attempts=5):
    """Retry a write that etcd refused as UNAVAILABLE (leader changed, no leader, timed out)."""
    import etcd3

    for attempt in range(attempts):
        try:
            return client.put(key, value)
        except etcd3.exceptions.ConnectionFailedError:
            time.sleep(0.02 * 2**attempt)
    raise RuntimeError(f"etcd unavailable after {attempts} attempts")


def follow(client, prefix, start_revision, seen, want, resumed):
    """Watch a prefix from a revision; when the stream breaks, watch again from the next revision."""
    import etcd3

    next_revision = start_revision
    while len(seen) < want:
        events, cancel = client.watch_prefix(prefix, start_revision=next_revision)
        try:
            for event in events:
                seen.append((event.key, event.value))
                next_revision = event.mod_revision + 1
                if len(seen) >= want:
                    break
        except etcd3.exceptions.ConnectionFailedError:
            resumed.append(next_revision)
        finally:
            cancel()


class Registration:
    """A key held by a lease, kept alive by ``heartbeat()``; registers again when the lease is gone."""

    def __init__(self, client, key, ttl=30):
        self.client, self.key, self.ttl = client, key, ttl
        self.registrations = 0
        self._register()

    def _register(self):
        self.lease = self.client.lease(self.ttl)
        self.client.put(self.key, "here", lease=self.lease)
        self.registrations += 1

    def heartbeat(self):
        if self.lease.refresh()[0].TTL == 0:  # expired: the key went with it
            self._register()


# -- the tests -------------------------------------------------------------------------------------
def test_a_put_retried_through_leader_changes(etcd_faults):
    import etcd3

    client = etcd_faults.client(timeout=10)
    etcd_faults.inject("error", methods="KV/Put", error="leader-changed", count=2)
    put_with_retry(client, "/app/config", "v1")
    assert client.get("/app/config")[0] == b"v1"
    assert etcd_faults.faults() == []  # both failures were served, and the fault is spent
    # without the retry the application sees the failure: UNAVAILABLE, etcd's words
    etcd_faults.inject("error", methods="KV/Put", error="leader-changed")
    with pytest.raises(etcd3.exceptions.ConnectionFailedError) as info:
        client.put("/app/config", "v2")
    cause = info.value.__context__
    assert isinstance(cause, grpc.RpcError)
    assert (cause.code(), cause.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")
    assert client.get("/app/config")[0] == b"v1"


def test_nospace_is_not_retried(etcd_faults):
    client = etcd_faults.client(timeout=10)
    etcd_faults.inject("error", methods="KV/Put", error="nospace")
    with pytest.raises(grpc.RpcError) as info:  # etcd3 leaves RESOURCE_EXHAUSTED untranslated
        put_with_retry(client, "/app/blob", "x")
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")


# etcd3's watch thread re-opens its stream forever: closing the client ends it, with that exception
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_watch_resumes_after_its_stream_is_cut(etcd_faults):
    client = etcd_faults.client(timeout=10)
    start = client.put("/jobs/1", "a").header.revision
    seen, resumed = [], []
    follower = threading.Thread(target=follow, args=(client, "/jobs/", start, seen, 3, resumed), daemon=True)
    follower.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert etcd_faults.inject("cut-watches")["streams"] == 1  # ends with "etcdserver: no leader"
    client.put("/jobs/2", "b")
    client.put("/jobs/3", "c")
    follower.join(10)
    client.close()
    assert seen == [(b"/jobs/1", b"a"), (b"/jobs/2", b"b"), (b"/jobs/3", b"c")]  # each once, in order
    assert resumed == [start + 1]


def test_a_registration_survives_its_lease_expiring(etcd_faults):
    client = etcd_faults.client(timeout=10)
    member = Registration(client, "/members/me")
    member.heartbeat()
    assert member.registrations == 1
    answer = etcd_faults.inject("expire-lease", id=member.lease.id)
    assert answer == {"id": str(member.lease.id), "keys": 1}
    assert client.get("/members/me") == (None, None)  # gone with the lease, as when it expires
    member.heartbeat()
    assert member.registrations == 2
    assert client.get("/members/me")[0] == b"here"


def test_a_slow_etcd_times_the_client_out(etcd_faults):
    import etcd3

    client = etcd_faults.client(timeout=0.3)
    etcd_faults.inject("latency", methods="KV/Range", delay=1, count=1)
    with pytest.raises(etcd3.exceptions.ConnectionTimeoutError):
        client.get("/app/config")
    assert client.get("/app/config") == (None, None)  # the next one is served at once


def test_requests_wait_out_a_pause(etcd_faults):
    client = etcd_faults.client(timeout=10)
    etcd_faults.inject("pause", duration=0.5)
    started = time.monotonic()
    client.put("/app/after-pause", "1")
    assert time.monotonic() - started >= 0.4
    assert client.get("/app/after-pause")[0] == b"1"


def test_server_inject_in_the_applications_process(tmp_path):
    import etcd3

    with etcdlite.Server(data_dir=tmp_path / "data", fault_injection=True) as server:
        client = etcd3.client(host=server.host, port=server.port, timeout=10)
        fault = server.inject("error", methods="KV/Range", error="timeout", fraction=1.0, duration=30)
        listed = server.faults()
        assert listed == [dict(fault, remaining=listed[0]["remaining"])] and 0 < listed[0]["remaining"] <= 30
        with pytest.raises(etcd3.exceptions.ConnectionFailedError):
            client.get("k")
        assert server.clear_faults() == 1
        assert client.get("k") == (None, None)
        with pytest.raises(etcdlite.FaultInjectionError, match='"error" must be one of'):
            server.inject("error", error="meltdown")


def test_the_plain_fixture_has_no_fault_injection(etcd):
    with pytest.raises(etcdlite.FaultInjectionError, match="--experimental-fault-injection"):
        etcd.inject("pause", duration=1)
