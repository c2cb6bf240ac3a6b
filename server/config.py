"""Configuration: one dataclass, built from etcd's flags and ``ETCD_*`` environment variables."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .configfile import ConfigFileError, read_config_file
from .flagtable import BY_NAME, FLAGS
from .goflags import (
    FlagError,
    FlagValueError,
    HelpRequested,
    convert,
    env_name,
    from_environment,
    parse_command_line,
    parse_go_duration,
)

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's 1.5 MiB
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024 * 1024 * 1024  # etcd's 2 GiB
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC take this much over max-request-bytes
DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL = 600.0  # etcd's 10 minutes, in seconds
DEFAULT_LOG_ROTATION_CONFIG = '{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}'


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
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_cluster: str = ""
    initial_cluster_token: str = "etcd-cluster"
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
    auth_token: str = "simple"  # "simple", "jwt,pub-key=...,priv-key=...,sign-method=...,ttl=..." (see core/auth/tokens.py)
    auth_token_ttl: int = 300  # seconds a simple token stays valid after its last use
    bcrypt_cost: int = 10  # etcd's default; 4..31
    log_format: str = "json"
    watch_progress_notify_interval: float = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL  # seconds
    backend: str = ""  # "": the embedded store in --data-dir; postgres://...: a database shared by instances
    console: bool = True  # the web console at /ui on the client HTTP ports
    fault_injection: bool = False  # /debug/inject on the client HTTP side (core/faults.py)
    # TLS on https:// client URLs beyond cert/key/CA (tlssettings.py checks them, transport/tls.py applies them)
    auto_tls: bool = False  # a self-signed certificate under <data-dir>/fixtures/client, as etcd makes it
    self_signed_cert_validity: int = 1  # years
    client_crl_file: str = ""
    client_cert_allowed_hostnames: list[str] = field(default_factory=list)
    client_cert_allowed_cns: list[str] = field(default_factory=list)  # config file: client-transport-security
    cipher_suites: list[str] = field(default_factory=list)  # Go's names
    tls_min_version: str = "TLS1.2"
    tls_max_version: str = ""
    # gRPC
    max_concurrent_streams: int = 2**32 - 1
    grpc_keepalive_min_time: float = 5.0  # seconds
    grpc_keepalive_interval: float = 2 * 3600.0
    grpc_keepalive_timeout: float = 20.0
    enable_grpc_gateway: bool = True
    # logging
    logger: str = "zap"
    log_outputs: list[str] = field(default_factory=lambda: ["default"])
    enable_log_rotation: bool = False
    log_rotation_config_json: str = DEFAULT_LOG_ROTATION_CONFIG
    # what the command line said besides the settings, for the log once logging is set up
    config_file: str = ""
    ignored_flags: list[str] = field(default_factory=list)  # given, and meaningless for one member
    notes: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)  # (level, msg, fields)

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
        return self._member_id(self.peer_urls)

    def _member_id(self, peer_urls: list[str]) -> int:
        joined = "".join(sorted(peer_urls)).encode() + self.initial_cluster_token.encode()
        return int.from_bytes(hashlib.sha1(joined).digest()[:8], "big")

    @property
    def cluster_id(self) -> int:
        """etcd's: sha1 of the initial cluster's member IDs, sorted, 8 bytes each (the same for every member
        started with the same --initial-cluster and token)."""
        by_name: dict[str, list[str]] = {}
        for entry in self.initial_cluster.split(","):
            if "=" in entry:
                name, url = entry.split("=", 1)
                by_name.setdefault(name.strip(), []).append(url)
        ids = [self._member_id(urls) for urls in by_name.values()] if self.name in by_name else [self.member_id]
        joined = b"".join(i.to_bytes(8, "big") for i in sorted(ids))
        return int.from_bytes(hashlib.sha1(joined).digest()[:8], "big")

    @property
    def grpc_max_receive_bytes(self) -> int:
        """etcd's gRPC receive limit: past it, grpc-go's "received message larger than max"."""
        return self.max_request_bytes + GRPC_OVERHEAD_BYTES

    @property
    def grpc_hard_receive_bytes(self) -> int:
        """gRPC core's own limit, well above etcd's, so etcd's message is the one clients see."""
        return max(4 * self.grpc_max_receive_bytes, 64 * 1024 * 1024)

    def listen_addresses(self) -> list[tuple[str, bool]]:
        """(host:port, tls) for the gRPC server, from the client URLs."""
        out = []
        for url in self.listen_client_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or parts.port is None:
                raise ConfigError(f'unexpected client URL "{url}" (expected http(s)://host:port)')
            tls = parts.scheme == "https"
            if tls and not (self.cert_file and self.key_file) and not self.auto_tls:
                raise ConfigError(f'client URL "{url}" is https but --cert-file and --key-file are not set')
            host = parts.hostname or "0.0.0.0"
            if ":" in host:
                host = f"[{host}]"
            out.append((f"{host}:{parts.port}", tls))
        return out




LOG_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")  # zap's
# etcd 3.6 renamed these; giving both names is an error there
_RENAMED = {"experimental-watch-progress-notify-interval": "watch-progress-notify-interval"}


