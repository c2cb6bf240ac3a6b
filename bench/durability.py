"""Group commit vs an fsync per request: put throughput under etcd's own benchmark tool.

Three servers, every one of them fsyncing: real etcd, etcdlite (group commit, the default) and
etcdlite with ``--backend-batch-limit=1`` (one write + fsync per request).  Each gets the same put
workloads at 1 and 16 clients, in one run on the same machine.

    python bench/durability.py [--total 5000] [--out bench/durability.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BUILD_BENCHMARK, Result, Server, Workload, run_benchmark  # noqa: E402


class Configured(Server):
    """bench/run.py's server with extra flags (and a label of its own)."""

    def __init__(self, kind: str, label: str, workdir: Path, extra: list[str]) -> None:
        super().__init__(kind, workdir)
        self.label = label
        self.extra = extra
        self.data = workdir / f"{label}.data"
        self.log = workdir / f"{label}.log"

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=5000, help="puts per 16-client run (a fifth at 1 client)")
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    binary = subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, text=True, check=True).stdout.strip()
    kv = ["--key-size=8", "--val-size=256"]
    loads = [Workload("put", ["put", f"--total={opts.total // 5}", *kv], 1, 1),
             Workload("put", ["put", f"--total={opts.total}", *kv], 16, 4)]
    rows: list[tuple[str, dict[str, Result]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        servers = [Configured("etcd", "etcd", Path(tmp), []),
                   Configured("etcdlite", "etcdlite group commit", Path(tmp), []),
                   Configured("etcdlite", "etcdlite fsync per request", Path(tmp), ["--backend-batch-limit=1"])]
        try:
            for s in servers:
                s.start()
            for w in loads:
                res = {s.label: run_benchmark(binary, s, w) for s in servers}
                rows.append((f"put {w.clients} client(s) / {w.conns} conn(s)", res))
                print(f"  {rows[-1][0]}: " + ", ".join(f"{k} {r.rps:.0f}/s" for k, r in res.items()),
                      file=sys.stderr)
        finally:
            for s in servers:
                s.stop()
    labels = [s.label for s in servers]
    lines = ["| workload | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, res in rows:
        lines.append(f"| {name} | " + " | ".join(
            f"{res[k].rps:.0f}/s (p50 {res[k].p50 * 1000:.1f} ms, p99 {res[k].p99 * 1000:.1f} ms)" for k in labels)
            + " |")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
