"""The ``etcdlite`` command: etcd's flags and ETCD_* variables, etcd's log lines, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time

from . import __version__
from .config import Config, ConfigError, from_args

API_VERSION = "3.5"


class ZapLikeFormatter(logging.Formatter):
    """One JSON object a line, with etcd's (zap's) keys: level, ts, caller, msg."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {"level": record.levelname.lower().replace("warning", "warn"), "ts": ts,
               "caller": f"{record.name}:{record.lineno}", "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


class ZapConsoleFormatter(ZapLikeFormatter):
    """zap's console encoding as etcd configures it: ts, level, caller, msg and the fields as JSON, tab-separated."""

    def format(self, record: logging.LogRecord) -> str:
        entry = json.loads(super().format(record))
        head = [entry.pop("ts"), entry.pop("level"), entry.pop("caller"), entry.pop("msg")]
        return "\t".join(head + ([json.dumps(entry)] if entry else []))


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def _setup_logging(cfg: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ZapConsoleFormatter() if cfg.log_format == "console" else ZapLikeFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(cfg.log_level, logging.CRITICAL))  # dpanic, panic, fatal: only the worst


async def _serve(cfg: Config) -> None:
    from .app import EtcdServer

    server = EtcdServer(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.close)
    try:
        await server.start()
    except OSError as exc:  # the data dir cannot be created, read or locked
        reason = (exc.strerror or str(exc)).lower()
        where = f"{exc.filename}: " if exc.filename else ""
        raise ConfigError(f'cannot use data dir "{cfg.data_dir}": {where}{reason}') from None
    await server.wait_closed()
    logging.getLogger("etcdlite").info("stopped serving", extra={"fields": {"name": cfg.name}})


def snapshot_restore(argv: list[str]) -> int:
    """``etcdlite snapshot restore SOURCE [--data-dir DIR]``: see ``core.restore``."""
    import argparse

    from .core.restore import restore
    from .storage.etcd.etcddb import SnapshotError
    from .storage.memory.files import StorageError

    p = argparse.ArgumentParser(prog="etcdlite snapshot restore",
                                description="Make a new data dir from a snapshot that `etcdctl snapshot save` "
                                "took of etcd or etcdlite, or from a stopped etcd's data dir; then start "
                                "etcdlite with --data-dir DIR.")
    p.add_argument("source", metavar="FILE|ETCD_DATA_DIR")
    p.add_argument("--name", default="default")
    p.add_argument("--data-dir", default="", help="default: <name>.etcd; must not exist or be empty")
    p.add_argument("--skip-hash-check", action="store_true", help="accept a file without a valid SHA-256 trailer")
    args = p.parse_args(argv)
    data_dir = args.data_dir or f"{args.name}.etcd"
    try:
        summary = restore(args.source, data_dir, args.skip_hash_check)
    except (StorageError, SnapshotError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"Error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary.describe(data_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    # gRPC core would log bind failures itself; etcdlite reports them in etcd's words
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    args = sys.argv[1:] if argv is None else argv
    if args[:2] == ["snapshot", "restore"]:
        return snapshot_restore(args[2:])
    try:
        cfg, want_version = from_args(argv)
    except ConfigError as exc:
        print(f"etcdlite: {exc}", file=sys.stderr)
        return 2
    if want_version:
        print(f"etcdlite Version: {__version__}\nAPI Version: {API_VERSION}\nPython Version: {sys.version.split()[0]}")
        return 0
    from .deps import problem

    unsupported = problem()  # before the engine is imported: it drives grpcio's private core API
    if unsupported is not None:
        print(unsupported, file=sys.stderr)
        return 1
    _setup_logging(cfg)
    from .storage.memory.files import StorageError
    from .transport.engine import new_event_loop

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(cfg))
    except (ConfigError, StorageError) as exc:
        logging.getLogger("etcdlite").error(str(exc))
        print(f"etcdlite: {exc}", file=sys.stderr)
        return 1
    # Everything is on disk and closed.  gRPC core's exit handler would wait a second more for the
    # connections clients still hold open; a stopped server has nothing to wait for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
