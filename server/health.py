"""``python -m etcdlite.health [ENDPOINT]``: the check ``etcdctl endpoint health`` makes.

A linearizable Range of the key "health"; an answer, or etcd's permission
denied (auth on), means healthy.  Exit 0 when healthy, 1 otherwise — for a
Docker HEALTHCHECK in an image that has no etcdctl.
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

import grpc

from .pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc


def check(endpoint: str, timeout: float = 3.0) -> tuple[bool, str]:
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    target = f"{parts.hostname}:{parts.port or 2379}"
    start = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        try:
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"health"), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                return False, f"{endpoint} is unhealthy: failed to commit proposal: {exc.details()}"
    took = (time.monotonic() - start) * 1000
    return True, f"{endpoint} is healthy: successfully committed proposal: took = {took:.6f}ms"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ok, message = check(args[0] if args else "http://127.0.0.1:2379")
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
