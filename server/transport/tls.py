"""TLS on the https:// client URLs, as etcd configures it (client/pkg/transport's TLSInfo).

* ``self_signed_cert``: ``--auto-tls``, as etcd's transport.SelfCert makes it: a certificate for the
  hosts of the client URLs (IPs as IP SANs, names as DNS SANs), Organization "etcd", valid
  --self-signed-cert-validity years, kept in <data-dir>/fixtures/client and reused.  The key is ECDSA
  P-256 where etcd's is P-521: in TLS 1.3 a P-521 key must sign with ecdsa_secp521r1_sha512, which
  BoringSSL (gRPC core: Python, C++, Ruby ... clients) does not offer, so those clients could not connect.
* ``server_context``: the ssl.SSLContext (versions, cipher suites, client certificates required with
  --client-cert-auth or --trusted-ca-file as etcd requires them, ALPN).
* ``ClientCertCheck``: what etcd checks after the handshake: the client certificate's serial against
  --client-crl-file (re-read when the file changes) and the allowed hostnames / CNs.

The settings themselves (versions, Go's cipher suite names) are checked with the rest of the
configuration, in ``tlssettings.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..config import Config, ConfigError
from ..tlssettings import openssl_ciphers, tls_version

log = logging.getLogger("etcdlite.tls")

# ALPN, in the server's order of preference: HTTP clients (curl, Go's net/http, Kubernetes probes) offer
# both and get HTTP/1.1, which the HTTP server serves; gRPC clients offer only h2 and get it.
ALPN_PROTOCOLS = ["http/1.1", "h2"]


# -- --auto-tls ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CertPair:
    cert_file: str
    key_file: str


def _host_of(url: str) -> str:
    netloc = urlsplit(url).netloc
    host, sep, _ = netloc.rpartition(":")
    return (host if sep else netloc).strip("[]")


def self_signed_cert(directory: Path, urls: list[str], validity_years: int) -> CertPair:
    """etcd's transport.SelfCert: reuse cert.pem/key.pem in ``directory``, else make them."""
    cert_path, key_path = (directory / "cert.pem").absolute(), (directory / "key.pem").absolute()
    if cert_path.exists() and key_path.exists():
        return CertPair(str(cert_path), str(key_path))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=365 * validity_years)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    sans: list[x509.GeneralName] = []
    for host in (_host_of(u) for u in urls):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(int.from_bytes(os.urandom(16), "big") >> 1 or 1)
               .not_valid_before(now).not_valid_after(not_after)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               # etcd 3.6 marks it a CA, so clients can trust it with --cacert=cert.pem
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    log.warning("automatically generate certificates",
                extra={"fields": {"certificate-validity-bound-not-after": not_after.isoformat()}})
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("created cert file", extra={"fields": {"path": str(cert_path)}})
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    log.info("created key file", extra={"fields": {"path": str(key_path)}})
    return CertPair(str(cert_path), str(key_path))


def client_cert_pair(cfg: Config) -> CertPair | None:
    """The server certificate of the https client URLs: --cert-file/--key-file, else --auto-tls's."""
    if cfg.cert_file and cfg.key_file:
        if cfg.auto_tls:
            log.warning("ignoring client auto TLS since certs given")
        return CertPair(cfg.cert_file, cfg.key_file)
    if cfg.auto_tls:
        urls = cfg.listen_client_urls + cfg.listen_client_http_urls
        return self_signed_cert(Path(cfg.data_dir) / "fixtures" / "client", urls, cfg.self_signed_cert_validity)
    return None


