"""Side-by-side benchmark: real etcd and etcdlite, both fresh and durable (fsync on), same load.

The load comes from etcd's own ``benchmark`` tool (put, range, txn-put, lease-keepalive, watch,
watch-latency) and, for what it has no sub-command for (lease grant/revoke, a mixed get/put load,
bulk-loading keys, waiting for the first answer), from ``bench/loadgen`` -- a small Go program on
the same etcd v3.4 client library, built the same way.  Prints one table (operation, etcd ops/s,
etcdlite ops/s, ratio, p50/p99 of each) and names the worst ratio on its last line.

Ratios, not absolute numbers, mean something on a shared 2-core machine: the servers run one at a
time under identical load, and the load tool shares the cores with them.

    python bench/run.py [--quick] [--only put,range,...] [--skip-keys] [--out bench/results.md]

``--quick`` (~1.5 min): fewer requests, two runs each, 100k keys for the RSS/start-up/data-dir rows
instead of 1M.  A full run takes ~6 min (three runs of each workload per server, the best kept).
``--etcdlite-variant src:DIR`` runs the etcdlite package in DIR instead (before/after comparisons).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# shared/ beside the repository (a worktree further down finds it higher up)
BUILD_BENCHMARK = next((p / "shared" / "bin" / "build-etcd-benchmark" for p in ROOT.parents
                        if (p / "shared" / "bin" / "build-etcd-benchmark").exists()),
                       ROOT.parent / "shared" / "bin" / "build-etcd-benchmark")
LOADGEN_SRC = ROOT / "bench" / "loadgen" / "main.go"
LOADGEN_BIN = Path.home() / ".cache" / "etcdlite-bench" / "loadgen"
ETCDLITE_VARIANT = ""  # --etcdlite-variant: run etcdlite through bench/variant_server.py
POSTGRES: Any = None  # --etcdlite-backend postgres: a throw-away PostgreSQL (fsync on); each etcdlite a database


@dataclass
class Workload:
    name: str
    args: list[str]  # sub-command and its flags
    clients: int
    conns: int
    prepare: list[str] | None = None  # a `benchmark` run to fill data first (e.g. the key a range reads)
    tool: str = "benchmark"  # or "loadgen"
    # (row label, index of the tool's summary to read: the watch tool prints the creation summary
    # first; loadgen's lease prints grant then revoke)
    rows: list[tuple[str, int]] = field(default_factory=list)
    latency: bool = False  # rate-limited load: the ratio compares p99 latency, not ops/s

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = [(self.name, -1)]


def workloads(quick: bool) -> list[Workload]:
    n = 3000 if quick else 10000  # requests at 16+ clients
    n1 = 600 if quick else 2000  # at 1 client
    kv = ["--key-size=8", "--val-size=256"]
    fill = ["put", "--total=1", "--key-size=3", "--val-size=256", "--key-space-size=1", "--sequential-keys"]
    lin = ["range", "foo"]
    ser = ["range", "foo", "--consistency=s"]
    wl_total = 150 if quick else 500  # watch-latency puts, at 100/s
    out = [
        Workload("put", ["put", f"--total={n1}", *kv], 1, 1),
        Workload("put", ["put", f"--total={n}", *kv], 16, 4),
        Workload("range (linearizable)", [*lin, f"--total={n1}"], 1, 1, fill),
        Workload("range (linearizable)", [*lin, f"--total={n}"], 16, 4, fill),
        Workload("range (linearizable)", [*lin, f"--total={2 * n}"], 100, 4, fill),
        Workload("range (serializable)", [*ser, f"--total={n1}"], 1, 1, fill),
        Workload("range (serializable)", [*ser, f"--total={n}"], 16, 4, fill),
        Workload("range (serializable)", [*ser, f"--total={2 * n}"], 100, 4, fill),
        Workload("txn-put", ["txn-put", f"--total={n1}", *kv], 1, 1),
        Workload("txn-put", ["txn-put", f"--total={n}", *kv], 16, 4),
        Workload("lease-keepalive", ["lease-keepalive", f"--total={n1}"], 1, 1),
        Workload("lease-keepalive", ["lease-keepalive", f"--total={n}"], 16, 4),
        Workload("lease", ["lease", f"--total={n1 // 2}"], 1, 1, tool="loadgen",
                 rows=[("lease-grant", 0), ("lease-revoke", 1)]),
        Workload("lease", ["lease", f"--total={n // 2}"], 16, 4, tool="loadgen",
                 rows=[("lease-grant", 0), ("lease-revoke", 1)]),
        Workload("mixed 80% get / 20% put", ["mixed", f"--total={n1}", "--keys=1000"], 1, 1, tool="loadgen"),
        Workload("mixed 80% get / 20% put", ["mixed", f"--total={n}", "--keys=1000"], 16, 4, tool="loadgen"),
        # events received per second; N streams x 10 watchers on one key, each put is an event for all
        Workload("watch (events)", ["watch", "--put-rate=1000000", "--streams=1", "--watch-per-stream=1", f"--put-total={n1}"], 1, 1,
                 rows=[("watch (events)", 1)]),
        Workload("watch (events)", ["watch", "--put-rate=1000000", "--streams=16", "--watch-per-stream=10",
                                    f"--put-total={n // 40}"], 16, 4, rows=[("watch (events)", 1)]),
        Workload("watch (events)", ["watch", "--put-rate=1000000", "--streams=100", "--watch-per-stream=10",
                                    f"--put-total={n // 100}"], 100, 4, rows=[("watch (events)", 1)]),
        # put -> event latency, 100 puts/s, one watcher per client
        *(Workload("watch-latency", ["watch-latency", f"--total={wl_total}", "--put-rate=100", *kv], c, k,
                   latency=True) for c, k in ((1, 1), (16, 4), (100, 4))),
    ]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadgen_binary() -> str:
    """Build bench/loadgen (GOPATH mode on Debian's Go packages, like the benchmark tool) when stale."""
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return str(LOADGEN_BIN)
    subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, check=True)  # installs Go and etcd's sources
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as gopath:
        pkg = Path(gopath) / "src" / "etcdlite-loadgen"
        pkg.mkdir(parents=True)
        shutil.copy(LOADGEN_SRC, pkg / "main.go")
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{gopath}:/usr/share/gocode", "GOFLAGS": ""}
        subprocess.run(["go", "build", "-o", str(LOADGEN_BIN), "."], cwd=pkg, env=env, check=True)
    return str(LOADGEN_BIN)


