"""What etcdlite's own code costs per request, without gRPC: µs per call of the real handlers.

The handlers ``EtcdServer`` registers (guard, auth check, apply, WAL record, durability wait,
header) are called directly with a stand-in context, 16 at a time as 16 clients would, on a
data dir with ``--unsafe-no-fsync`` (the log is still encoded and written).  Deterministic
enough to compare hot-path changes; gRPC's own cost per RPC (~250-300 µs here) comes on top.

    python bench/hotpath.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etcdlite.app import EtcdServer  # noqa: E402
from etcdlite.config import from_args  # noqa: E402
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb  # noqa: E402


class Context:
    """The few ServicerContext methods the handlers use."""

    def __init__(self) -> None:
        self.sent = 0

    def invocation_metadata(self):
        return (("user-agent", "grpc-go/1.26.0"),)

    def auth_context(self):
        return {}

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")

    async def write(self, message) -> None:
        message.SerializeToString()
        self.sent += 1


async def measure(name: str, calls, n: int, concurrency: int = 16) -> float:
    async def worker(k: int) -> None:
        for i in range(k, n, concurrency):
            await calls(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    us = (time.perf_counter() - t0) / n * 1e6
    print(f"{name:38s} {us:7.1f} µs/call", flush=True)
    return us


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = from_args(["--data-dir", tmp, "--unsafe-no-fsync", "--listen-client-urls", "http://127.0.0.1:0",
                            "--log-level", "error"])
        server = EtcdServer(cfg)
        server._services()
        await server.core.start()
        m = server.grpc_methods
        ctx = Context()
        put = m["/etcdserverpb.KV/Put"].unary_unary
        rng = m["/etcdserverpb.KV/Range"].unary_unary
        txn = m["/etcdserverpb.KV/Txn"].unary_unary
        grant = m["/etcdserverpb.Lease/LeaseGrant"].unary_unary
        revoke = m["/etcdserverpb.Lease/LeaseRevoke"].unary_unary
        val = b"v" * 256
        puts = [pb.PutRequest(key=b"%08d" % (i % 1000), value=val) for i in range(1000)]
        await measure("Put (8-byte key, 256-byte value)", lambda i: put(puts[i % 1000], ctx), n)
        get = pb.RangeRequest(key=b"00000001")
        await measure("Range (one key)", lambda i: rng(get, ctx), n)
        get_s = pb.RangeRequest(key=b"00000001", serializable=True)
        await measure("Range (one key, serializable)", lambda i: rng(get_s, ctx), n)
        pre = pb.RangeRequest(key=b"0000", range_end=b"0001")
        await measure("Range (prefix, 1000 keys)", lambda i: rng(pre, ctx), max(n // 50, 100))
        txns = [pb.TxnRequest(success=[pb.RequestOp(request_put=p)]) for p in puts]
        await measure("Txn (one put)", lambda i: txn(txns[i % 1000], ctx), n)
        ids: list[int] = []

        async def do_grant(i: int) -> None:
            ids.append((await grant(pb.LeaseGrantRequest(TTL=100), ctx)).ID)

        await measure("LeaseGrant", do_grant, n // 2)
        await measure("LeaseRevoke", lambda i: revoke(pb.LeaseRevokeRequest(ID=ids[i]), ctx), n // 2)
        # watch fan-out: 160 watchers on one key (16 streams x 10), cost per event delivered
        watch = m["/etcdserverpb.Watch/Watch"].stream_stream
        queues = []
        contexts = []
        tasks = []
        for _ in range(16):
            q: asyncio.Queue = asyncio.Queue()
            for _ in range(10):
                q.put_nowait(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w")))

            async def requests(q=q):
                while True:
                    item = await q.get()
                    if item is None:
                        return
                    yield item

            c = Context()
            contexts.append(c)
            queues.append(q)
            tasks.append(asyncio.ensure_future(watch(requests(), c)))
        await asyncio.sleep(0.2)
        wput = pb.PutRequest(key=b"w", value=val)
        events = max(n // 100, 50)
        before = sum(c.sent for c in contexts)
        t0 = time.perf_counter()
        for _ in range(events):
            await put(wput, ctx)
        while sum(c.sent for c in contexts) - before < events * 160:
            await asyncio.sleep(0.001)
        us = (time.perf_counter() - t0) / (events * 160) * 1e6
        print(f"{'Watch event (160 watchers, one key)':38s} {us:7.1f} µs/event", flush=True)
        server.core.end_watches()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.core.close()
        await server.core.wait_closed()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    asyncio.run(main(ap.parse_args().n))
