"""etcd's TLS settings of the client URLs, checked with the rest of the configuration (etcd's
tlsutil and embed.Config checks, with etcd's messages): --tls-min-version / --tls-max-version,
--cipher-suites by Go's names, the allowed-CN / allowed-hostname lists, --self-signed-cert-validity.
``transport/tls.py`` builds the TLS context from them.
"""

from __future__ import annotations

import ssl

from .config import Config, ConfigError

_VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}

# Go's cipher suite names (crypto/tls, and the two aliases etcd's tlsutil adds) -> OpenSSL's.  TLS 1.3's
# suites are accepted by name and, as in Go, not configurable.
GO_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    # Go's InsecureCipherSuites()
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    # TLS 1.3: always on when TLS 1.3 is
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}


def tls_version(text: str) -> ssl.TLSVersion | None:
    """etcd's tlsutil.GetTLSVersion; None: the library's default."""
    if text == "":
        return None
    try:
        return _VERSIONS[text]
    except KeyError:
        raise ConfigError(f'unexpected TLS version "{text}" (must be one of: TLS1.2, TLS1.3)') from None


def openssl_ciphers(names: list[str]) -> str:
    """The OpenSSL cipher list for Go's names; raises ConfigError as etcd's GetCipherSuites does."""
    out = []
    for name in names:
        if name not in GO_CIPHER_SUITES:
            raise ConfigError(f'unexpected TLS cipher suite "{name}"')
        openssl = GO_CIPHER_SUITES[name]
        if openssl is not None and openssl not in out:
            out.append(openssl)
    return ":".join(out)


def validate_tls_settings(cfg: Config) -> None:
    low, high = tls_version(cfg.tls_min_version), tls_version(cfg.tls_max_version)
    if low is not None and high is not None and low > high:
        raise ConfigError(f"min version ({cfg.tls_min_version}) is greater than max version ({cfg.tls_max_version})")
    if low == ssl.TLSVersion.TLSv1_3 and cfg.cipher_suites:
        raise ConfigError("cipher suites cannot be configured when only TLS1.3 is enabled")
    openssl_ciphers(cfg.cipher_suites)
    if cfg.client_cert_allowed_cns and cfg.client_cert_allowed_hostnames:
        raise ConfigError(f"AllowedCNs and AllowedHostnames are mutually exclusive "
                          f"(cns={_go_quoted(cfg.client_cert_allowed_cns)}, "
                          f"hostnames={_go_quoted(cfg.client_cert_allowed_hostnames)})")
    if cfg.auto_tls and cfg.self_signed_cert_validity == 0 and not (cfg.cert_file and cfg.key_file):
        raise ConfigError("selfSignedCertValidity is invalid,it should be greater than 0")


def _go_quoted(items: list[str]) -> str:
    return "[" + " ".join(f'"{i}"' for i in items) + "]"
