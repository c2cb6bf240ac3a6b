"""An aetcd (asyncio gRPC client) session against HOST PORT; prints what it saw as JSON.

Run in its own process: aetcd registers etcd's protobuf descriptors itself,
which clash with the etcd3 client's in the test process.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aetcd


def kv(r) -> list:
    if r is None:
        return None
    return [r.key.decode(), r.value.decode(), r.create_revision, r.mod_revision, r.version]


async def session(host: str, port: int) -> list:
    out = []
    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        await c.put(b"/svc/a", b"1")
        await c.put(b"/svc/b", b"2")
        out.append(["get", kv(await c.get(b"/svc/a"))])
        out.append(["prefix", [kv(r) for r in await c.get_prefix(b"/svc/")]])
        prev = await c.put(b"/svc/a", b"1b", prev_kv=True)
        out.append(["put-prev", kv(prev.prev_kv), prev.header.revision])
        out.append(["delete", (await c.delete(b"/svc/b")).deleted])
        lease = await c.lease(30)
        await c.put(b"/leased", b"x", lease=lease)
        info = await c.get_lease_info(lease.id, keys=True)
        out.append(["lease", info.grantedTTL, [k.decode() for k in info.keys], 0 < info.TTL <= 30])
        await c.revoke_lease(lease.id)
        out.append(["after-revoke", kv(await c.get(b"/leased"))])
        start = (await c.put(b"/w", b"0")).header.revision
        watch = await c.watch(b"/w", start_revision=start)
        await c.put(b"/w", b"1")
        await c.delete(b"/w")
        events = []
        async for event in watch:
            events.append([str(event.kind), event.kv.key.decode(), event.kv.value.decode(), event.kv.mod_revision])
            if len(events) == 3:
                break
        await watch.cancel()
        out.append(["watch", events])
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(session(sys.argv[1], int(sys.argv[2])))))
