"""etcdlite with one experimental change, for bench/variants.py: ``variant_server.py VARIANT -- ETCDLITE ARGS``.

VARIANT is ``base`` or a ``+``-joined list of:
  ``opt:NAME=VALUE``         add a gRPC server option (integer VALUE if it parses as one)
  ``env:NAME=VALUE``         set an environment variable before gRPC loads (e.g. GRPC_EXPERIMENTS)
  ``src:DIR``                run the ``etcdlite`` package found in DIR (an older tree, for before/after)
  ``thread-sync``            always sync the log in the writer's thread, never on the event loop's
  ``flag:--NAME[=VALUE]``    an extra etcdlite flag (e.g. ``flag:--client-http-mux=false``)
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    variant, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: variant_server.py VARIANT -- ARGS"
    options: list[tuple[str, object]] = []
    thread_sync = False
    flags: list[str] = []
    for part in variant.split("+"):
        if part in ("", "base"):
            continue
        if part == "thread-sync":
            thread_sync = True
        elif part.startswith("flag:"):
            flags.append(part[5:])
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
    import etcdlite
    from etcdlite.cli import main as etcdlite_main

    if options:
        from etcdlite.transport import engine

        real_init = engine.GrpcEngine.__init__

        def init(self, handlers, options=(), *, _extra=tuple(options)):  # etcdlite's own, then the variant's
            real_init(self, handlers, [*options, *_extra])

        engine.GrpcEngine.__init__ = init
    if thread_sync:
        import etcdlite.storage.memory.writer

        etcdlite.storage.memory.writer.INLINE_SYNC_MAX_SECONDS = 0.0
    print(f"variant {variant}: etcdlite from {etcdlite.__file__}", file=sys.stderr)
    return etcdlite_main([*rest, *flags])


if __name__ == "__main__":
    sys.exit(main())
