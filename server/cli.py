"""The ``etcdlite`` command: etcd's flags and ETCD_* variables, etcd's log lines, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
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


def _setup_logging(cfg: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log_format == "console":
        handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s\t%(name)s\t%(message)s"))
    else:
        handler.setFormatter(ZapLikeFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"debug": logging.DEBUG, "warn": logging.WARNING, "error": logging.ERROR}.get(
        cfg.log_level, logging.INFO))


async def _serve(cfg: Config) -> None:
    from .app import EtcdServer

    server = EtcdServer(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.close)
    await server.start()
    await server.wait_closed()
    logging.getLogger("etcdlite").info("stopped serving", extra={"fields": {"name": cfg.name}})


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, want_version = from_args(argv)
    except ConfigError as exc:
        print(f"etcdlite: {exc}", file=sys.stderr)
        return 2
    if want_version:
        print(f"etcdlite Version: {__version__}\nAPI Version: {API_VERSION}\nPython Version: {sys.version.split()[0]}")
        return 0
    _setup_logging(cfg)
    try:
        asyncio.run(_serve(cfg))
    except ConfigError as exc:
        logging.getLogger("etcdlite").error(str(exc))
        print(f"etcdlite: {exc}", file=sys.stderr)
        return 1
    return 0
