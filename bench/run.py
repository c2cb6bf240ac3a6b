"""Side-by-side benchmark: real etcd and etcdlite, both durable, driven by etcd's own `benchmark` tool.

Prints one table (operation, etcd ops/s, etcdlite ops/s, ratio, p50/p99 of each);
the last line names the worst ratio.  Ratios, not absolute numbers, are what
mean something on a shared 2-core machine.

    python bench/run.py [--quick] [--only put,range] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BUILD_BENCHMARK = ROOT.parent / "shared" / "bin" / "build-etcd-benchmark"


@dataclass
class Workload:
    name: str
    args: list[str]  # benchmark sub-command and its flags
    clients: int
    conns: int
    prepare: list[str] | None = None  # a benchmark run to fill data first (e.g. the key a range reads)


def workloads(quick: bool) -> list[Workload]:
    n = 2000 if quick else 10000
    n1 = 500 if quick else 2000
    kv = ["--key-size=8", "--val-size=256"]
    fill = ["put", "--total=1", "--key-size=3", "--val-size=256", "--key-space-size=1", "--sequential-keys"]
    out = [
        Workload("put", ["put", f"--total={n1}", *kv], 1, 1),
        Workload("put", ["put", f"--total={n}", *kv], 16, 4),
        Workload("range (linearizable)", ["range", "foo", f"--total={n1}"], 1, 1, fill),
        Workload("range (linearizable)", ["range", "foo", f"--total={n}"], 16, 4, fill),
        Workload("range (serializable)", ["range", "foo", "--consistency=s", f"--total={n}"], 16, 4, fill),
        Workload("range (serializable)", ["range", "foo", "--consistency=s", f"--total={n}"], 100, 4, fill),
        Workload("txn-put", ["txn-put", f"--total={n1}", "--key-size=8", "--val-size=256"], 1, 1),
        Workload("txn-put", ["txn-put", f"--total={n}", "--key-size=8", "--val-size=256"], 16, 4),
        Workload("lease-keepalive", ["lease-keepalive", f"--total={n1}"], 1, 1),
        Workload("lease-keepalive", ["lease-keepalive", f"--total={n}"], 16, 4),
    ]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.data = workdir / f"{kind}.data"
        self.log = workdir / f"{kind}.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    def command(self) -> list[str]:
        url = f"http://127.0.0.1:{self.port}"
        common = ["--name", "default", "--data-dir", str(self.data), "--listen-client-urls", url,
                  "--advertise-client-urls", url]
        if self.kind == "etcdlite":
            return [str(VENV_BIN / "etcdlite"), *common]
        peer = f"http://127.0.0.1:{free_port()}"
        return [str(VENV_BIN / "etcd"), *common, "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"]

    def start(self) -> None:
        t0 = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        etcdctl = VENV_BIN / "etcdctl"
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} exited:\n{self.log.read_text()}")
            if time.monotonic() - t0 > 30:
                raise SystemExit(f"{self.kind} not ready:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
            except OSError:
                time.sleep(0.005)
                continue
            # listening; the first request that is answered ends the start-up
            r = subprocess.run([str(etcdctl), f"--endpoints=127.0.0.1:{self.port}", "--dial-timeout=2s",
                                "--command-timeout=2s", "get", "x"], capture_output=True)
            if r.returncode == 0:
                break
        self.startup_seconds = time.monotonic() - t0

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Result:
    rps: float
    p50: float
    p99: float


def run_benchmark(binary: str, server: Server, w: Workload, args: list[str] | None = None) -> Result:
    cmd = [binary, f"--endpoints=127.0.0.1:{server.port}", f"--clients={w.clients}", f"--conns={w.conns}",
           *(args or w.args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50% in ([\d.]+)", out)
    p99 = re.search(r"99% in ([\d.]+)", out)
    if not rps:
        raise SystemExit(f"benchmark failed on {server.kind} for {w.name}:\n{out}")
    return Result(float(rps.group(1)), float(p50.group(1)) if p50 else 0.0, float(p99.group(1)) if p99 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    binary = subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, text=True, check=True).stdout.strip()
    chosen = [w for w in workloads(opts.quick) if not opts.only or w.name.split()[0] in opts.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = {kind: Server(kind, Path(tmp)) for kind in ("etcd", "etcdlite")}
        try:
            for s in servers.values():
                s.start()
            rows.append(("start-up to first request (s)", servers["etcd"].startup_seconds,
                         servers["etcdlite"].startup_seconds, "lower"))
            rows.append(("RSS idle (MiB)", servers["etcd"].rss_mib(), servers["etcdlite"].rss_mib(), "lower"))
            for w in chosen:
                res = {}
                for kind, s in servers.items():
                    if w.prepare:
                        run_benchmark(binary, s, Workload("prep", w.prepare, 1, 1))
                    res[kind] = run_benchmark(binary, s, w)
                rows.append((f"{w.name} {w.clients}c/{w.conns}conn", res["etcd"], res["etcdlite"], "higher"))
                print(f"  {rows[-1][0]}: etcd {res['etcd'].rps:.0f}/s, etcdlite {res['etcdlite'].rps:.0f}/s",
                      file=sys.stderr)
        finally:
            for s in servers.values():
                s.stop()
    table = render(rows)
    print(table)
    if opts.out:
        Path(opts.out).write_text(table + "\n")


def render(rows) -> str:
    lines = ["| operation | etcd | etcdlite | ratio | etcd p50/p99 ms | etcdlite p50/p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    worst = None
    for name, a, b, better in rows:
        if isinstance(a, Result):
            ratio = b.rps / a.rps if a.rps else 0.0
            lines.append(f"| {name} | {a.rps:.0f}/s | {b.rps:.0f}/s | {ratio:.2f} | "
                         f"{a.p50 * 1000:.2f}/{a.p99 * 1000:.2f} | {b.p50 * 1000:.2f}/{b.p99 * 1000:.2f} |")
        else:
            ratio = (a / b if b else 0.0) if better == "lower" else (b / a if a else 0.0)
            lines.append(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.2f} | | |")
        if worst is None or ratio < worst[1]:
            worst = (name, ratio)
    lines.append("")
    lines.append(f"ratio = etcdlite/etcd (>1 is etcdlite better). worst ratio: {worst[1]:.2f} ({worst[0]})"
                 if worst else "no rows")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("ETCDCTL_API", "3")
    main()
