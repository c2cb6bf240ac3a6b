"""The ``etcdlite`` command: etcd's flags and ETCD_* variables, etcd's log lines, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import signal
import sys
import time

from . import __version__
from .config import Config, ConfigError, FlagError, HelpRequested, from_args
from .flagtable import help_text
from .version import SERVER_VERSION


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


def _log_handler(cfg: Config, output: str) -> logging.Handler:
    """One --log-outputs target: default/stderr, stdout, or a file (appended to, as zap opens it).
    etcd writes "systemd/journal" to journald's socket; under systemd stderr reaches the journal too."""
    if output in ("default", "stderr", "systemd/journal"):
        return logging.StreamHandler(sys.stderr)
    if output == "stdout":
        return logging.StreamHandler(sys.stdout)
    try:
        if cfg.enable_log_rotation:
            rotation = json.loads(cfg.log_rotation_config_json)
            max_mb = int(rotation.get("maxsize") or 100)
            backups = int(rotation.get("maxbackups") or 0)
            # lumberjack keeps every backup when maxbackups is 0; a rotating handler needs a bound
            return logging.handlers.RotatingFileHandler(output, maxBytes=max_mb * 1024 * 1024,
                                                        backupCount=backups or 1000)
        return logging.FileHandler(output)
    except OSError as exc:
        raise ConfigError(f"open {output}: {(exc.strerror or str(exc)).lower()}") from None


def _setup_logging(cfg: Config) -> None:
    formatter = ZapConsoleFormatter() if cfg.log_format == "console" else ZapLikeFormatter()
    handlers = [_log_handler(cfg, output) for output in cfg.log_outputs]
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(_LEVELS.get(cfg.log_level, logging.CRITICAL))  # dpanic, panic, fatal: only the worst


def _log_start_notes(cfg: Config) -> None:
    """What parsing the configuration had to say, now that logging is set up; and the one line that
    names the given flags a single member does not use."""
    lg = logging.getLogger("etcdlite")
    for level, msg, fields in cfg.notes:
        lg.log(logging.WARNING if level == "warn" else logging.INFO, msg, extra={"fields": fields})
    if cfg.ignored_flags:
        lg.warning("ignoring flags a single member does not use (peers, proxy, discovery, raft and backend "
                   "tuning, tracing)", extra={"fields": {"ignored-flags": cfg.ignored_flags}})


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
    """``etcdlite snapshot restore SOURCE [--data-dir DIR | --backend postgres://...]``: see ``core.restore``
    and ``core.restore_postgres``."""
    import argparse
    from urllib.parse import urlsplit

    from .core.restore import restore
    from .storage.etcd.etcddb import SnapshotError
    from .storage.memory.files import StorageError

    p = argparse.ArgumentParser(prog="etcdlite snapshot restore",
                                description="Make a new data dir from a snapshot that `etcdctl snapshot save` "
                                "took of etcd or etcdlite, or from a stopped etcd's data dir; then start "
                                "etcdlite with --data-dir DIR. With --backend postgres://..., write the restored "
                                "state into that (empty) PostgreSQL database instead; then start etcdlite "
                                "instances with --backend on it.")
    p.add_argument("source", metavar="FILE|ETCD_DATA_DIR")
    p.add_argument("--name", default="default")
    p.add_argument("--data-dir", default="", help="default: <name>.etcd; must not exist or be empty")
    p.add_argument("--backend", default="", metavar="postgres://user@host:port/db",
                   help="restore into this PostgreSQL database (also ETCD_BACKEND or ETCDLITE_BACKEND, unless "
                   "--data-dir is given); it must hold no etcdlite cluster and no instance may serve it")
    p.add_argument("--skip-hash-check", action="store_true", help="accept a file without a valid SHA-256 trailer")
    args = p.parse_args(argv)
    backend = args.backend
    if args.backend and args.data_dir:
        print("Error: give --data-dir or --backend, not both", file=sys.stderr)
        return 1
    if not backend and not args.data_dir:  # as the server reads it: etcd's name for the variable first
        backend = os.environ.get("ETCD_BACKEND") or os.environ.get("ETCDLITE_BACKEND") or ""
    if backend and urlsplit(backend).scheme not in ("postgres", "postgresql"):
        print(f'Error: invalid value "{backend}" for flag -backend: expected postgres://user@host:port/db',
              file=sys.stderr)
        return 1
    target = args.data_dir or f"{args.name}.etcd"
    try:
        if backend:
            from .core.restore_postgres import restore_into_database
            from .storage.postgres.dsn import redacted

            target = redacted(backend)
            summary = restore_into_database(args.source, backend, args.skip_hash_check)
        else:
            summary = restore(args.source, target, args.skip_hash_check)
    except (StorageError, SnapshotError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"Error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary.describe(target))
    return 0


def main(argv: list[str] | None = None) -> int:
    # gRPC core would log bind failures itself; etcdlite reports them in etcd's words
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    args = sys.argv[1:] if argv is None else argv
    if args[:2] == ["snapshot", "restore"]:
        return snapshot_restore(args[2:])
    if args[:1] in (["gateway"], ["grpc-proxy"]):
        print(f"etcdlite: 'etcd {args[0]}' (etcd's proxies) is not part of etcdlite", file=sys.stderr)
        return 2
    try:
        cfg, want_version = from_args(args)
    except HelpRequested:
        print(help_text())
        return 0
    except FlagError as exc:  # what Go's flag package refuses: etcd exits 2
        print(f"etcdlite: {exc}\n(etcdlite --help lists the flags)", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"etcdlite: {exc}", file=sys.stderr)
        return 1
    if want_version:
        print(f"etcd Version: {SERVER_VERSION}\netcdlite Version: {__version__}\n"
              f"Python Version: {sys.version.split()[0]}\nOS/Arch: {sys.platform}/{os.uname().machine}")
        return 0
    from .deps import problem

    unsupported = problem()  # before the engine is imported: it drives grpcio's private core API
    if unsupported is not None:
        print(unsupported, file=sys.stderr)
        return 1
    try:
        _setup_logging(cfg)
    except ConfigError as exc:
        print(f"etcdlite: {exc}", file=sys.stderr)
        return 1
    _log_start_notes(cfg)
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