class Server:
    def __init__(self, kind: str, workdir: Path, tag: str = "") -> None:
        self.kind = kind
        self.port = free_port()
        self.data = workdir / f"{kind}{tag}.data"
        self.log = workdir / f"{kind}{tag}.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0
        self.peer = f"http://127.0.0.1:{free_port()}"
        self.backend = POSTGRES.new_database() if POSTGRES is not None and kind == "etcdlite" else ""

    def command(self) -> list[str]:
        url = f"http://127.0.0.1:{self.port}"
        common = ["--name", "default", "--data-dir", str(self.data), "--listen-client-urls", url,
                  "--advertise-client-urls", url]
        if self.kind == "etcdlite":
            backend = ["--backend", self.backend] if self.backend else []
            if ETCDLITE_VARIANT:  # e.g. the code of an older tree, for a before/after run
                return [str(VENV_BIN / "python"), str(ROOT / "bench" / "variant_server.py"), ETCDLITE_VARIANT,
                        "--", *common, *backend]
            return [str(VENV_BIN / "etcdlite"), *common, *backend]
        peer = self.peer
        return [str(VENV_BIN / "etcd"), *common, "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"]

    def start(self, loadgen: str | None = None) -> None:
        """Start and wait for the first answered request; ``startup_seconds`` is that wait."""
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        if loadgen is not None:
            # one Go process that retries a Get every 5 ms: no per-attempt process start-up
            r = subprocess.run([loadgen, f"--endpoints=127.0.0.1:{self.port}", "ready", "--timeout=120s"],
                               capture_output=True, text=True)
            if r.returncode != 0 or self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} not ready: {r.stderr}\n{self.log.read_text()[-3000:]}")
            self.startup_seconds = time.monotonic() - t0
            return
        etcdctl = VENV_BIN / "etcdctl"
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} exited:\n{self.log.read_text()}")
            if time.monotonic() - t0 > 120:
                raise SystemExit(f"{self.kind} not ready:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
            except OSError:
                time.sleep(0.005)
                continue
            r = subprocess.run([str(etcdctl), f"--endpoints=127.0.0.1:{self.port}", "--dial-timeout=2s",
                                "--command-timeout=2s", "get", "x"], capture_output=True)
            if r.returncode == 0:
                break
        self.startup_seconds = time.monotonic() - t0

    def pids(self) -> list[int]:
        """The server process and its children (etcdlite's client-port relay process)."""
        assert self.proc is not None
        out = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                out += [int(pid) for pid in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def rss_mib(self) -> float:
        """VmRSS of the server's processes, summed (pages they share counted in each)."""
        total = 0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue  # gone meanwhile
            total += sum(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
        return total / 1024

    def cpu_seconds(self) -> float:
        """user + system CPU time the server's processes (all their threads) have used."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def disk_mib(self) -> float:
        """Bytes the data dir occupies on disk (allocated blocks, as du counts them)."""
        total = 0
        for path in self.data.rglob("*"):
            if path.is_file():
                total += path.stat().st_blocks * 512
        return total / 2**20

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    cpu_us: float = 0.0  # server CPU time per request (robust to other load on the machine)


_NUM = r"([\d.]+(?:e[-+]?\d+)?)"


def parse_summaries(out: str) -> list[Result]:
    """Every report the tool printed ("Summary:" ... "Requests/sec" ... latency distribution), in order."""
    results = []
    for chunk in re.split(r"\n\s*Summary:\s*\n", out)[1:]:
        rps = re.search(r"Requests/sec:\s+" + _NUM, chunk)
        p50 = re.search(r"50% in " + _NUM, chunk)
        p99 = re.search(r"99% in " + _NUM, chunk)
        if rps:
            results.append(Result(float(rps.group(1)), float(p50.group(1)) if p50 else 0.0,
                                  float(p99.group(1)) if p99 else 0.0))
    return results


def run_tool(binary: str, server: Server, w: Workload, args: list[str] | None = None,
             timeout: float = 900) -> list[Result]:
    extra = ["--precise"] if w.tool == "benchmark" else []
    cmd = [binary, f"--endpoints=127.0.0.1:{server.port}", f"--clients={w.clients}", f"--conns={w.conns}",
           *extra, *(args or w.args)]
    cpu0 = server.cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    cpu = server.cpu_seconds() - cpu0
    results = parse_summaries("\n" + proc.stdout)
    totals = re.findall(r"Total:\s+" + _NUM, proc.stdout)
    ops = sum(r.rps * float(t) for r, t in zip(results, totals)) if len(totals) == len(results) else 0
    for r in results:  # the whole run's server CPU over every request it reported
        r.cpu_us = cpu / ops * 1e6 if ops else 0.0
    errors = re.search(r"Error distribution:(.*)", proc.stdout, re.S)
    if proc.returncode != 0 or not results or errors:
        raise SystemExit(f"{Path(binary).name} failed on {server.kind} for {w.name}: {cmd}\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return results


def better(b: Result, a: Result, latency: bool) -> bool:
    """Is run ``b`` better than ``a``: more ops/s, or for a rate-limited load, a lower p99 latency."""
    return b.p99 < a.p99 if latency else b.rps > a.rps


def run_benchmark(binary: str, server: Server, w: Workload, args: list[str] | None = None) -> Result:
    """The last report of one run (bench/durability.py's entry point)."""
    return run_tool(binary, server, w, args)[-1]


Row = tuple  # (name, etcd value, etcdlite value, "higher" | "lower" | "latency")


def measure_startup(kind: str, workdir: Path, loadgen: str, rounds: int) -> float:
    """Median time from exec to the first answered request, on an empty data dir."""
    times = []
    for i in range(rounds):
        s = Server(kind, workdir, f"-start{i}")
        try:
            s.start(loadgen)
            times.append(s.startup_seconds)
        finally:
            s.stop()
        shutil.rmtree(s.data, ignore_errors=True)
    return statistics.median(times)


def keys_rows(loadgen: str, workdir: Path, nkeys: int) -> list[Row]:
    """Bulk-load ``nkeys`` (8-byte keys, 256-byte values, 128 puts a txn, 16 clients) into fresh servers;
    RSS after the load, data-dir size, restart time and RSS after the restart."""
    label = f"{nkeys // 1000}k" if nkeys < 1_000_000 else f"{nkeys // 1_000_000}M"
    res: dict[str, dict[str, float | Result]] = {}
    for kind in ("etcd", "etcdlite"):
        s = Server(kind, workdir, "-keys")
        out: dict[str, float | Result] = {}
        try:
            s.start(loadgen)
            w = Workload("load", ["load", f"--keys={nkeys}", "--batch=128"], 16, 4, tool="loadgen")
            t0 = time.monotonic()
            r = run_tool(loadgen, s, w, timeout=1800)[-1]
            elapsed = time.monotonic() - t0
            out["load"] = Result(nkeys / elapsed, r.p50, r.p99)
            time.sleep(1)
            out["rss_loaded"] = s.rss_mib()
            s.stop()
            out["disk"] = s.disk_mib()
            s.start(loadgen)
            out["startup"] = s.startup_seconds
            time.sleep(1)
            out["rss_restarted"] = s.rss_mib()
        finally:
            s.stop()
            shutil.rmtree(s.data, ignore_errors=True)
        res[kind] = out
        print(f"  {kind} with {label} keys: " + ", ".join(
            f"{k} {v.rps:.0f}/s" if isinstance(v, Result) else f"{k} {v:.2f}" for k, v in out.items()),
            file=sys.stderr)
    e, l = res["etcd"], res["etcdlite"]
    return [
        (f"bulk load {label} keys (keys/s, 128 puts a txn, 16c/4conn)", e["load"], l["load"], "higher"),
        (f"RSS with {label} keys, after the load (MiB)", e["rss_loaded"], l["rss_loaded"], "lower"),
        (f"RSS with {label} keys, after a restart (MiB)", e["rss_restarted"], l["rss_restarted"], "lower"),
        (f"start-up to first request, {label} keys on disk (s)", e["startup"], l["startup"], "lower"),
        (f"data-dir size with {label} keys (MiB)", e["disk"], l["disk"], "lower"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="~3 min: fewer requests, 100k keys")
    ap.add_argument("--only", default="", help="comma-separated workload name prefixes (e.g. put,range)")
    ap.add_argument("--skip-keys", action="store_true", help="leave out the bulk-load/RSS/restart rows")
    ap.add_argument("--keys", type=int, default=0, help="keys for the bulk-load rows (default 1M, 100k quick)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="runs of each workload per server, best kept, order alternated (default 3; quick 2)")
    ap.add_argument("--etcdlite-variant", default="",
                    help="start etcdlite as bench/variant_server.py VARIANT, e.g. src:DIR for an older tree")
    ap.add_argument("--etcdlite-backend", choices=["embedded", "postgres"], default="embedded",
                    help="postgres: etcdlite over a local PostgreSQL (fsync on) started for the run")
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    global ETCDLITE_VARIANT, POSTGRES
    ETCDLITE_VARIANT = opts.etcdlite_variant
    if opts.etcdlite_backend == "postgres":
        sys.path.insert(0, str(ROOT / "tests"))
        from pgcluster import PgCluster
        POSTGRES = PgCluster.start(durable=True)
    try:
        run(opts)
    finally:
        if POSTGRES is not None:
            POSTGRES.stop()


def run(opts: argparse.Namespace) -> None:
    rounds_each = opts.rounds or (2 if opts.quick else 3)
    started = time.monotonic()
    binary = subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, text=True, check=True).stdout.strip()
    loadgen = loadgen_binary()
    tools = {"benchmark": binary, "loadgen": loadgen}
    only = [p for p in opts.only.split(",") if p]
    chosen = [w for w in workloads(opts.quick) if not only or any(w.name.startswith(p) for p in only)]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMPDIR")) as tmp:
        work = Path(tmp)
        rounds = 3 if opts.quick else 5
        rows.append(("start-up to first request, empty (s)", measure_startup("etcd", work, loadgen, rounds),
                     measure_startup("etcdlite", work, loadgen, rounds), "lower"))
        servers = {kind: Server(kind, work) for kind in ("etcd", "etcdlite")}
        try:
            for s in servers.values():
                s.start(loadgen)
            time.sleep(1)
            rows.append(("RSS idle (MiB)", servers["etcd"].rss_mib(), servers["etcdlite"].rss_mib(), "lower"))
            for w in chosen:
                res: dict[str, list[Result]] = {}
                for r in range(rounds_each):
                    order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
                    for kind, s in order:  # etcd first, then etcdlite first, ...: drift hits both alike
                        if w.prepare:
                            run_tool(binary, s, Workload("prep", w.prepare, 1, 1))
                        got = run_tool(tools[w.tool], s, w)
                        if kind not in res:
                            res[kind] = got
                        else:  # keep the better run, row by row
                            res[kind] = [b if better(b, a, w.latency) else a for a, b in zip(res[kind], got)]
                for label, index in w.rows:
                    a, b = res["etcd"][index], res["etcdlite"][index]
                    rows.append((f"{label} {w.clients}c/{w.conns}conn", a, b, "latency" if w.latency else "higher"))
                    print(f"  {rows[-1][0]}: etcd {a.rps:.0f}/s p50 {a.p50 * 1000:.2f} ms, "
                          f"etcdlite {b.rps:.0f}/s p50 {b.p50 * 1000:.2f} ms", file=sys.stderr)
        finally:
            for s in servers.values():
                s.stop()
        if not opts.skip_keys:
            rows.extend(keys_rows(loadgen, work, opts.keys or (100_000 if opts.quick else 1_000_000)))
    table = render(rows)
    elapsed = time.monotonic() - started
    head = (f"# bench/run.py{' --quick' if opts.quick else ''} — {datetime.date.today().isoformat()}\n\n"
            f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
            f"etcd {etcd_version()}, both servers durable (fsync on), best of {rounds_each} run(s) per workload "
            f"and server, run took {elapsed / 60:.1f} min."
            + (f" etcdlite: variant `{ETCDLITE_VARIANT}`." if ETCDLITE_VARIANT else "")
            + (" etcdlite: one instance over a local PostgreSQL (fsync on), `--backend`." if POSTGRES else "") + "\n"
            "ops/s rows: ratio = etcdlite/etcd ops/s; latency rows (watch-latency, 100 puts/s, put to event): "
            "ratio = etcd p99 / etcdlite p99; size, RSS and time rows: ratio = etcd/etcdlite. >1: etcdlite better. "
            "Server CPU: the server process's user+system time over the requests of its run.\n")
    print(table)
    print(f"({elapsed / 60:.1f} min)", file=sys.stderr)
    if opts.out:
        Path(opts.out).write_text(head + "\n" + table + "\n")


def etcd_version() -> str:
    r = subprocess.run([str(VENV_BIN / "etcd"), "--version"], capture_output=True, text=True)
    m = re.search(r"etcd Version: (\S+)", r.stdout)
    return m.group(1) if m else "?"


def render(rows: list[Row]) -> str:
    lines = ["| operation | etcd | etcdlite | ratio | etcd p50/p99 ms | etcdlite p50/p99 ms | server CPU µs/op etcd/etcdlite |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    worst = None
    for name, a, b, better in rows:
        if isinstance(a, Result):
            if better == "latency":  # p99: the p50s are ~0 (events often arrive before the put's answer)
                ratio = a.p99 / b.p99 if b.p99 else 0.0
            else:
                ratio = b.rps / a.rps if a.rps else 0.0
            lat = name.startswith("watch (events)")  # the watch tool's latencies are not meaningful
            lines.append(f"| {name} | {a.rps:.0f}/s | {b.rps:.0f}/s | {ratio:.2f} | "
                         + ("– | – |" if lat else
                            f"{a.p50 * 1000:.2f}/{a.p99 * 1000:.2f} | {b.p50 * 1000:.2f}/{b.p99 * 1000:.2f} |")
                         + (f" {a.cpu_us:.0f}/{b.cpu_us:.0f} |" if a.cpu_us and b.cpu_us else " |"))
        else:
            ratio = (a / b if b else 0.0) if better == "lower" else (b / a if a else 0.0)
            lines.append(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.2f} | | | |")
        if worst is None or ratio < worst[1]:
            worst = (name, ratio)
    lines.append("")
    lines.append(f"worst ratio: {worst[1]:.2f} ({worst[0]})" if worst else "no rows")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("ETCDCTL_API", "3")
    main()
