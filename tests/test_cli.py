"""Operator comfort: ``--help`` describes every flag; a bad start is one clear line and a non-zero exit.

(tests/test_docker.py covers a bad flag value, an unknown flag and a gRPC port in use.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from etcdlite import config


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etcdlite", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_help_describes_every_flag() -> None:
    missing = [f.name for f in config.FLAGS if not f.help]
    assert not missing, f"flags without a --help text in flagtable.FLAGS: {missing}"
    r = run("--help")
    assert r.returncode == 0
    for flag in config.FLAGS:
        assert f"--{flag.name} " in r.stdout or f"--{flag.name}\n" in r.stdout, f"--{flag.name} is not in --help"
    assert "ETCD_" in r.stdout


def _one_clear_line(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    plain = [line for line in r.stderr.splitlines() if line.startswith("etcdlite: ")]
    assert len(plain) == 1 and needle in plain[0], r.stderr


def test_http_listener_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--listen-client-http-urls", "--listen-metrics-urls"):
            r = run("--data-dir", str(tmp_path / flag), "--listen-client-urls", "http://127.0.0.1:0",
                    flag, f"http://127.0.0.1:{port}")
            _one_clear_line(r, f"listen tcp 127.0.0.1:{port}: bind: address already in use")


def test_data_dir_that_cannot_be_used(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = run("--data-dir", str(not_a_dir), "--listen-client-urls", "http://127.0.0.1:0")
    _one_clear_line(r, f'cannot use data dir "{not_a_dir}"')
    assert "not a directory" in r.stderr


@pytest.mark.parametrize("flag", ["--listen-client-http-urls", "--listen-metrics-urls"])
def test_bad_http_listener_url(tmp_path: Path, flag: str) -> None:
    r = run("--data-dir", str(tmp_path / "d"), "--listen-client-urls", "http://127.0.0.1:0", flag, "ftp://x:1")
    _one_clear_line(r, 'URL scheme must be http, https, unix, or unixs: ftp://x:1')  # etcd's words


@pytest.mark.parametrize("args, message", [
    (["--log-level", "bogus"], 'unrecognized level: "bogus"'),
    (["--log-format", "xml"], 'invalid value "xml" for flag -log-format'),
])
def test_bad_log_flags(args: list[str], message: str) -> None:
    _one_clear_line(run(*args), message)


def test_console_log_format_is_zaps(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "etcdlite", "--log-format", "console", "--data-dir",
                             str(tmp_path / "d"), "--listen-client-urls", "http://127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        while "ready to serve client requests" not in (line := proc.stderr.readline()):  # type: ignore[union-attr]
            assert line, "etcdlite exited before it was ready"
    finally:
        proc.terminate()
        proc.wait(10)
    ts, level, caller, msg, fields = line.rstrip("\n").split("\t")
    assert ts.endswith("Z") and level == "info" and caller.startswith("etcdlite")
    assert msg == "ready to serve client requests" and json.loads(fields)["address"] == "http://127.0.0.1:0"