# -- the server context ------------------------------------------------------------------------------
def server_context(cfg: Config, pair: CertPair, alpn: list[str] | None = None) -> ssl.SSLContext:
    """TLSInfo.ServerConfig: certificate, versions, suites; client certificates verified and required
    once --client-cert-auth or --trusted-ca-file is set (etcd's RequireAndVerifyClientCert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # as Go's server
    ctx.minimum_version = tls_version(cfg.tls_min_version) or ssl.TLSVersion.TLSv1_2
    high = tls_version(cfg.tls_max_version)
    if high is not None:
        ctx.maximum_version = high
    try:
        ctx.load_cert_chain(pair.cert_file, pair.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {pair.cert_file} and key {pair.key_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if cfg.cipher_suites:
        try:
            ctx.set_ciphers(openssl_ciphers(cfg.cipher_suites))
        except ssl.SSLError:
            raise ConfigError(f"none of --cipher-suites {','.join(cfg.cipher_suites)} is available in "
                              f"{ssl.OPENSSL_VERSION}") from None
    if cfg.client_cert_auth or cfg.trusted_ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if cfg.trusted_ca_file:
                ctx.load_verify_locations(cfg.trusted_ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read --trusted-ca-file {cfg.trusted_ca_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    ctx.set_alpn_protocols(alpn if alpn is not None else ALPN_PROTOCOLS)
    return ctx


# -- after the handshake -------------------------------------------------------------------------------
class RejectedCertificate(Exception):
    """The client certificate fails a check etcd makes after the handshake."""


def _read_crl(path: str) -> x509.CertificateRevocationList:
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _hostname_matches(cert: x509.Certificate, hostname: str) -> bool:
    """Go's x509.Certificate.VerifyHostname (SANs only, as Go 1.15+): IPs against IP SANs,
    names against DNS SANs, a leftmost "*" label matching one label."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    candidate = hostname.strip("[]")
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in sans.get_values_for_type(x509.IPAddress)
    want = candidate.lower().rstrip(".").split(".")
    for name in sans.get_values_for_type(x509.DNSName):
        labels = name.lower().rstrip(".").split(".")
        if len(labels) != len(want):
            continue
        if all(p == w or (i == 0 and p == "*" and w) for i, (p, w) in enumerate(zip(labels, want))):
            return True
    return False


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


class ClientCertCheck:
    """--client-crl-file and the allowed hostnames / CNs, on a verified client certificate (DER)."""

    def __init__(self, cfg: Config) -> None:
        self.crl_file = cfg.client_crl_file
        self.hostnames = list(cfg.client_cert_allowed_hostnames)
        self.cns = list(cfg.client_cert_allowed_cns)
        self._lock = threading.Lock()
        self._crl_stamp: tuple[int, int] | None = None
        self._revoked: frozenset[int] = frozenset()
        if self.crl_file:
            self._revoked_serials()  # an unreadable CRL stops start-up rather than every handshake

    @property
    def needed(self) -> bool:
        return bool(self.crl_file or self.hostnames or self.cns)

    def _revoked_serials(self) -> frozenset[int]:
        """etcd reads the CRL on every connection; this re-reads it when it changed."""
        try:
            st = os.stat(self.crl_file)
        except OSError as exc:
            raise ConfigError(f"cannot read --client-crl-file {self.crl_file}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._crl_stamp:
                try:
                    crl = _read_crl(self.crl_file)
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"cannot parse --client-crl-file {self.crl_file}: {exc}") from None
                self._revoked = frozenset(r.serial_number for r in crl)
                self._crl_stamp = stamp
            return self._revoked

    def check(self, der: bytes | None) -> None:
        """Raise RejectedCertificate with etcd's reason."""
        if der is None:
            return  # no client certificate: the handshake already decided whether that is allowed
        cert = x509.load_der_x509_certificate(der)
        if self.crl_file:
            try:
                revoked = self._revoked_serials()
            except ConfigError as exc:
                raise RejectedCertificate(str(exc)) from None
            if cert.serial_number in revoked:
                serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8 or 1, "big")
                raise RejectedCertificate(f"transport: certificate serial {serial.hex()} revoked")
        if self.hostnames and not any(_hostname_matches(cert, h) for h in self.hostnames):
            raise RejectedCertificate("client certificate authentication failed")
        if self.cns and _common_name(cert) not in self.cns:
            raise RejectedCertificate("client certificate authentication failed")

    @staticmethod
    def common_name(der: bytes) -> str:
        return _common_name(x509.load_der_x509_certificate(der))
