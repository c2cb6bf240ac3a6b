"""Owned background tasks: every long-lived task has an owner that starts it and a way to stop it.

``OwnedTask`` is the one start / cancel / wait shape the server's workers share (the lease reaper,
the watch hub's sync worker, the auto-compactor, the log writer).  It imports nothing of
etcdlite's, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("etcdlite")


class OwnedTask:
    """One task, run by ``start()`` on the running loop, ended by ``cancel()`` (or by returning).

    ``wait()`` returns once it has ended; a cancellation is its normal end, any other error was
    already logged by then and is not raised again (a stopping server must finish stopping).
    """

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name=self.name)

    async def _guarded(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed", self.name)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        task = self._task
        if task is not None:
            await asyncio.wait((task,))  # its errors were logged; a cancelled waiter leaves it running
            self._task = None
