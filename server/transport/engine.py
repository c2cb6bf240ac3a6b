"""gRPC served straight from grpcio's core completion queue, on the event loop's own thread.

grpc.aio spends about 250 µs of CPU on each unary call in its asyncio layer (a poller thread, a task and
several futures per call); taking the core's completion-queue events on the loop's thread and running
the handler inline costs about 55 µs (bench/engine.md). The servicers are unchanged: each method is the
``grpc.RpcMethodHandler`` the api layer builds, called with a ``ServerCall`` as its context.

How the loop waits: ``CompletionQueueSelector`` is the loop's selector. Each time the loop selects it
first serves every completion-queue event that is ready; when there are none and the loop is about to
sleep, a helper thread waits on the completion queue meanwhile and wakes the loop through a pipe when an
event arrives. Under load the loop never sleeps, so events cost no thread hand-off. On any other loop
(uvloop, a test's loop) the helper thread takes every event and hands it over: slower, same behaviour.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import selectors
import threading
import time
from collections.abc import Mapping
from typing import Any

import grpc
from grpc._cython import cygrpc  # private: the grpcio releases it is tested on are in deps.py

from .call import ServerCall

log = logging.getLogger("etcdlite.engine")


_QUEUE_TIMEOUT = cygrpc.CompletionType.queue_timeout
_QUEUE_SHUTDOWN = cygrpc.CompletionType.queue_shutdown
MAX_EVENTS_PER_SELECT = 256  # a queue that never empties under load must not starve the loop's timers
BRIEF_WAIT_SECONDS = 0.001  # how long the loop waits on the queue alone before it sleeps on both
# a descriptor registered for reading this recently, and not ready since, awaits an answer (a database query
# in flight): the loop does not wait on the queue alone meanwhile.  Older ones wait for anything (a LISTEN,
# idle HTTP connections, listening sockets)
AWAITED_SECONDS = 0.1
_HELPER_POLL_SECONDS = 0.05  # how long the helper's wait lasts before it checks whether it is still wanted


class _Tag:
    """Completion-queue tags that are not a call's own callbacks."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_NEW_CALL = _Tag("new call")
_SHUTDOWN = _Tag("server shutdown")


class CompletionQueueSelector(selectors.EpollSelector):
    """The event loop's selector, which also serves the completion queues of the engines on its loop."""

    def __init__(self) -> None:
        super().__init__()
        self.engines: list[GrpcEngine] = []
        self._fd_io = False  # the last select found a file descriptor ready (not an engine's wake-up pipe)
        self._awaited: dict[int, float] = {}  # fd -> when it was registered for reading; dropped once ready

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        if events & selectors.EVENT_READ:
            self._awaited[key.fd] = time.monotonic()
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        before = self.get_key(fileobj).events
        key = super().modify(fileobj, events, data)
        if events & selectors.EVENT_READ and not before & selectors.EVENT_READ:
            self._awaited[key.fd] = time.monotonic()
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._awaited.pop(key.fd, None)
        return key

    def _answer_awaited(self) -> bool:
        """Whether a descriptor registered for reading lately has not been ready since (an answer is due)."""
        awaited = self._awaited
        if not awaited:
            return False
        since = time.monotonic() - AWAITED_SECONDS
        for fd in [fd for fd, at in awaited.items() if at < since]:
            del awaited[fd]
        return bool(awaited)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        engines = self.engines
        if not engines:
            return super().select(timeout)
        served = 0
        for engine in engines:
            served += engine.serve_ready()
        if served or (timeout is not None and timeout <= 0):
            return self._note(super().select(0))
        if not self._fd_io and not engines[0].helper_polling and not self._answer_awaited():
            # a client's next call usually follows within a millisecond: wait for it on the queue itself,
            # which costs no thread hand-off.  Not while other descriptors are busy (HTTP clients) or an
            # answer is awaited on one (a database query in flight): it would wait as long meanwhile.
            brief = BRIEF_WAIT_SECONDS if timeout is None else min(timeout, BRIEF_WAIT_SECONDS)
            if engines[0].serve_next(brief):
                for engine in engines:
                    engine.serve_ready()
                return self._note(super().select(0))
        for engine in engines:
            engine.helper_watch(True)
        try:
            ready = super().select(timeout)
        finally:
            for engine in engines:
                engine.helper_watch(False)
        for engine in engines:
            engine.serve_ready()
        return self._note(ready)

    def _note(self, ready: list[tuple[selectors.SelectorKey, int]]) -> list[tuple[selectors.SelectorKey, int]]:
        wake = {engine.wake_fd for engine in self.engines}
        self._fd_io = any(key.fd not in wake for key, _ in ready)
        if self._awaited:
            for key, events in ready:
                if events & selectors.EVENT_READ:
                    self._awaited.pop(key.fd, None)
        return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    """asyncio's loop on a ``CompletionQueueSelector``: the loop a ``GrpcEngine`` serves fastest on."""
    return asyncio.SelectorEventLoop(CompletionQueueSelector())