def from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> tuple[Config, bool]:
    """Build the config as etcd does: the command line (Go's flag syntax), then ``ETCD_*`` variables for
    flags the command line did not set; or, with ``--config-file``, that file alone.

    Returns (config, version_requested).  Raises FlagError (a command line Go refuses, exit 2),
    HelpRequested, or ConfigError.
    """
    environ = dict(os.environ if environ is None else environ)
    line = parse_command_line([] if argv is None else argv)
    if line.version:
        return Config(), True
    if line.extra:
        raise ConfigError(f"'{line.extra[0]}' is not a valid flag")
    config_file = line.config_file or environ.get("ETCD_CONFIG_FILE", "")
    if config_file:
        values, ignored, notes = _from_file(config_file)
    else:
        values, ignored, notes = _from_command_line(line.values, environ)
    _check_renamed(values)
    fields = {BY_NAME[name].attr: value for name, value in values.items() if name in BY_NAME and BY_NAME[name].attr}
    if "client-transport-security.allowed-cn" in values:  # the config file's; no flag sets it
        fields["client_cert_allowed_cns"] = values["client-transport-security.allowed-cn"]
    cfg = Config(**fields)  # type: ignore[arg-type]
    cfg.config_file = config_file
    cfg.ignored_flags = ignored
    cfg.notes = notes
    validate(cfg)
    return cfg, False


def _from_command_line(given: dict[str, str], environ: dict[str, str]
                       ) -> tuple[dict[str, object], list[str], list[tuple[str, str, dict[str, object]]]]:
    env = from_environment(environ, given)
    notes: list[tuple[str, str, dict[str, object]]] = []
    for name, text in env.used.items():
        notes.append(("info", "recognized and used environment variable",
                      {"variable-name": env_name(name), "variable-value": text}))
    for key in env.shadowed:  # etcd exits here; the flag winning is what a user means (and docker's ENV needs)
        notes.append(("warn", "conflicting environment variable is shadowed by corresponding command-line flag "
                      "(either unset environment variable or disable flag)", {"environment-variable": key}))
    for key in env.unknown:
        notes.append(("warn", "unrecognized environment variable", {"environment-variable": f"{key}={environ[key]}"}))
    texts = {**env.used, **given}
    if "backend" not in texts and environ.get("ETCDLITE_BACKEND"):  # etcdlite's own name for it
        texts["backend"] = environ["ETCDLITE_BACKEND"]
    values = {name: convert(BY_NAME[name], text) for name, text in texts.items()}
    ignored = sorted(name for name in texts if not BY_NAME[name].attr)
    return values, ignored, notes


def _from_file(path: str) -> tuple[dict[str, object], list[str], list[tuple[str, str, dict[str, object]]]]:
    try:
        fc = read_config_file(path)
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    values = dict(fc.values)
    if fc.allowed_cns:
        values["client-transport-security.allowed-cn"] = fc.allowed_cns
    notes: list[tuple[str, str, dict[str, object]]] = [
        ("info", "loaded server configuration, other configuration command line flags and environment variables "
         "will be ignored if provided", {"path": path})]
    if fc.unknown:
        notes.append(("warn", "unknown keys in the configuration file were ignored", {"keys": fc.unknown}))
    return values, sorted(fc.ignored), notes


def _check_renamed(values: dict[str, object]) -> None:
    for old, new in _RENAMED.items():
        if old in values and new in values:
            raise ConfigError(f"cannot set --{old} and --{new} at the same time, please use --{new} only")


def validate(cfg: Config) -> None:
    """etcd's checks that a single member is concerned by, with etcd's messages."""
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
    _validate_logging(cfg)
    from .tlssettings import validate_tls_settings  # imports config: imported when first used

    validate_tls_settings(cfg)


def _validate_logging(cfg: Config) -> None:
    if cfg.logger == "capnslog":
        raise ConfigError("--logger=capnslog is removed in v3.5")
    if cfg.logger != "zap":
        raise ConfigError(f'unknown logger option "{cfg.logger}"')
    if not cfg.log_outputs:
        cfg.log_outputs = ["default"]
    if len(cfg.log_outputs) > 1 and "default" in cfg.log_outputs:
        raise ConfigError('multi logoutput for "default" is not supported yet')
    if not cfg.enable_log_rotation:
        return
    files = [o for o in cfg.log_outputs if o not in ("default", "stderr", "stdout")]  # as etcd counts them
    if len(files) != 1:
        raise ConfigError("--log-outputs requires a single file path when --log-rotate-config-json is defined")
    try:
        rotation = json.loads(cfg.log_rotation_config_json)
    except ValueError as exc:
        raise ConfigError(f"improperly formatted log rotation config: {exc}") from None
    if not isinstance(rotation, dict):
        raise ConfigError("invalid log rotation config: expected a JSON object")


__all__ = ["Config", "ConfigError", "FlagError", "FlagValueError", "HelpRequested", "from_args", "parse_go_duration",
           "FLAGS", "LOG_LEVELS"]
