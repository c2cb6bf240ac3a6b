"""The event loop the server runs on."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's (None).

    With gRPC's asyncio server, uvloop costs about a fifth less CPU per request (measured side by
    side with etcd by ``bench/variants.py``; see README, Performance).  ``ETCDLITE_EVENT_LOOP=asyncio``
    runs on asyncio's own loop.
    """
    if os.environ.get("ETCDLITE_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
