"""The scale model of the PostgreSQL backend, measured where one machine can: the database's own
commit rate (pgbench), and etcd's ``benchmark`` tool against the embedded store, one instance over
PostgreSQL and two instances over the same PostgreSQL (load spread over both), with the server CPU
per request (all etcdlite processes together; PostgreSQL's own CPU is not counted).

    python bench/postgres_scale.py [--total N] [--out bench/postgres-scale.md]

Everything runs on this machine: on a 2-core box the instances, PostgreSQL and the load tool share
the same cores, so two instances cannot show the scaling of two machines; the CPU per request can.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgcluster import PgCluster  # noqa: E402
from run import BUILD_BENCHMARK, VENV_BIN, free_port, parse_summaries  # noqa: E402


def pgbench(pg: PgCluster, clients: int, seconds: int = 5) -> float:
    """Commits/s of one-row inserts (etcdlite's write shape: a lock, an insert, a commit)."""
    url = pg.new_database()
    subprocess.run(["psql", "-X", "-q", url, "-c", "CREATE TABLE t (id bigserial PRIMARY KEY, v bytea)"],
                   check=True, capture_output=True)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("BEGIN;\nSELECT pg_advisory_xact_lock(1);\nINSERT INTO t (v) VALUES (repeat('x', 300)::bytea);\n"
                "COMMIT;\n")
    out = subprocess.run([str(pg.bin / "pgbench"), "-n", "-f", f.name, "-c", str(clients), "-j", "2",
                          "-T", str(seconds), url], check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    for line in out.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    raise RuntimeError(out)


class Instance:
    def __init__(self, work: Path, n: int, backend: str) -> None:
        self.port = free_port()
        url = f"http://127.0.0.1:{self.port}"
        args = ["--name", f"n{n}", "--data-dir", str(work / f"n{n}"), "--listen-client-urls", url,
                "--advertise-client-urls", url, "--initial-advertise-peer-urls", f"http://127.0.0.1:{free_port()}"]
        if backend:
            args += ["--backend", backend]
        self.log = open(work / f"n{n}.log", "ab")
        self.proc = subprocess.Popen([str(VENV_BIN / "etcdlite"), *args], stdout=self.log, stderr=subprocess.STDOUT)

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def bench(tool: str, instances: list[Instance], args: list[str], clients: int) -> tuple[float, float, float]:
    """(ops/s, p99 ms, server CPU µs per op)."""
    endpoints = ",".join(f"127.0.0.1:{i.port}" for i in instances)
    cpu0 = sum(i.cpu() for i in instances)
    out = subprocess.run([tool, f"--endpoints={endpoints}", f"--clients={clients}",
                          f"--conns={max(len(instances), min(clients, 4))}", *args],
                         check=True, capture_output=True, text=True).stdout
    res = parse_summaries(out)[-1]
    total = int(next(a.split("=")[1] for a in args if a.startswith("--total=")))
    total *= clients if args[0] == "watch-latency" else 1  # every put is an event on every watcher
    return res.rps, res.p99 * 1000, (sum(i.cpu() for i in instances) - cpu0) / total * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=5000)
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    tool = subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, text=True, check=True).stdout.strip()
    pg = PgCluster.start(durable=True)
    lines = [f"# bench/postgres_scale.py — {datetime.date.today().isoformat()}", ""]
    try:
        lines += ["PostgreSQL commit rate (pgbench; BEGIN, advisory lock, one-row insert, COMMIT; fsync on):", "",
                  "| clients | commits/s |", "|---:|---:|"]
        for clients in (1, 4, 16):
            lines.append(f"| {clients} | {pgbench(pg, clients):.0f} |")
        lines += ["", "| workload | setup | ops/s | p99 ms | etcdlite CPU µs/op |", "|---|---|---:|---:|---:|"]
        n = opts.total
        loads = [("put 1c", ["put", f"--total={n // 5}", "--key-size=8", "--val-size=256"], 1),
                 ("put 16c", ["put", f"--total={n}", "--key-size=8", "--val-size=256"], 16),
                 ("range linearizable 16c", ["range", "foo", f"--total={n}"], 16),
                 ("range serializable 16c", ["range", "foo", "--consistency=s", f"--total={n}"], 16),
                 # put -> event on watchers spread over the instances, 100 puts/s (ops/s: the put rate)
                 ("watch-latency 100 puts/s, 4 watchers", ["watch-latency", "--total=300", "--put-rate=100",
                                                          "--key-size=8", "--val-size=256"], 4)]
        setups = [("embedded", 1, False), ("PostgreSQL, 1 instance", 1, True), ("PostgreSQL, 2 instances", 2, True)]
        with tempfile.TemporaryDirectory() as tmp:
            for label, count, shared in setups:
                url = pg.new_database() if shared else ""
                work = Path(tmp) / label.replace(" ", "_").replace(",", "")
                work.mkdir()
                instances = [Instance(work, n_, url) for n_ in range(count)]
                time.sleep(3)
                try:
                    for name, args, clients in loads:
                        rps, p99, cpu = bench(tool, instances, args, clients)
                        lines.append(f"| {name} | {label} | {rps:.0f} | {p99:.1f} | {cpu:.0f} |")
                        print(lines[-1], file=sys.stderr)
                finally:
                    for i in instances:
                        i.stop()
    finally:
        pg.stop()
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        Path(opts.out).write_text(text)


if __name__ == "__main__":
    main()
