"""Every flag etcd takes (3.5's and 3.6's), as etcd declares it: name, kind, default, help section.

``attr`` names the ``Config`` field a flag sets; flags without one are accepted (etcd's scripts,
systemd units and Helm charts pass them) and ignored, and the server logs once at start which of
them were given.  The kinds are Go's flag types, so values are checked as etcd checks them
(``goflags.py``); ``config.py`` builds the ``Config``; ``configfile.py`` reads the same names
from etcd's YAML config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    STR = "string"
    BOOL = "bool"
    UINT = "uint"  # Go's uint flag: strconv.ParseUint(s, 0, 64)
    UINT32 = "uint32"
    INT = "int"
    DURATION = "duration"  # Go's time.ParseDuration; kept as seconds
    URLS = "urls"  # etcd's UniqueURLs: comma-separated http(s)://host:port (or unix://)
    STRINGS = "strings"  # etcd's StringsValue / UniqueStringsValue: comma-separated
    CHOICE = "choice"  # etcd's SelectiveStringValue


@dataclass(frozen=True)
class Flag:
    name: str
    kind: Kind
    default: str  # as etcd's --help shows it
    section: str
    help: str
    attr: str = ""  # the Config field it sets; "" = accepted and ignored
    choices: tuple[str, ...] = ()
    allow_empty: bool = False  # a URLS flag that may be set to "" (etcd's exceptions)
    in_config_file: bool = True  # a top-level key of etcd's YAML config file


S, B, U, U32, I, D, URLS, STRS, CH = (Kind.STR, Kind.BOOL, Kind.UINT, Kind.UINT32, Kind.INT, Kind.DURATION,
                                      Kind.URLS, Kind.STRINGS, Kind.CHOICE)
MEMBER, CLUSTER, SECURITY, AUTH, MONITOR, LOGGING, TRACING, PROXY, EXPERIMENTAL, UNSAFE, ETCDLITE = (
    "Member", "Clustering", "Security", "Auth", "Profiling and Monitoring", "Logging",
    "Distributed tracing", "v2 Proxy (etcd 3.5)", "Experimental and tuning", "Unsafe feature", "etcdlite")

FLAGS: tuple[Flag, ...] = (
    # -- Member
    Flag("name", S, "default", MEMBER, "Human-readable name for this member.", "name"),
    Flag("data-dir", S, "${name}.etcd", MEMBER, "Path to the data directory.", "data_dir"),
    Flag("wal-dir", S, "", MEMBER, "Path to the dedicated wal directory."),
    Flag("snapshot-count", U, "100000", MEMBER, "Number of committed transactions to trigger a snapshot to disk.",
         "snapshot_count"),
    Flag("heartbeat-interval", U, "100", MEMBER, "Time (in milliseconds) of a heartbeat interval."),
    Flag("election-timeout", U, "1000", MEMBER, "Time (in milliseconds) for an election to timeout."),
    Flag("initial-election-tick-advance", B, "true", MEMBER,
         "Whether to fast-forward initial election ticks on boot for faster election."),
    Flag("listen-peer-urls", URLS, "http://localhost:2380", MEMBER, "List of URLs to listen on for peer traffic."),
    Flag("listen-client-urls", URLS, "http://localhost:2379", MEMBER,
         "List of URLs to listen on for client grpc traffic and http as long as --listen-client-http-urls is not "
         "specified.", "listen_client_urls"),
    Flag("listen-client-http-urls", URLS, "", MEMBER,
         "List of URLs to listen on for http only client traffic. Enabling this flag removes http services from "
         "--listen-client-urls.", "listen_client_http_urls", allow_empty=True),
    Flag("max-snapshots", U, "5", MEMBER, "Maximum number of snapshot files to retain (0 is unlimited)."),
    Flag("max-wals", U, "5", MEMBER, "Maximum number of wal files to retain (0 is unlimited)."),
    Flag("quota-backend-bytes", I, "0", MEMBER,
         "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).",
         "quota_backend_bytes"),
    Flag("backend-bbolt-freelist-type", S, "map", MEMBER,
         "BackendFreelistType specifies the type of freelist that boltdb backend uses."),
    Flag("backend-batch-interval", D, "", MEMBER,
         "BackendBatchInterval is the maximum time before commit the backend transaction."),
    Flag("backend-batch-limit", I, "0", MEMBER,
         "BackendBatchLimit is the maximum operations before commit the backend transaction.",
         "backend_batch_limit"),
    Flag("max-txn-ops", U, "128", MEMBER, "Maximum number of operations permitted in a transaction.",
         "max_txn_ops"),
    Flag("max-request-bytes", U, "1572864", MEMBER, "Maximum client request size in bytes the server will accept.",
         "max_request_bytes"),
    Flag("max-concurrent-streams", U32, "math.MaxUint32", MEMBER,
         "Maximum concurrent streams that each client can open at a time.", "max_concurrent_streams"),
    Flag("grpc-keepalive-min-time", D, "5s", MEMBER,
         "Minimum duration interval that a client should wait before pinging server.", "grpc_keepalive_min_time"),
    Flag("grpc-keepalive-interval", D, "2h", MEMBER,
         "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable).",
         "grpc_keepalive_interval"),
    Flag("grpc-keepalive-timeout", D, "20s", MEMBER,
         "Additional duration of wait before closing a non-responsive connection (0 to disable).",
         "grpc_keepalive_timeout"),
    Flag("socket-reuse-port", B, "false", MEMBER,
         "Enable to set socket option SO_REUSEPORT on listeners allowing rebinding of a port already in use.",
         in_config_file=False),
    Flag("socket-reuse-address", B, "false", MEMBER,
         "Enable to set socket option SO_REUSEADDR on listeners allowing binding to an address in TIME_WAIT state.",
         in_config_file=False),
    Flag("enable-grpc-gateway", B, "true", MEMBER, "Enable GRPC gateway.", "enable_grpc_gateway"),
    Flag("raft-read-timeout", D, "5s", MEMBER, "Read timeout set on each rafthttp connection", in_config_file=False),
    Flag("raft-write-timeout", D, "5s", MEMBER, "Write timeout set on each rafthttp connection", in_config_file=False),
    Flag("feature-gates", S, "", MEMBER,
         "A set of key=value pairs that describe server level feature gates for alpha/experimental features."),
    Flag("memory-mlock", B, "false", MEMBER, "Enable to enforce etcd pages (in particular bbolt) to stay in RAM."),
    Flag("max-learners", I, "1", MEMBER,
         "Sets the maximum number of learners that can be available in the cluster membership."),
    Flag("snapshot-catchup-entries", U, "5000", MEMBER,
         "Number of entries for a slow follower to catch up after compacting the raft storage entries."),
    # -- Clustering
    Flag("initial-advertise-peer-urls", URLS, "http://localhost:2380", CLUSTER,
         "List of this member's peer URLs to advertise to the rest of the cluster.", "initial_advertise_peer_urls"),
    Flag("initial-cluster", S, "default=http://localhost:2380", CLUSTER,
         "Initial cluster configuration for bootstrapping.", "initial_cluster"),
    Flag("initial-cluster-state", CH, "new", CLUSTER, "Initial cluster state ('new' or 'existing').",
         choices=("new", "existing")),
    Flag("initial-cluster-token", S, "etcd-cluster", CLUSTER,
         "Initial cluster token for the etcd cluster during bootstrap.", "initial_cluster_token"),
    Flag("advertise-client-urls", URLS, "http://localhost:2379", CLUSTER,
         "List of this member's client URLs to advertise to the public.", "advertise_client_urls"),
    Flag("discovery", S, "", CLUSTER, "Discovery URL used to bootstrap the cluster."),
    Flag("discovery-fallback", CH, "proxy", CLUSTER,
         "Expected behavior ('exit' or 'proxy') when discovery services fails.", choices=("exit", "proxy")),
    Flag("discovery-proxy", S, "", CLUSTER, "HTTP proxy to use for traffic to discovery service."),
    Flag("discovery-srv", S, "", CLUSTER, "DNS srv domain used to bootstrap the cluster."),
    Flag("discovery-srv-name", S, "", CLUSTER, "Suffix to the dns srv name queried when bootstrapping."),
    Flag("discovery-endpoints", STRS, "", CLUSTER, "V3 discovery: List of gRPC endpoints of the discovery service.",
         in_config_file=False),
    Flag("discovery-token", S, "", CLUSTER, "V3 discovery: discovery token for the etcd cluster to be bootstrapped.",
         in_config_file=False),
    Flag("discovery-dial-timeout", D, "2s", CLUSTER, "V3 discovery: dial timeout for client connections.",
         in_config_file=False),
    Flag("discovery-request-timeout", D, "5s", CLUSTER,
         "V3 discovery: timeout for discovery requests (excluding dial timeout).", in_config_file=False),
    Flag("discovery-keepalive-time", D, "2s", CLUSTER, "V3 discovery: keepalive time for client connections.",
         in_config_file=False),
    Flag("discovery-keepalive-timeout", D, "6s", CLUSTER, "V3 discovery: keepalive timeout for client connections.",
         in_config_file=False),
    Flag("discovery-insecure-transport", B, "true", CLUSTER,
         "V3 discovery: disable transport security for client connections.", in_config_file=False),
    Flag("discovery-insecure-skip-tls-verify", B, "false", CLUSTER,
         "V3 discovery: skip server certificate verification.", in_config_file=False),
    Flag("discovery-cert", S, "", CLUSTER, "V3 discovery: identify secure client using this TLS certificate file.",
         in_config_file=False),
    Flag("discovery-key", S, "", CLUSTER, "V3 discovery: identify secure client using this TLS key file.",
         in_config_file=False),
    Flag("discovery-cacert", S, "", CLUSTER,
         "V3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle.", in_config_file=False),
    Flag("discovery-user", S, "", CLUSTER, "V3 discovery: username[:password] for authentication.", in_config_file=False),
    Flag("discovery-password", S, "", CLUSTER, "V3 discovery: password for authentication.", in_config_file=False),
    Flag("strict-reconfig-check", B, "true", CLUSTER, "Reject reconfiguration requests that would cause quorum loss."),
    Flag("pre-vote", B, "true", CLUSTER, "Enable to run an additional Raft election phase."),
    Flag("auto-compaction-retention", S, "0", CLUSTER,
         "Auto compaction retention length. 0 means disable auto compaction.", "auto_compaction_retention"),
    Flag("auto-compaction-mode", S, "periodic", CLUSTER,
         "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, "
         "defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based "
         "retention.", "auto_compaction_mode"),
    Flag("enable-v2", B, "false", CLUSTER, "Accept etcd V2 client requests. Deprecated and to be decommissioned in v3.6."),
    Flag("v2-deprecation", CH, "not-yet", CLUSTER, "Phase of v2store deprecation.",
         choices=("not-yet", "write-only", "write-only-drop-data", "gone")),
    # -- Security
    Flag("cert-file", S, "", SECURITY, "Path to the client server TLS cert file.", "cert_file", in_config_file=False),
    Flag("key-file", S, "", SECURITY, "Path to the client server TLS key file.", "key_file", in_config_file=False),
    Flag("client-cert-file", S, "", SECURITY,
         "Path to an explicit peer client TLS cert file otherwise cert file will be used when client auth is "
         "required.", in_config_file=False),
    Flag("client-key-file", S, "", SECURITY,
         "Path to an explicit peer client TLS key file otherwise key file will be used when client auth is required.",
         in_config_file=False),
    Flag("client-cert-auth", B, "false", SECURITY, "Enable client cert authentication.", "client_cert_auth",
         in_config_file=False),
    Flag("client-crl-file", S, "", SECURITY, "Path to the client certificate revocation list file.",
         "client_crl_file", in_config_file=False),
    Flag("client-cert-allowed-hostname", STRS, "", SECURITY,
         "Comma-separated list of allowed SAN hostnames for client cert authentication.",
         "client_cert_allowed_hostnames", in_config_file=False),
    Flag("trusted-ca-file", S, "", SECURITY, "Path to the client server TLS trusted CA cert file.",
         "trusted_ca_file", in_config_file=False),
    Flag("auto-tls", B, "false", SECURITY, "Client TLS using generated certificates.", "auto_tls", in_config_file=False),
    Flag("peer-cert-file", S, "", SECURITY, "Path to the peer server TLS cert file.", in_config_file=False),
    Flag("peer-key-file", S, "", SECURITY, "Path to the peer server TLS key file.", in_config_file=False),
    Flag("peer-client-cert-file", S, "", SECURITY, "Path to an explicit peer client TLS cert file.", in_config_file=False),
    Flag("peer-client-key-file", S, "", SECURITY, "Path to an explicit peer client TLS key file.", in_config_file=False),
    Flag("peer-client-cert-auth", B, "false", SECURITY, "Enable peer client cert authentication.", in_config_file=False),
    Flag("peer-trusted-ca-file", S, "", SECURITY, "Path to the peer server TLS trusted CA file.", in_config_file=False),
    Flag("peer-cert-allowed-cn", STRS, "", SECURITY, "Required CN for client certs connecting to the peer endpoint.",
         in_config_file=False),
    Flag("peer-cert-allowed-hostname", STRS, "", SECURITY, "Allowed TLS hostname for inter peer authentication.",
         in_config_file=False),
    Flag("peer-auto-tls", B, "false", SECURITY,
         "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided.",
         in_config_file=False),
    Flag("self-signed-cert-validity", U, "1", SECURITY,
         "The validity period of the client and peer certificates that are automatically generated by etcd when you "
         "specify ClientAutoTLS and PeerAutoTLS, the unit is year, and the default is 1.",
         "self_signed_cert_validity"),
    Flag("peer-crl-file", S, "", SECURITY, "Path to the peer certificate revocation list file.", in_config_file=False),
    Flag("cipher-suites", STRS, "", SECURITY,
         "Comma-separated list of supported TLS cipher suites between client/server and peers (empty will be "
         "auto-populated by Go).", "cipher_suites"),
    Flag("tls-min-version", S, "TLS1.2", SECURITY, "Minimum TLS version supported by etcd. Possible values: TLS1.2, "
         "TLS1.3.", "tls_min_version"),
    Flag("tls-max-version", S, "", SECURITY, "Maximum TLS version supported by etcd. Possible values: TLS1.2, "
         "TLS1.3 (empty defers to Go).", "tls_max_version"),
    Flag("peer-skip-client-san-verification", B, "false", SECURITY,
         "Skip verification of SAN field in client certificate for peer connections.", in_config_file=False),
    Flag("cors", URLS, "*", SECURITY, "Comma-separated whitelist of origins for CORS, or cross-origin resource "
         "sharing, (empty or * means allow all).", allow_empty=True),
    Flag("host-whitelist", STRS, "*", SECURITY, "Acceptable hostnames from HTTP client requests, if server is not "
         "secure (empty or * means allow all)."),
    # -- Auth
    Flag("auth-token", S, "simple", AUTH,
         "Specify a v3 authentication token type and its options ('simple' or 'jwt').", "auth_token"),
    Flag("bcrypt-cost", U, "10", AUTH, "Specify the cost / strength of the bcrypt algorithm for hashing auth "
         "passwords. Valid values are between 4 and 31.", "bcrypt_cost"),
    Flag("auth-token-ttl", U, "300", AUTH, "Time (in seconds) of the auth-token-ttl.", "auth_token_ttl"),
    # -- Profiling and Monitoring
    Flag("enable-pprof", B, "false", MONITOR, "Enable runtime profiling data via HTTP server."),
    Flag("metrics", S, "basic", MONITOR, "Set level of detail for exported metrics, specify 'extensive' to include "
         "server side grpc histogram metrics."),
    Flag("listen-metrics-urls", URLS, "", MONITOR, "List of URLs to listen on for the metrics and health endpoints.",
         "listen_metrics_urls", allow_empty=True),
    # -- Logging
    Flag("logger", S, "zap", LOGGING, "Currently only supports 'zap' for structured logging.", "logger"),
    Flag("log-outputs", STRS, "default", LOGGING, "Specify 'stdout' or 'stderr' to skip journald logging even when "
         "running under systemd, or list of comma separated output targets.", "log_outputs"),
    Flag("log-level", S, "info", LOGGING, "Configures log level. Only supports debug, info, warn, error, panic, or "
         "fatal.", "log_level"),
    Flag("log-format", S, "json", LOGGING, "Configures log format. Only supports json, console.", "log_format"),
    Flag("enable-log-rotation", B, "false", LOGGING, "Enable log rotation of a single log-outputs file target.",
         "enable_log_rotation"),
    Flag("log-rotation-config-json", S,
         '{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}', LOGGING,
         "Configures log rotation if enabled with a JSON logger config. MaxSize(MB), MaxAge(days,0=no limit), "
         "MaxBackups(0=no limit), LocalTime(use computers local time), Compress(gzip).", "log_rotation_config_json"),
    # -- Distributed tracing
    *(Flag(f"{prefix}{name}", kind, default, TRACING, text)
      for prefix in ("experimental-", "")
      for name, kind, default, text in (
          ("enable-distributed-tracing", B, "false", "Enable distributed tracing."),
          ("distributed-tracing-address", S, "localhost:4317", "Distributed tracing collector address."),
          ("distributed-tracing-service-name", S, "etcd", "Distributed tracing service name."),
          ("distributed-tracing-instance-id", S, "", "Distributed tracing instance ID."),
          ("distributed-tracing-sampling-rate", I, "0", "Number of samples to collect per million spans."))),
    # -- v2 proxy (etcd 3.5)
    Flag("proxy", CH, "off", PROXY, "Proxy mode setting ('off', 'readonly' or 'on').", choices=("off", "readonly", "on")),
    Flag("proxy-failure-wait", U, "5000", PROXY, "Time (in milliseconds) an endpoint will be held in a failed state."),
    Flag("proxy-refresh-interval", U, "30000", PROXY, "Time (in milliseconds) of the endpoints refresh interval."),
    Flag("proxy-dial-timeout", U, "1000", PROXY, "Time (in milliseconds) for a dial to timeout."),
    Flag("proxy-write-timeout", U, "5000", PROXY, "Time (in milliseconds) for a write to timeout."),
    Flag("proxy-read-timeout", U, "0", PROXY, "Time (in milliseconds) for a read to timeout."),
    # -- Experimental and tuning (etcd 3.6 drops the experimental- prefix of several)
    Flag("experimental-watch-progress-notify-interval", D, "10m", EXPERIMENTAL,
         "Duration of periodical watch progress notification.", "watch_progress_notify_interval"),
    Flag("watch-progress-notify-interval", D, "10m", EXPERIMENTAL,
         "Duration of periodic watch progress notifications.", "watch_progress_notify_interval"),
    *(Flag(f"{prefix}{name}", kind, default, EXPERIMENTAL, text)
      for name, kind, default, text, prefixes in (
          ("initial-corrupt-check", B, "false",
           "Enable to check data corruption before serving any client/peer traffic.", ("experimental-",)),
          ("corrupt-check-time", D, "0s", "Duration of time between cluster corruption check passes.",
           ("experimental-", "")),
          ("compact-hash-check-enabled", B, "false",
           "Enable leader to periodically check followers compaction hashes.", ("experimental-",)),
          ("compact-hash-check-time", D, "1m", "Duration of time between leader checks followers compaction hashes.",
           ("experimental-", "")),
          ("enable-v2v3", S, "", "Serve v2 requests through the v3 backend under a given prefix.", ("experimental-",)),
          ("enable-lease-checkpoint", B, "false", "Enable leader to send regular checkpoints to other members to "
           "prevent reset of remaining TTL on leader change.", ("experimental-",)),
          ("enable-lease-checkpoint-persist", B, "false",
           "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases.",
           ("experimental-",)),
          ("compaction-batch-limit", I, "1000", "Sets the maximum revisions deleted in each compaction batch.",
           ("experimental-", "")),
          ("compaction-sleep-interval", D, "10ms", "Sets the sleep interval between each compaction batch.",
           ("experimental-", "")),
          ("peer-skip-client-san-verification", B, "false",
           "Skip verification of SAN field in client certificate for peer connections.", ("experimental-",)),
          ("downgrade-check-time", D, "5s", "Duration of time between two downgrade status checks.",
           ("experimental-", "")),
          ("warning-apply-duration", D, "100ms", "Warning is generated if requests take more than this duration.",
           ("experimental-", "")),
          ("warning-unary-request-duration", D, "300ms",
           "Time duration after which a warning is generated if a unary request takes more time.",
           ("experimental-", "")),
          ("memory-mlock", B, "false", "Enable to enforce etcd pages (in particular bbolt) to stay in RAM.",
           ("experimental-",)),
          ("txn-mode-write-with-shared-buffer", B, "true",
           "Enable the write transaction to use a shared buffer in its readonly check operations.",
           ("experimental-",)),
          ("stop-grpc-service-on-defrag", B, "false",
           "Enable etcd gRPC service to stop serving client requests on defragmentation.", ("experimental-",)),
          ("bootstrap-defrag-threshold-megabytes", U, "0", "Enable the defrag during etcd server bootstrap on "
           "condition that it will free at least the provided threshold of disk space.", ("experimental-", "")),
          ("snapshot-catchup-entries", U, "5000", "Number of entries for a slow follower to catch up after "
           "compacting the raft storage entries.", ("experimental-",)),
      ) for prefix in prefixes),
    # -- Unsafe feature
    Flag("force-new-cluster", B, "false", UNSAFE, "Force to create a new one-member cluster."),
    Flag("unsafe-no-fsync", B, "false", UNSAFE, "Disables fsync, unsafe, will cause data loss.", "unsafe_no_fsync"),
    # -- etcdlite's own
    Flag("client-http-mux", B, "true", ETCDLITE,
         "Serve HTTP (the /v3 gateway, /health, /metrics ...) beside gRPC on the client URLs, as etcd does; =false "
         "serves gRPC only there, which costs less CPU per request.", "client_http_mux", in_config_file=False),
    Flag("console", B, "true", ETCDLITE,
         "Serve the web console at /ui on every client port that serves HTTP.", "console", in_config_file=False),
    Flag("backend", S, "", ETCDLITE,
         "Where the key space lives: empty for the embedded store in --data-dir, or postgres://user@host:port/db, "
         "a database several etcdlite instances share (also ETCDLITE_BACKEND).", "backend", in_config_file=False),
    Flag("experimental-fault-injection", B, "false", ETCDLITE,
         "Serve /debug/inject on the client HTTP side: make requests fail with etcd's errors, add latency, "
         "pause, cut watches, expire leases (tests only).", "fault_injection", in_config_file=False),
)

# Flags etcd 3.5 registers as no-ops (the etcd 2 era's), taking no value, like Go bools.
LEGACY_IGNORED = ("cluster-active-size", "cluster-remove-delay", "cluster-sync-interval", "config", "force",
                  "max-result-buffer", "max-retry-attempts", "peer-heartbeat-interval", "peer-election-timeout",
                  "retry-interval", "snapshot", "v", "vv", "test.coverprofile", "test.outputdir")

BY_NAME: dict[str, Flag] = {f.name: f for f in FLAGS}
assert len(BY_NAME) == len(FLAGS), "a flag is declared twice"


def help_text(prog: str = "etcdlite") -> str:
    """etcd's ``--help`` layout: usage, then every flag by section with its default."""
    lines = [
        "Usage:", "",
        f"  {prog} [flags]", "    Start an etcd server (etcdlite: one member, etcd's v3 API).", "",
        f"  {prog} --version", "    Show the version of etcd (and of etcdlite).", "",
        f"  {prog} -h | --help", "    Show the help information about etcd.", "",
        f"  {prog} --config-file", "    Path to the server configuration file. Note that if a configuration file is "
        "provided, other command line flags and environment variables will be ignored.", "",
        f"  {prog} snapshot restore FILE|ETCD_DATA_DIR --data-dir DIR",
        "    Make a new data dir from a snapshot `etcdctl snapshot save` took of etcd or etcdlite, or from a "
        "stopped etcd's data dir.", "",
        "Flags take Go's syntax (-flag, --flag, --flag=value, a bool alone is true) and can be given as",
        "ETCD_<FLAG> environment variables (e.g. ETCD_DATA_DIR). Flags marked (ignored) are accepted for",
        "compatibility with etcd and mean nothing to a single member; etcdlite logs which were given.",
    ]
    section = ""
    for flag in FLAGS:
        if flag.section != section:
            section = flag.section
            lines += ["", f"{section}:"]
        shown = "" if flag.kind is Kind.BOOL and flag.default == "" else f" '{flag.default}'"
        lines.append(f"  --{flag.name}{shown}")
        lines.append(f"    {flag.help}" + ("" if flag.attr else " (ignored)"))
    return "\n".join(lines) + "\n"
