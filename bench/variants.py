"""Event loop and gRPC-setting experiments, side by side with etcd in one run.

Each variant is an etcdlite started by bench/variant_server.py (``base``: as shipped;
``opt:grpc.NAME=VALUE``; ``env:NAME=VALUE``; ``flag:--NAME=VALUE``; ``thread-sync``; ``src:DIR``: another
tree's code; joined with ``+``).
The first variant is the reference the others' CPU per request is compared with.  Every workload runs on every
server in turn, ``--rounds`` times (best of), so drift on a shared machine hits all alike.

    python bench/variants.py [--variants base,flag:--client-http-mux=false,...] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BUILD_BENCHMARK, VENV_BIN, Result, Server, Workload, loadgen_binary, run_tool  # noqa: E402

HERE = Path(__file__).resolve().parent

DEFAULT_VARIANTS = [
    "base",
    "flag:--client-http-mux=false",
    "thread-sync",
    "env:GRPC_EXPERIMENTS=",
]


class Variant(Server):
    def __init__(self, variant: str, workdir: Path, index: int) -> None:
        super().__init__("etcdlite", workdir, f"-v{index}")
        self.variant = variant

    def command(self) -> list[str]:
        args = super().command()[1:]
        return [str(VENV_BIN / "python"), str(HERE / "variant_server.py"), self.variant, "--", *args]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--total", type=int, default=4000)
    ap.add_argument("--only", default="", help="comma-separated workload name prefixes")
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    binary = subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, text=True, check=True).stdout.strip()
    loadgen = loadgen_binary()
    n = opts.total
    kv = ["--key-size=8", "--val-size=256"]
    fill = ["put", "--total=1", "--key-size=3", "--val-size=256", "--key-space-size=1", "--sequential-keys"]
    loads = [
        Workload("put", ["put", f"--total={n // 4}", *kv], 1, 1),
        Workload("put", ["put", f"--total={n}", *kv], 16, 4),
        Workload("txn-put", ["txn-put", f"--total={n}", *kv], 16, 4),
        Workload("range", ["range", "foo", f"--total={n}"], 16, 4, fill),
        Workload("range serializable", ["range", "foo", "--consistency=s", f"--total={n}"], 100, 4, fill),
        Workload("lease-keepalive", ["lease-keepalive", f"--total={n}"], 16, 4),
        Workload("lease-grant", ["lease", f"--total={n // 2}"], 16, 4, tool="loadgen", rows=[("lease-grant", 0)]),
        Workload("watch (events)", ["watch", "--put-rate=1000000", "--streams=16", "--watch-per-stream=10",
                                    f"--put-total={n // 40}"], 16, 4, rows=[("watch (events)", 1)]),
    ]
    if opts.only:
        loads = [w for w in loads if any(w.name.startswith(p) for p in opts.only.split(","))]
    sep = ";" if ";" in opts.variants else ","  # ";" lets a variant hold commas (GRPC_EXPERIMENTS lists)
    variants = [v for v in opts.variants.split(sep) if v]
    best: dict[tuple[str, str], Result] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, Server] = {"etcd": Server("etcd", Path(tmp))}
        for i, v in enumerate(variants):
            servers[v] = Variant(v, Path(tmp), i)
        try:
            for s in servers.values():
                s.start(loadgen)
            for _ in range(opts.rounds):
                for w in loads:
                    for name, s in servers.items():
                        if w.prepare:
                            run_tool(binary, s, Workload("prep", w.prepare, 1, 1))
                        r = run_tool(loadgen if w.tool == "loadgen" else binary, s, w)[w.rows[0][1]]
                        key = (f"{w.name} {w.clients}c", name)
                        cpu.setdefault(key, []).append(r.cpu_us)
                        if key not in best or r.rps > best[key].rps:
                            best[key] = r
                        print(f"  {w.name} {name}: {r.rps:.0f}/s p50 {r.p50 * 1000:.2f} ms, "
                              f"server CPU {r.cpu_us:.0f} µs/op", file=sys.stderr)
        finally:
            for s in servers.values():
                s.stop()
    names = list(servers)
    lines = ["Best ops/s of the rounds; server CPU µs per request (median of the rounds; less contended "
             "by other load on the machine than ops/s); ×: the variant's CPU per request over the first variant's.", "",
             "| workload | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for w in loads:
        wkey = f"{w.name} {w.clients}c"
        base_cpu = statistics.median(cpu[(wkey, variants[0])])
        cells = []
        for name in names:
            r = best[(wkey, name)]
            c = statistics.median(cpu[(wkey, name)])
            rel = f", {c / base_cpu:.2f}×" if name not in ("etcd", variants[0]) else ""
            cells.append(f"{r.rps:.0f}/s, {c:.0f} µs{rel}")
        lines.append(f"| {w.name} {w.clients}c/{w.conns}conn | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
