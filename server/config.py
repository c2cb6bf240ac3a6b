"""Configuration: one dataclass, built from etcd's flags and ``ETCD_*`` environment variables."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's 1.5 MiB
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024 * 1024 * 1024  # etcd's 2 GiB
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC take this much over max-request-bytes
DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL = 600.0  # etcd's 10 minutes, in seconds


class ConfigError(ValueError):
    """A bad flag or value: the CLI prints it on one line and exits non-zero."""


@dataclass
class Config:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
    listen_client_http_urls: list[str] = field(default_factory=list)  # HTTP only (gateway, /health, /metrics)
    listen_metrics_urls: list[str] = field(default_factory=list)  # /metrics and the health endpoints
    # HTTP/1.1 beside gRPC on the client port, as etcd serves it (see README); off: gRPC only, faster
    client_http_mux: bool = True
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_cluster: str = ""
    initial_cluster_token: str = "etcd-cluster"
    initial_cluster_state: str = "new"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    quota_backend_bytes: int = 0
    unsafe_no_fsync: bool = False
    snapshot_count: int = 100_000  # log entries between snapshots of the data dir
    backend_batch_limit: int = 0  # most writes per write+fsync of the log; 0: all waiting (group commit)
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    log_level: str = "info"
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    auth_token: str = "simple"  # "simple", "jwt,pub-key=...,priv-key=...,sign-method=...,ttl=..." (see auth.py)
    auth_token_ttl: int = 300  # seconds a simple token stays valid after its last use
    bcrypt_cost: int = 10  # etcd's default; 4..31
    log_format: str = "json"
    watch_progress_notify_interval: float = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL  # seconds
    backend: str = ""  # "": the embedded store in --data-dir; postgres://...: a database shared by instances
    console: bool = True  # the web console at /ui on the client HTTP ports
    fault_injection: bool = False  # /debug/inject on the client HTTP side (core/faults.py)

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = f"{self.name}.etcd"

    # -- identity (as etcd computes it, so IDs match a real etcd started with the same flags) --
    @property
    def peer_urls(self) -> list[str]:
        if self.initial_cluster:
            urls = [u for m in self.initial_cluster.split(",") if "=" in m
                    for n, u in [m.split("=", 1)] if n.strip() == self.name]
            if urls:
                return urls
        return self.initial_advertise_peer_urls

    @property
    def member_id(self) -> int:
        joined = "".join(sorted(self.peer_urls)).encode() + self.initial_cluster_token.encode()
        return int.from_bytes(hashlib.sha1(joined).digest()[:8], "big")

    @property
    def cluster_id(self) -> int:
        return int.from_bytes(hashlib.sha1(self.member_id.to_bytes(8, "big")).digest()[:8], "big")

    @property
    def grpc_max_receive_bytes(self) -> int:
        """etcd's gRPC receive limit: past it, grpc-go's "received message larger than max"."""
        return self.max_request_bytes + GRPC_OVERHEAD_BYTES

    def listen_addresses(self) -> list[tuple[str, bool]]:
        """(host:port, tls) for the gRPC server, from the client URLs."""
        out = []
        for url in self.listen_client_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or parts.port is None:
                raise ConfigError(f'unexpected client URL "{url}" (expected http(s)://host:port)')
            tls = parts.scheme == "https"
            if tls and not (self.cert_file and self.key_file):
                raise ConfigError(f'client URL "{url}" is https but --cert-file and --key-file are not set')
            host = parts.hostname or "0.0.0.0"
            if ":" in host:
                host = f"[{host}]"
            out.append((f"{host}:{parts.port}", tls))
        return out


# flag name -> (Config attribute, kind).  Flags etcd has that only make sense for
# a multi-member raft cluster are accepted and ignored, so etcd's scripts still run.
_LIST = "list"
_DURATION = "duration"  # a Go duration: "10m", "1.5s", "100ms"; kept as seconds
_FLAGS: dict[str, tuple[str, type | str]] = {
    "name": ("name", str),
    "data-dir": ("data_dir", str),
    "listen-client-urls": ("listen_client_urls", _LIST),
    "listen-client-http-urls": ("listen_client_http_urls", _LIST),
    "listen-metrics-urls": ("listen_metrics_urls", _LIST),
    "client-http-mux": ("client_http_mux", bool),
    "advertise-client-urls": ("advertise_client_urls", _LIST),
    "listen-peer-urls": ("listen_peer_urls", _LIST),
    "initial-advertise-peer-urls": ("initial_advertise_peer_urls", _LIST),
    "initial-cluster": ("initial_cluster", str),
    "initial-cluster-token": ("initial_cluster_token", str),
    "initial-cluster-state": ("initial_cluster_state", str),
    "max-request-bytes": ("max_request_bytes", int),
    "max-txn-ops": ("max_txn_ops", int),
    "quota-backend-bytes": ("quota_backend_bytes", int),
    "unsafe-no-fsync": ("unsafe_no_fsync", bool),
    "snapshot-count": ("snapshot_count", int),
    "backend-batch-limit": ("backend_batch_limit", int),
    "auto-compaction-mode": ("auto_compaction_mode", str),
    "auto-compaction-retention": ("auto_compaction_retention", str),
    "log-level": ("log_level", str),
    "cert-file": ("cert_file", str),
    "key-file": ("key_file", str),
    "trusted-ca-file": ("trusted_ca_file", str),
    "client-cert-auth": ("client_cert_auth", bool),
    "auth-token": ("auth_token", str),
    "auth-token-ttl": ("auth_token_ttl", int),
    "bcrypt-cost": ("bcrypt_cost", int),
    "logger": ("", str),
    "log-outputs": ("", str),
    "log-format": ("log_format", str),
    "experimental-watch-progress-notify-interval": ("watch_progress_notify_interval", _DURATION),
    "backend": ("backend", str),
    "console": ("console", bool),
    "experimental-fault-injection": ("fault_injection", bool),
}
_IGNORED_FLAGS = [
    "wal-dir", "heartbeat-interval", "election-timeout",
    "enable-pprof", "metrics", "max-snapshots", "max-wals", "discovery", "discovery-srv",
    "strict-reconfig-check", "enable-v2", "grpc-keepalive-min-time", "grpc-keepalive-interval",
    "grpc-keepalive-timeout", "initial-election-tick-advance", "pre-vote",
    "experimental-initial-corrupt-check",
    "socket-reuse-port", "socket-reuse-address", "force-new-cluster", "cors", "host-whitelist",
    "experimental-enable-lease-checkpoint", "backend-batch-interval",
]


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "t", "true", "yes", "on", ""):
        return True
    if low in ("0", "f", "false", "no", "off"):
        return False
    raise ConfigError(f"invalid boolean value {text!r}")


_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
                      "m": 60.0, "h": 3600.0}
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds; raises ValueError."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(text)
    total, pos = 0.0, 0
    while pos < len(body):
        m = _GO_DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(text)
        total += float(m.group(1)) * _GO_DURATION_UNITS[m.group(2)]
        pos = m.end()
    return -total if text.startswith("-") else total


def _convert(flag: str, kind: type | str, raw: str) -> object:
    if kind == _LIST:
        return [u.strip() for u in raw.split(",") if u.strip()]
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f'invalid value "{raw}" for flag -{flag}: parse error') from None
    if kind is bool:
        return _parse_bool(raw)
    if kind == _DURATION:
        try:
            return parse_go_duration(raw.strip())
        except ValueError:
            raise ConfigError(f'invalid value "{raw}" for flag -{flag}: parse error') from None
    return raw


# --help's text for every flag (tests/test_cli.py checks that none is missing)
FLAG_HELP: dict[str, str] = {
    "name": "human-readable name for this member; with the peer URLs it determines the member ID",
    "data-dir": "path to the data directory (default: <name>.etcd)",
    "listen-client-urls": "comma-separated http(s)://host:port URLs to serve clients (gRPC) on",
    "listen-client-http-urls": "comma-separated URLs to serve HTTP only on: the /v3 JSON gateway, /health, "
                               "/livez, /readyz, /version, /metrics (with it, the client URLs serve gRPC only)",
    "listen-metrics-urls": "comma-separated URLs to serve /metrics and the health endpoints on",
    "client-http-mux": "serve HTTP/1.1 (gateway, /health, /metrics) beside gRPC on the plain-http client "
                       "URLs, as etcd does; =false serves gRPC only there, which is faster (default true)",
    "advertise-client-urls": "client URLs this member advertises (in MemberList)",
    "listen-peer-urls": "peer URLs; accepted for etcd compatibility (there is no raft peer traffic)",
    "initial-advertise-peer-urls": "peer URLs this member advertises; used to compute the member ID",
    "initial-cluster": "initial cluster configuration (name=peer-url,...); used to compute the member ID",
    "initial-cluster-token": "initial cluster token; used to compute the member and cluster IDs",
    "initial-cluster-state": "initial cluster state ('new' or 'existing'); accepted for compatibility",
    "max-request-bytes": "maximum client request size in bytes the server will accept (default 1572864)",
    "max-txn-ops": "maximum number of operations permitted in a transaction (default 128)",
    "quota-backend-bytes": "raise a NOSPACE alarm when the data dir exceeds this many bytes "
                           "(0: the 2 GiB default, negative: no quota)",
    "unsafe-no-fsync": "do not fsync the log: faster, and acknowledged writes can be lost in a crash",
    "snapshot-count": "log entries between two snapshots of the data dir (default 100000)",
    "backend-batch-limit": "most writes per write+fsync of the log; 0 takes all that wait (group commit)",
    "auto-compaction-mode": "'periodic' or 'revision': how --auto-compaction-retention is read",
    "auto-compaction-retention": "auto compaction retention: a duration ('1h', or hours as a number) for "
                                 "periodic mode, a revision count for revision mode; 0 turns it off",
    "log-level": "log level: debug, info, warn, error, panic or fatal (default info)",
    "log-format": "log format: 'json' (etcd's zap fields, one object a line) or 'console'",
    "logger": "accepted for etcd compatibility (etcdlite always logs like etcd's zap logger)",
    "log-outputs": "accepted for etcd compatibility (etcdlite logs to stderr)",
    "cert-file": "path to the client server TLS certificate file",
    "key-file": "path to the client server TLS key file",
    "trusted-ca-file": "path to the CA file that signs client certificates (with --client-cert-auth)",
    "client-cert-auth": "require client certificates signed by --trusted-ca-file",
    "auth-token": "auth token type: 'simple' or 'jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...'",
    "auth-token-ttl": "seconds a simple token stays valid after its last use (default 300)",
    "bcrypt-cost": "bcrypt cost for hashing user passwords, 4..31 (default 10)",
    "experimental-watch-progress-notify-interval": "period of progress notifications to watchers that "
                                                   "asked for them, as a Go duration (default 10m)",
    "backend": "where the key space lives: empty for the embedded store in --data-dir (default), or "
               "postgres://user[:password]@host[:port]/db for a PostgreSQL database several etcdlite "
               "instances share (also ETCDLITE_BACKEND)",
    "console": "serve the web console at /ui on every client port that serves HTTP (default true)",
    "experimental-fault-injection": "serve /debug/inject on the client HTTP side: make requests fail with "
                                    "etcd's errors, add latency, pause, cut watches, expire leases (tests only)",
}
IGNORED_HELP = "etcd flag for raft, peers, discovery or tuning: accepted and ignored"
LOG_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")  # zap's


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdlite", usage="%(prog)s [--flag VALUE ...] | %(prog)s snapshot restore FILE --data-dir DIR",
        description="An etcd v3 server in Python. Takes etcd's flags; each flag can also be set "
        "as ETCD_<FLAG> in the environment (e.g. ETCD_DATA_DIR). "
        "`etcdlite snapshot restore FILE --data-dir DIR` makes a data dir from an `etcdctl snapshot save` file.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    for flag, (_, kind) in _FLAGS.items():
        text = FLAG_HELP.get(flag, "")
        if kind is bool:
            p.add_argument(f"--{flag}", nargs="?", const="true", default=None, metavar="BOOL", help=text)
        else:
            metavar = {_LIST: "URLS", _DURATION: "DURATION", int: "N"}.get(kind, "VALUE")  # type: ignore[call-overload]
            p.add_argument(f"--{flag}", default=None, metavar=metavar, help=text)
    ignored = p.add_argument_group("accepted for compatibility with etcd, and ignored")
    for flag in _IGNORED_FLAGS:
        ignored.add_argument(f"--{flag}", nargs="?", const="true", default=None, metavar="VALUE",
                             help=FLAG_HELP.get(flag, IGNORED_HELP))
    return p


def from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> tuple[Config, bool]:
    """Build the config: flags win over ``ETCD_*`` variables, which win over defaults.

    Returns (config, version_requested).
    """
    environ = dict(os.environ if environ is None else environ)
    args = parser().parse_args(argv)
    values: dict[str, object] = {}
    for flag, (attr, kind) in _FLAGS.items():
        if not attr:
            continue
        raw = getattr(args, flag.replace("-", "_"))
        if raw is None:
            raw = environ.get("ETCD_" + flag.upper().replace("-", "_"))
        if raw is None and flag == "backend":
            raw = environ.get("ETCDLITE_BACKEND")
        if raw is not None:
            values[attr] = _convert(flag, kind, raw)
    cfg = Config(**values)  # type: ignore[arg-type]
    if cfg.max_request_bytes <= 0:
        raise ConfigError("--max-request-bytes must be positive")
    if cfg.max_txn_ops <= 0:
        raise ConfigError("--max-txn-ops must be positive")
    cfg.listen_addresses()
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f'unrecognized level: "{cfg.log_level}"')  # what etcd's zap says
    if cfg.backend and urlsplit(cfg.backend).scheme not in ("postgres", "postgresql"):
        raise ConfigError(f'invalid value "{cfg.backend}" for flag -backend: expected postgres://user@host:port/db')
    if cfg.log_format not in ("json", "console"):
        raise ConfigError(f'invalid value "{cfg.log_format}" for flag -log-format: expected "json" or "console"')
    return cfg, bool(args.version)
