"""TLS: etcdlite and real etcd on https client URLs, with etcdctl and with gRPC.

A CA, a server certificate (for 127.0.0.1 and localhost) and client certificates
(CN root, CN alice, and one from another CA) are made per test module.  Checked,
against both servers: etcdctl ``--cacert/--cert/--key`` works; a plain-text
client is refused; with ``--client-cert-auth`` a client without a certificate,
or with one the CA did not sign, is refused; with auth enabled, a client
certificate's CN is the user (no token needed), a token still wins over it.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_auth import ROOT_PW, auth_call, ctl, login, run_scenario, setup_root

from etcdlite.pb.authpb import auth_pb2
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import Client, Err, EtcdProcess, Stubs, run_parallel

E_DENIED = Err("PERMISSION_DENIED", "etcdserver: permission denied")


# -- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Path
    server: Pair
    clients: dict[str, Pair]  # by CN
    stranger: Pair  # CN root, signed by another CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: str | None, *, ca: bool = False,
           server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer or subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pair.key.chmod(0o600)
    return pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _issue("etcdlite test CA", None, None, ca=True)
    (d / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server = _write(d, "server", *_issue("server", ca_key, "etcdlite test CA", server=True))
    clients = {cn: _write(d, f"client-{cn}", *_issue(cn, ca_key, "etcdlite test CA")) for cn in ("root", "alice")}
    other_cert, other_key = _issue("another CA", None, None, ca=True)
    stranger = _write(d, "stranger", *_issue("root", other_key, "another CA"))
    return PKI(d / "ca.crt", server, clients, stranger)


# -- servers on https -------------------------------------------------------------------------------
class TLSProcess(EtcdProcess):
    """An EtcdProcess on an https client URL; its own gRPC channel presents ``client`` (if any)."""

    def __init__(self, *a, pki: PKI, client: str | None = "root", **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.pki = pki
        self.client_cn = client

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def secure_channel(self, client: str | None | Pair) -> grpc.Channel:
        pair = self.pki.clients[client] if isinstance(client, str) else client
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca.read_bytes(),
            private_key=pair.key.read_bytes() if pair else None,
            certificate_chain=pair.cert.read_bytes() if pair else None)
        return grpc.secure_channel(self.address, creds, options=[("grpc.enable_retries", 0)])

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = self.secure_channel(self.client_cn)
        return self._channel

    def client_as(self, client: str | None | Pair, timeout: float = 10.0) -> Client:
        return Client(Stubs.for_channel(self.secure_channel(client)), name=self.target, timeout=timeout)

    def tls_ctl(self, *args: str, client: str | None = "root", cacert: bool = True,
                refused: bool = False) -> tuple[int, str, str]:
        """``refused``: the connection is expected to fail, so etcdctl gives up after 2s."""
        flags = [f"--cacert={self.pki.ca}"] if cacert else []
        if refused:
            flags += ["--dial-timeout=2s", "--command-timeout=2s"]
        if client is not None:
            pair = self.pki.clients[client]
            flags += [f"--cert={pair.cert}", f"--key={pair.key}"]
        return ctl(self, *flags, *args)


def tls_args(pki: PKI, client_cert_auth: bool) -> list[str]:
    args = ["--bcrypt-cost", "4", f"--cert-file={pki.server.cert}", f"--key-file={pki.server.key}"]
    if client_cert_auth:
        args += [f"--trusted-ca-file={pki.ca}", "--client-cert-auth"]
    return args


@pytest.fixture
def tls_servers(tmp_path: Path, pki: PKI, request: pytest.FixtureRequest
                ) -> Callable[[bool], dict[str, TLSProcess]]:
    from test_auth import _targets

    started: list[TLSProcess] = []

    def start(client_cert_auth: bool) -> dict[str, TLSProcess]:
        targets = _targets(request.config)
        procs = {t: TLSProcess(t, tmp_path / f"{t}-{len(started)}.data", pki=pki,
                               args=tls_args(pki, client_cert_auth)) for t in targets}
        started.extend(procs.values())
        return run_parallel({t: (lambda p=p: p.start()) for t, p in procs.items()})

    yield start
    for p in started:
        p.stop()


# -- tests -----------------------------------------------------------------------------------------
def test_etcdctl_over_tls(tls_servers):
    servers = tls_servers(False)

    def transcript(srv: TLSProcess) -> list[tuple[int, str, str]]:
        return [
            srv.tls_ctl("put", "k", "v", client=None),
            srv.tls_ctl("get", "k", client=None),
            srv.tls_ctl("get", "k", client="alice"),  # a client cert is accepted, not required
            srv.tls_ctl("endpoint", "health", client=None)[0:1],
        ]

    results = run_parallel({t: (lambda s=s: transcript(s)) for t, s in servers.items()})
    for target, res in results.items():
        assert res[:3] == [(0, "OK\n", ""), (0, "k\nv\n", ""), (0, "k\nv\n", "")], target
        assert res == next(iter(results.values())), "etcdctl output differs"
    def refused(srv: TLSProcess) -> None:
        rc, _, err = srv.tls_ctl("get", "k", client=None, cacert=False, refused=True)  # the CA is not trusted
        assert rc != 0
        plain = grpc.insecure_channel(srv.address)  # no TLS at all
        with pytest.raises(grpc.RpcError) as exc:
            pb_stub(plain).Range(pb.RangeRequest(key=b"k"), timeout=2)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()

    run_parallel({t: (lambda s=s: refused(s)) for t, s in servers.items()})


def pb_stub(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    return Stubs.for_channel(channel).kv


def test_client_cert_auth_refuses_clients_without_a_trusted_cert(tls_servers, pki):
    servers = tls_servers(True)

    def check(srv: TLSProcess) -> None:
        assert srv.tls_ctl("put", "k", "v", client="alice") == (0, "OK\n", "")
        rc, out, _ = srv.tls_ctl("get", "k", client=None, refused=True)
        assert rc != 0 and out == "", srv.target
        for who in (None, pki.stranger):
            c = srv.client_as(who, timeout=2)
            r = c.get("k")
            assert isinstance(r, Err) and r.code == "UNAVAILABLE", (srv.target, who, r)
            c.stubs.channel.close()

    run_parallel({t: (lambda s=s: check(s)) for t, s in servers.items()})


def test_client_cert_common_name_is_the_user(tls_servers):
    """With auth on and --client-cert-auth, a request without a token is the user its cert names."""
    servers = tls_servers(True)

    def scenario(c: Client) -> None:
        srv: TLSProcess = c.server  # type: ignore[attr-defined]
        setup_root(c)  # over root's certificate: it needs no token, but takes one
        alice = srv.client_as("alice")
        alice.transcript, alice.requests, alice.aliases = c.transcript, c.requests, c.aliases
        alice.put("a/1", "x")  # alice does not exist yet
        root = login(c, "root", ROOT_PW)
        auth_call(root, "UserAdd", pb.AuthUserAddRequest(name="alice", password="apw"))
        alice.put("a/1", "x")  # exists, no role
        auth_call(root, "RoleAdd", pb.AuthRoleAddRequest(name="a"))
        perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a/", range_end=b"a0")
        auth_call(root, "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="a", perm=perm))
        auth_call(root, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="a"))
        alice.put("a/1", "x")
        alice.get("a/1")
        alice.put("b", "x")
        auth_call(alice, "UserList", pb.AuthUserListRequest())
        auth_call(alice, "UserGet", pb.AuthUserGetRequest(name="alice"))
        c.put("b", "x")  # root's certificate: everything
        auth_call(c, "UserList", pb.AuthUserListRequest())
        login(alice, "root", ROOT_PW).get("b")  # a token wins over the certificate
        login(c, "alice", "apw").get("b")

    values = run_scenario(servers, scenario)
    assert set(values) == set(servers)
    for args, want in [(("get", "a/1"), (0, "a/1\nx\n", "")),
                       (("get", "b"), (1, "", "Error: etcdserver: permission denied"))]:
        for srv in servers.values():
            assert srv.tls_ctl(*args, client="alice") == want, srv.target


def test_https_needs_cert_and_key(tmp_path, pki):
    """An https URL without --key-file does not start, and says why."""
    srv = EtcdProcess("etcdlite", tmp_path / "d", args=[f"--cert-file={pki.server.cert}"])
    cmd = srv.command()
    cmd[cmd.index("--listen-client-urls") + 1] = f"https://127.0.0.1:{srv.port}"
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "--key-file" in p.stderr