class GrpcEngine:
    """A gRPC server over grpcio's core, serving ``handlers`` (path -> method handler) on the running loop.

    ``add_port`` before ``start``; ``stop(grace)`` ends it: new calls are refused at once, running ones
    are cancelled after ``grace`` seconds.
    """

    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler], options: list[tuple[str, Any]]) -> None:
        self._handlers = {path.encode(): handler for path, handler in handlers.items()}
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._cq)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._calls: set[ServerCall] = set()
        self._handoff: collections.deque[Any] = collections.deque()
        self._helper_wanted = threading.Event()
        self._helper: threading.Thread | None = None
        self.helper_polling = False  # the helper thread is waiting on the completion queue
        self._closing = False
        self._server_down = False  # core reported the shutdown: no new calls, no listeners
        self.queue_closed = False
        self._stopped: asyncio.Future[None] | None = None
        self._selector: CompletionQueueSelector | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """The bound port, or 0 when the address cannot be bound."""
        if credentials is None:
            return self._server.add_http2_port(address.encode())
        return self._server.add_http2_port(address.encode(), credentials._credentials)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = self.loop.create_future()
        self._server.start()
        self._server.request_call(self._cq, self._cq, _NEW_CALL)
        selector = getattr(self.loop, "_selector", None)
        if isinstance(selector, CompletionQueueSelector):
            self._selector = selector
            selector.engines.append(self)
        else:
            self._helper_wanted.set()  # on another loop the helper takes every event
        self.loop.add_reader(self._wake_r, self._on_wake)
        self._helper = threading.Thread(target=self._helper_run, name="grpc-cq", daemon=True)
        self._helper.start()

    # -- events -----------------------------------------------------------------------------
    def serve_ready(self) -> int:
        """Serve the events that are ready now, without waiting (at most MAX_EVENTS_PER_SELECT, so
        the loop's own callbacks and timers run between); how many there were."""
        served = 0
        handoff = self._handoff
        while handoff:
            self._dispatch(handoff.popleft())
            served += 1
        if self.helper_polling:
            # the helper's wait takes the next event and wakes the loop; polling the queue meanwhile costs
            # ~70 µs a call (two pollers of one completion queue), however few events there are
            return served
        poll = self._cq.poll
        while served < MAX_EVENTS_PER_SELECT:
            event = poll(0)
            kind = event.completion_type
            if kind is _QUEUE_TIMEOUT or kind is _QUEUE_SHUTDOWN:
                return served
            self._dispatch(event)
            served += 1
        return served

    def serve_next(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for an event and serve it; whether one came."""
        event = self._cq.poll(time.time() + seconds)
        kind = event.completion_type
        if kind is _QUEUE_TIMEOUT or kind is _QUEUE_SHUTDOWN:
            return False
        self._dispatch(event)
        return True

    def helper_watch(self, wanted: bool) -> None:
        if wanted:
            self._helper_wanted.set()
        else:
            self._helper_wanted.clear()

    def _helper_run(self) -> None:
        cq = self._cq
        wanted = self._helper_wanted
        while True:  # until the queue is shut down: the events of a stopping server still need serving
            # once the queue is closing, the loop waits in join() for this thread to drain it
            if not self.queue_closed and not wanted.wait(0.5):
                continue
            self.helper_polling = True
            try:
                event = cq.poll(time.time() + _HELPER_POLL_SECONDS)
            finally:
                self.helper_polling = False
            kind = event.completion_type
            if kind is _QUEUE_TIMEOUT:
                continue
            if kind is _QUEUE_SHUTDOWN:
                return
            self._handoff.append(event)
            if self._selector is not None and not self.queue_closed:
                wanted.clear()  # the loop takes over once it is awake
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:  # the loop has not read the earlier wake-ups yet: it will wake anyway
                pass

    @property
    def wake_fd(self) -> int:
        """The pipe the helper thread wakes the loop through (its readiness is the engine's own)."""
        return self._wake_r

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        if self._selector is None:
            self.serve_ready()

    def _dispatch(self, event: Any) -> None:
        tag = event.tag
        try:
            if tag is _NEW_CALL:
                self._new_call(event)
            elif tag is _SHUTDOWN:
                self._on_shutdown()
            else:
                tag(event)
        except Exception:  # noqa: BLE001 - a bug in one call must not stop the server
            log.exception("gRPC event %r failed", tag)

    def _new_call(self, event: Any) -> None:
        if not event.success:  # the server is shutting down
            return
        if not self._closing:
            self._server.request_call(self._cq, self._cq, _NEW_CALL)
        call = ServerCall(self, event, self._handlers.get(event.call_details.method))
        self._calls.add(call)
        call.begin()

    def call_ended(self, call: ServerCall) -> None:
        self._calls.discard(call)
        if self._server_down and not self._calls:
            self._close_queue()

    # -- shutdown ------------------------------------------------------------------------------
    async def stop(self, grace: float | None) -> None:
        if self._stopped is None:
            return
        if not self._closing:
            self._closing = True
            self._server.shutdown(self._cq, _SHUTDOWN)
            if grace:
                try:
                    await asyncio.wait_for(asyncio.shield(self._stopped), grace)
                except TimeoutError:
                    pass
            if not self._stopped.done():
                for call in list(self._calls):
                    call.cancel()
                self._server.cancel_all_calls()
            try:  # a handler that ignores its cancellation must not hold the process
                await asyncio.wait_for(asyncio.shield(self._stopped), 5.0)
            except TimeoutError:
                log.warning("%d gRPC calls did not end; stopping without them", len(self._calls))
                self._close_queue()
        await self._stopped

    def _on_shutdown(self) -> None:
        self._server_down = True
        if not self._calls:
            self._close_queue()

    def _close_queue(self) -> None:
        if self.queue_closed:
            return
        self.queue_closed = True
        self._server.destroy()
        self._cq.shutdown()
        self.loop.remove_reader(self._wake_r)
        if self._selector is not None:
            self._selector.engines.remove(self)
        self._helper_wanted.set()
        if self._helper is not None:
            self._helper.join()
        while self._handoff:
            self._dispatch(self._handoff.popleft())
        os.close(self._wake_r)
        os.close(self._wake_w)
        assert self._stopped is not None
        if not self._stopped.done():
            self._stopped.set_result(None)
