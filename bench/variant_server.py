"""etcdlite with one experimental change, for bench/variants.py: ``variant_server.py VARIANT -- ETCDLITE ARGS``.

VARIANT is ``base`` or a ``+``-joined list of:
  ``uvloop``                 run the event loop on uvloop
  ``opt:NAME=VALUE``         add a gRPC server option (integer VALUE if it parses as one)
  ``env:NAME=VALUE``         set an environment variable before gRPC loads (e.g. GRPC_EXPERIMENTS,
                             ETCDLITE_EVENT_LOOP=asyncio)
  ``src:DIR``                run the ``etcdlite`` package found in DIR (an older tree, for before/after)
  ``inline-fsync[:N]``       sync batches of up to N records on the event loop's thread
  ``no-inline-sync``         never sync a lone write on the event loop's thread
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    variant, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: variant_server.py VARIANT -- ARGS"
    options: list[tuple[str, object]] = []
    use_uvloop = False
    inline_fsync = -1
    no_inline_sync = False
    for part in variant.split("+"):
        if part in ("", "base"):
            continue
        if part == "uvloop":
            use_uvloop = True
        elif part == "no-inline-sync":  # never sync a lone write on the event loop's thread
            no_inline_sync = True
        elif part.startswith("inline-fsync"):  # inline-fsync[:N]: fsync on the loop thread for batches <= N
            inline_fsync = int(part.partition(":")[2] or 1 << 30)
        elif part.startswith("opt:"):
            name, _, value = part[4:].partition("=")
            try:
                options.append((name, int(value)))
            except ValueError:
                options.append((name, value))
        elif part.startswith("src:"):  # a directory holding another etcdlite package (e.g. `git archive` of HEAD)
            sys.path.insert(0, part[4:])
        elif part.startswith("env:"):
            name, _, value = part[4:].partition("=")
            os.environ[name] = value
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    # as etcdlite's own main() does, but before anything here imports grpc (an env: part wins)
    os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")
    import grpc.aio

    if options:
        real = grpc.aio.server
        extra = list(options)

        def server(*args, options=(), **kwargs):  # etcdlite's own options, then the variant's
            return real(*args, options=[*options, *extra], **kwargs)

        grpc.aio.server = server
    if use_uvloop:
        import uvloop

        uvloop.install()
    import etcdlite
    from etcdlite.cli import main as etcdlite_main

    if inline_fsync >= 0:
        _patch_inline_fsync(inline_fsync)
    if no_inline_sync:
        import etcdlite.wal

        etcdlite.wal.INLINE_SYNC_MAX_SECONDS = 0.0

    print(f"variant {variant}: etcdlite from {etcdlite.__file__}", file=sys.stderr)

    return etcdlite_main(rest)


def _patch_inline_fsync(max_batch: int) -> None:
    """The log write + fdatasync on the event loop's thread (blocking it) for batches of up to max_batch."""
    import asyncio

    from etcdlite import wal

    original = wal.WAL._write_batch

    async def _write_batch(self) -> None:
        limit = self._opts.batch_limit or len(self._queue)
        if not self._opts.fsync or min(limit, len(self._queue)) > max_batch:
            return await original(self)
        batch = self._queue[:limit]
        del self._queue[:limit]
        self._segment.append(b"".join(record for _, record in batch), True, self._opts.faults)
        self._since_snapshot += len(batch)
        self.stats.writes += 1
        self.stats.entries += len(batch)
        self._made_durable(batch[-1][0])
        await asyncio.sleep(0)

    wal.WAL._write_batch = _write_batch


if __name__ == "__main__":
    sys.exit(main())
