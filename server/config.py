"""Configuration: one dataclass, built from etcd's flags and ``ETCD_*`` environment variables."""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's 1.5 MiB
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024 * 1024 * 1024  # etcd's 2 GiB
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC take this much over max-request-bytes


class ConfigError(ValueError):
    """A bad flag or value: the CLI prints it on one line and exits non-zero."""


@dataclass
class Config:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
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
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    log_level: str = "info"
    log_format: str = "json"

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
        return self.max_request_bytes + GRPC_OVERHEAD_BYTES

    def listen_addresses(self) -> list[str]:
        """host:port pairs for the gRPC server, from the client URLs."""
        out = []
        for url in self.listen_client_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "unix", "unixs", "https") or parts.port is None:
                raise ConfigError(f'unexpected client URL "{url}" (expected scheme://host:port)')
            if parts.scheme != "http":
                raise ConfigError(f'client URL "{url}": only http:// is served so far (TLS is not implemented)')
            host = parts.hostname or "0.0.0.0"
            if ":" in host:
                host = f"[{host}]"
            out.append(f"{host}:{parts.port}")
        return out


# flag name -> (Config attribute, kind).  Flags etcd has that only make sense for
# a multi-member raft cluster are accepted and ignored, so etcd's scripts still run.
_LIST = "list"
_FLAGS: dict[str, tuple[str, type | str]] = {
    "name": ("name", str),
    "data-dir": ("data_dir", str),
    "listen-client-urls": ("listen_client_urls", _LIST),
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
    "auto-compaction-mode": ("auto_compaction_mode", str),
    "auto-compaction-retention": ("auto_compaction_retention", str),
    "log-level": ("log_level", str),
    "logger": ("", str),
    "log-outputs": ("", str),
    "log-format": ("log_format", str),
}
_IGNORED_FLAGS = [
    "wal-dir", "snapshot-count", "heartbeat-interval", "election-timeout", "listen-metrics-urls",
    "enable-pprof", "metrics", "max-snapshots", "max-wals", "discovery", "discovery-srv",
    "strict-reconfig-check", "enable-v2", "grpc-keepalive-min-time", "grpc-keepalive-interval",
    "grpc-keepalive-timeout", "initial-election-tick-advance", "pre-vote", "auth-token",
    "experimental-initial-corrupt-check", "experimental-watch-progress-notify-interval",
    "socket-reuse-port", "socket-reuse-address", "force-new-cluster", "cors", "host-whitelist",
    "experimental-enable-lease-checkpoint", "backend-batch-interval", "backend-batch-limit",
]


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "t", "true", "yes", "on", ""):
        return True
    if low in ("0", "f", "false", "no", "off"):
        return False
    raise ConfigError(f"invalid boolean value {text!r}")


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
    return raw


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdlite",
        description="An etcd v3 server in Python. Takes etcd's flags; each flag can also be set "
        "as ETCD_<FLAG> in the environment (e.g. ETCD_DATA_DIR).",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    for flag, (_, kind) in _FLAGS.items():
        if kind is bool:
            p.add_argument(f"--{flag}", nargs="?", const="true", default=None, metavar="BOOL")
        else:
            p.add_argument(f"--{flag}", default=None)
    for flag in _IGNORED_FLAGS:
        p.add_argument(f"--{flag}", nargs="?", const="true", default=None, help=argparse.SUPPRESS)
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
        if raw is not None:
            values[attr] = _convert(flag, kind, raw)
    cfg = Config(**values)  # type: ignore[arg-type]
    if cfg.max_request_bytes <= 0:
        raise ConfigError("--max-request-bytes must be positive")
    if cfg.max_txn_ops <= 0:
        raise ConfigError("--max-txn-ops must be positive")
    cfg.listen_addresses()
    return cfg, bool(args.version)
