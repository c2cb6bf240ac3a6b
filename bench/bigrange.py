"""Other clients' put latency while clients read 200,000 keys (issue 15), etcd and etcdlite in one run.

    .venv/bin/python bench/bigrange.py [--keys 200000] [--readers 3] [--puts 300]

For each server: load the keys (16-byte values), measure a lone client's put latency (p50/p99) with
nobody else reading, then again while ``--readers`` clients read every key over and over.  Prints a
Markdown table; bench/bigrange.md keeps the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from harness import EtcdProcess  # noqa: E402


def benchmark_tool() -> str:
    """etcd's benchmark tool, built by ../shared/bin/build-etcd-benchmark when missing."""
    built = Path(os.path.expanduser("~/.cache/etcd-benchmark/benchmark"))
    if built.exists():
        return str(built)
    script = Path(__file__).resolve().parent.parent.parent / "shared" / "bin" / "build-etcd-benchmark"
    return subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout.strip()


def load(srv: EtcdProcess, keys: int) -> None:
    kv = srv.stubs().kv
    for start in range(0, keys, 1000):
        kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"big/%07d" % i, value=b"x" * 16))
                                      for i in range(start, min(start + 1000, keys))]), timeout=60)


def put_latencies(srv: EtcdProcess, n: int) -> list[float]:
    channel = grpc.insecure_channel(srv.address)  # its own connection, as another client's
    kv = pb_kv(channel)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        kv.Put(pb.PutRequest(key=b"other/%d" % i, value=b"v"), timeout=60)
        out.append((time.perf_counter() - t0) * 1000)
    channel.close()
    return out


def pb_kv(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
    return rpc_pb2_grpc.KVStub(channel)


def measure(target: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--max-txn-ops", "1000", "--quota-backend-bytes", str(8 << 30)]
        srv = EtcdProcess(target, Path(tmp) / "data", args=extra).start()
        try:
            load(srv, args.keys)
            quiet = put_latencies(srv, args.puts)
            # the readers are etcd's benchmark tool in processes of their own (a reader thread here would
            # hold this process's GIL while it decodes 200,000 keys, and the puts would measure that)
            bench = benchmark_tool()
            readers = [subprocess.Popen([bench, "--endpoints", srv.address, "--clients", "1", "--conns", "1",
                                         "range", "big/", "big0", "--total", "100000"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for _ in range(args.readers)]
            time.sleep(2.0)
            t0 = time.perf_counter()
            loaded = put_latencies(srv, args.puts)
            took = time.perf_counter() - t0
            for proc in readers:
                proc.kill()
                proc.wait()
        finally:
            srv.stop()
    q = statistics.quantiles
    return {"quiet p50": statistics.median(quiet), "quiet p99": q(quiet, n=100)[98],
            "loaded p50": statistics.median(loaded), "loaded p99": q(loaded, n=100)[98], "loaded s": took}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--puts", type=int, default=300)
    parser.add_argument("--targets", default="etcd,etcdlite")
    args = parser.parse_args()
    rows = {t: measure(t, args) for t in args.targets.split(",")}
    print(f"{args.keys} keys, {args.readers} readers reading them all over and over; a lone client's puts (ms)\n")
    print("| server | put p50 / p99 alone | put p50 / p99 while reading | p99 loaded/alone |")
    print("|---|---:|---:|---:|")
    for t, r in rows.items():
        print(f"| {t} | {r['quiet p50']:.2f} / {r['quiet p99']:.2f} | {r['loaded p50']:.2f} / {r['loaded p99']:.2f} "
              f"| {r['loaded p99'] / r['quiet p99']:.1f}x |")


if __name__ == "__main__":
    main()
