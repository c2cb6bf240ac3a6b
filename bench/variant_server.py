"""etcdlite with one experimental change, for bench/variants.py: ``variant_server.py VARIANT -- ETCDLITE ARGS``.

VARIANT is ``base`` or a ``+``-joined list of:
  ``uvloop``                 run the event loop on uvloop
  ``opt:NAME=VALUE``         add a gRPC server option (integer VALUE if it parses as one)
  ``env:NAME=VALUE``         set an environment variable before gRPC loads (e.g. GRPC_EXPERIMENTS,
                             ETCDLITE_EVENT_LOOP=asyncio)
  ``src:DIR``                run the ``etcdlite`` package found in DIR (an older tree, for before/after)
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    variant, sep, *rest = sys.argv[1:]
    assert sep == "--", "usage: variant_server.py VARIANT -- ARGS"
    options: list[tuple[str, object]] = []
    use_uvloop = False
    for part in variant.split("+"):
        if part in ("", "base"):
            continue
        if part == "uvloop":
            use_uvloop = True
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
    import grpc.aio

    if options:
        real = grpc.aio.server

        def server(*args, options=(), **kwargs):
            return real(*args, options=[*options_of(options), *extra], **kwargs)

        extra = options
        options_of = list
        grpc.aio.server = server
    if use_uvloop:
        import uvloop

        uvloop.install()
    import etcdlite
    from etcdlite.cli import main as etcdlite_main

    print(f"variant {variant}: etcdlite from {etcdlite.__file__}", file=sys.stderr)

    return etcdlite_main(rest)


if __name__ == "__main__":
    sys.exit(main())
