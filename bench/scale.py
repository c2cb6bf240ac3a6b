"""Does etcdlite slow down as the key count grows?  Put/range cost from 10k to 1M keys.

Two measurements (8-byte keys "%08d", 256-byte values):

1. **The store alone** (in-process, no gRPC, no disk): µs per put of an existing key and of a new
   key, per single-key get, per range over 100 and over 10,000 keys (a prefix), with N keys loaded.
   A put or get must cost the same at 10k and 1M keys, and a range must cost in proportion to the
   keys it returns -- the same at any N (sortedcontainers' irange, no scan of the whole store).
2. **Over gRPC** (etcdlite, durable, etcd's benchmark tool at 16 clients): put (random keys among
   the N) and single-key range throughput after loading N keys with bench/loadgen.

    python bench/scale.py [--quick] [--out bench/scale.md]      (--quick: 10k and 100k only)
"""

from __future__ import annotations

import argparse
import datetime
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import BUILD_BENCHMARK, Server, Workload, loadgen_binary, run_tool  # noqa: E402

from etcdlite.core.kv import KVApplier  # noqa: E402
from etcdlite.core.lease import Lessor  # noqa: E402
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from etcdlite.storage.memory.backend import MemoryBackend  # noqa: E402

VALUE = b"v" * 256


def _key(i: int) -> bytes:
    return b"%08d" % i


def _per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def store_costs(nkeys: int) -> dict[str, float]:
    backend = MemoryBackend(None)  # in memory, durable at once: the store's own cost
    store = backend.store
    lessor = Lessor(1)
    backend.set_lease_attacher(lessor)
    kv = KVApplier(backend, lessor)
    t0 = time.perf_counter()
    for start in range(0, nkeys, 128):  # as the bulk loader does: txns of 128 puts
        txn = store.write_txn()
        for i in range(start, min(start + 128, nkeys)):
            txn.put(_key(i), VALUE, 0)
        txn.end()
    load = (time.perf_counter() - t0) / nkeys * 1e6
    rnd = random.Random(1)
    existing = [pb.PutRequest(key=_key(rnd.randrange(nkeys)), value=VALUE) for _ in range(20000)]
    fresh = [pb.PutRequest(key=_key(nkeys + i), value=VALUE) for i in range(20000)]
    gets = [pb.RangeRequest(key=_key(rnd.randrange(nkeys))) for _ in range(20000)]
    r100 = pb.RangeRequest(key=b"000001", range_end=b"000002")  # keys 00000100..00000199
    r10k = pb.RangeRequest(key=b"0000", range_end=b"0001")  # keys 00000000..00009999
    c10k = pb.RangeRequest(key=b"0000", range_end=b"0001", count_only=True)
    out = {"load, per key": load}  # reads first, while every key has one version
    out["get, one key"] = _per_call(lambda i: kv.range(gets[i]), 20000)
    out["range, 100 keys"] = _per_call(lambda i: kv.range(r100), 500)
    out["range, 10k keys"] = _per_call(lambda i: kv.range(r10k), 10)
    out["count only, 10k keys"] = _per_call(lambda i: kv.range(c10k), 20)
    out["put, existing key"] = _per_call(lambda i: backend.write_nowait(lambda txn: kv.put(txn, existing[i])), 20000)
    out["put, new key"] = _per_call(lambda i: backend.write_nowait(lambda txn: kv.put(txn, fresh[i])), 20000)
    return out


def wait_idle(server: Server, timeout: float = 60.0) -> None:
    """Until the server uses under 10% of a CPU over half a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = server.cpu_seconds()
        time.sleep(0.5)
        if server.cpu_seconds() - before < 0.05:
            return


def grpc_rates(nkeys: int, binary: str, loadgen: str, workdir: Path) -> dict[str, float]:
    s = Server("etcdlite", workdir, f"-scale{nkeys}")
    out: dict[str, float] = {}
    try:
        s.start(loadgen)
        run_tool(loadgen, s, Workload("load", ["load", f"--keys={nkeys}", "--batch=128"], 16, 4, tool="loadgen"),
                 timeout=1800)
        wait_idle(s)  # a snapshot the load triggered may still be being written
        put = Workload("put", ["put", "--total=6000", "--key-size=8", "--val-size=256",
                               f"--key-space-size={nkeys}"], 16, 4)
        get = Workload("range", ["range", _key(nkeys // 2).decode(), "--total=6000"], 16, 4)
        out["put/s"] = run_tool(binary, s, put)[-1].rps
        out["range/s"] = run_tool(binary, s, get)[-1].rps
    finally:
        s.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-grpc", action="store_true")
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    sizes = [10_000, 100_000] if opts.quick else [10_000, 100_000, 1_000_000]
    store_rows = {n: store_costs(n) for n in sizes}
    for n, r in store_rows.items():
        print(f"  store, {n} keys: " + ", ".join(f"{k} {v:.1f} µs" for k, v in r.items()), file=sys.stderr)
    grpc_rows: dict[int, dict[str, float]] = {}
    if not opts.no_grpc:
        binary = subprocess.run([str(BUILD_BENCHMARK)], capture_output=True, text=True, check=True).stdout.strip()
        loadgen = loadgen_binary()
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                grpc_rows[n] = grpc_rates(n, binary, loadgen, Path(tmp))
                print(f"  gRPC, {n} keys: {grpc_rows[n]}", file=sys.stderr)
    labels = [f"{n // 1000}k keys" if n < 1_000_000 else f"{n // 1_000_000}M keys" for n in sizes]
    lines = ["The store alone, µs per call (in-process, no gRPC, no disk):", "",
             "| operation | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(sizes)]
    for op in store_rows[sizes[0]]:
        lines.append(f"| {op} | " + " | ".join(f"{store_rows[n][op]:.1f}" for n in sizes) + " |")
    per_key = {n: store_rows[n]["range, 10k keys"] / 10_000 for n in sizes}
    lines.append("| range, µs per returned key (10k-key range) | "
                 + " | ".join(f"{per_key[n]:.2f}" for n in sizes) + " |")
    if grpc_rows:
        lines += ["", "etcdlite over gRPC (durable, etcd's benchmark tool, 16 clients / 4 conns):", "",
                  "| operation | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(sizes)]
        for op in ("put/s", "range/s"):
            lines.append(f"| {op} | " + " | ".join(f"{grpc_rows[n][op]:.0f}" for n in sizes) + " |")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        head = (f"# bench/scale.py — {datetime.date.today().isoformat()}\n\n8-byte keys (\"%08d\"), 256-byte values. "
                "After loading N keys: reads first, then 20,000 puts of existing keys and 20,000 of new ones. Over "
                "gRPC: etcdlite durable, loaded with bench/loadgen, measured once the server is idle again; single "
                "runs on a shared 2-core VM vary by ±20%.\n\n")
        Path(opts.out).write_text(head + table + "\n")


if __name__ == "__main__":
    main()
