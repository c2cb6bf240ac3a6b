"""One RPC served by the engine: ``ServerCall`` is both the handler's call context and the driver
of its handler (unary handlers stepped inline, streaming ones as tasks), over gRPC core's batches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc._cython import cygrpc  # private: the grpcio releases it is tested on are in deps.py

from .peers import PEERS

if TYPE_CHECKING:
    from .engine import GrpcEngine

log = logging.getLogger("etcdlite.engine")
_NO_DEADLINE = 1e12  # seconds: core reports a call without a deadline as one in the infinite future
NO_FLAGS = 0
_EMPTY = ()


def _status_code(code: grpc.StatusCode) -> int:
    return code.value[0]


class CallAbort(grpc.aio.AbortError):
    """Raised by ``ServerCall.abort``; the call ends with the status it carries."""


class ServerCall(grpc.aio.ServicerContext):
    """One RPC: the servicer context handed to a handler, and the driver of its handler."""

    # a call's state; the class holds each field's starting value, so a call only sets what changes
    _code: grpc.StatusCode | None = None
    _details = ""
    _trailing: tuple[tuple[str, Any], ...] = _EMPTY
    _initial_sent = False
    _close_watched = False  # a ReceiveCloseOnServer op is with core
    cancelled_by_client = False
    _finished = False
    _coro: Any = None  # a unary handler (or one message's, see _on_each), driven by _step
    _waiting: asyncio.Future[Any] | None = None  # what it waits for
    _task: asyncio.Task[Any] | None = None  # a streaming handler
    _read_future: asyncio.Future[Any] | None = None
    _sending = False  # a send is with core
    _send_failed = False
    _send_waiter: asyncio.Future[None] | None = None  # writes waiting for that send to end
    _status_after_send: tuple[grpc.StatusCode, str] | None = None
    _done_callbacks: tuple[Callable[[Any], None], ...] = ()
    _per_message: Any = None  # the handler of a one-response-per-request stream (rpc.PerMessage)

    def __init__(self, engine: GrpcEngine, event: Any, handler: grpc.RpcMethodHandler | None) -> None:
        self._engine = engine
        self._event = event
        self._call = event.call
        self.method: bytes = event.call_details.method
        self._handler = handler

    # -- the servicer context -------------------------------------------------------------
    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = _EMPTY) -> NoReturn:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise CallAbort()

    async def abort_with_status(self, status: Any) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return tuple(self._event.invocation_metadata)

    def peer(self) -> str:
        peer = self._call.peer()
        return peer.decode() if isinstance(peer, bytes) else peer

    def peer_identities(self) -> Any:
        return cygrpc.peer_identities(self._call)

    def peer_identity_key(self) -> Any:
        key = cygrpc.peer_identity_key(self._call)
        return key.decode() if isinstance(key, bytes) else key

    def auth_context(self) -> Mapping[str, Any]:
        props = {key.decode() if isinstance(key, bytes) else key: value
                 for key, value in cygrpc.auth_context(self._call).items()}
        if "x509_pem_cert" not in props:  # a connection whose TLS the TLS front terminated (peers.py)
            relayed = PEERS.auth_context(self.peer())
            if relayed is not None:
                return relayed
        return props

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing

    def cancelled(self) -> bool:
        return self.cancelled_by_client

    def done(self) -> bool:
        return self._finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._done_callbacks = (*self._done_callbacks, callback)

    def time_remaining(self) -> float | None:
        """Seconds until the client's deadline (gRPC core's, from the call's details); None without one."""
        remaining = self._event.call_details.deadline - time.time()
        return None if remaining > _NO_DEADLINE else max(remaining, 0.0)

    def set_compression(self, compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    async def read(self) -> Any:
        """The next request of a client-streaming call, or ``grpc.aio.EOF`` once the client half-closed."""
        assert self._handler is not None
        if self._read_future is not None:
            raise RuntimeError("a read is already pending on this call")
        future = self._engine.loop.create_future()
        self._read_future = future
        self._start((cygrpc.ReceiveMessageOperation(NO_FLAGS),), self._on_read)
        try:
            data = await future
        finally:
            self._read_future = None
        if data is None:
            return grpc.aio.EOF
        return self._handler.request_deserializer(data)

    async def write(self, message: Any) -> None:
        """Queue a message: it is handed to core at once, unless the one before is still being sent,
        which this waits for (core takes one send at a time; this is the stream's back-pressure)."""
        assert self._handler is not None
        await self.write_serialized(self._handler.response_serializer(message))

    async def write_serialized(self, data: bytes) -> None:
        """``write`` for a message that is already encoded."""
        while self._sending:
            if self._send_waiter is None:
                self._send_waiter = self._engine.loop.create_future()
            await asyncio.shield(self._send_waiter)
        if self._send_failed:
            raise asyncio.CancelledError()
        if self._initial_sent:
            ops: tuple[Any, ...] = (cygrpc.SendMessageOperation(data, NO_FLAGS),)
        else:
            self._initial_sent = True
            ops = (cygrpc.SendInitialMetadataOperation(_EMPTY, NO_FLAGS),
                   cygrpc.SendMessageOperation(data, NO_FLAGS))
        self._sending = True
        self._start(ops, self._on_sent)

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._initial_sent:
            raise RuntimeError("initial metadata was already sent")
        while self._sending:
            if self._send_waiter is None:
                self._send_waiter = self._engine.loop.create_future()
            await asyncio.shield(self._send_waiter)
        self._initial_sent = True
        self._sending = True
        self._start((cygrpc.SendInitialMetadataOperation(tuple(initial_metadata), NO_FLAGS),), self._on_sent)

    async def requests(self) -> AsyncIterator[Any]:
        while True:
            request = await self.read()
            if request is grpc.aio.EOF:
                return
            yield request

    # -- completion-queue callbacks -------------------------------------------------------
    def _start(self, ops: tuple[Any, ...], tag: Callable[[Any], None]) -> None:
        if self._engine.queue_closed:  # core must never see a batch after its queue shut down
            self._engine.loop.call_soon(tag, None)
            return
        try:
            self._call.start_server_batch(ops, tag)
        except cygrpc.ExecuteBatchError:  # the call is over (cancelled, or the server stopped)
            self._engine.loop.call_soon(tag, None)

    def _on_read(self, event: Any) -> None:
        future = self._read_future
        if future is None or future.done():
            return
        if event is None or not event.success:
            future.set_exception(asyncio.CancelledError())
            return
        future.set_result(event.batch_operations[0].message())

    def _on_sent(self, event: Any) -> None:
        self._sending = False
        if event is None or not event.success:
            self._send_failed = True  # the call is over; the next write says so
        waiter, self._send_waiter = self._send_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._status_after_send is not None:
            code, details = self._status_after_send
            self._status_after_send = None
            self._finish_status(code, details)

    def _on_close(self, event: Any) -> None:
        if event is not None and event.success and not event.batch_operations[0].cancelled():
            return  # the client saw the status
        self.cancelled_by_client = True
        self.cancel()
        for future in (self._read_future, self._send_waiter):
            if future is not None and not future.done():
                future.set_exception(asyncio.CancelledError())

    def _on_finished(self, event: Any) -> None:
        self._finished = True
        if event is None or not event.success:
            self.cancelled_by_client = True
        else:
            close = event.batch_operations[-1]  # when the batch carried one, it is the last op
            if type(close) is cygrpc.ReceiveCloseOnServerOperation and close.cancelled():
                self.cancelled_by_client = True
        self._engine.call_ended(self)
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - one callback's failure must not stop the others
                log.exception("a call's done callback failed")
        self._done_callbacks = ()

    # -- starting and ending ------------------------------------------------------------
    def begin(self) -> None:
        handler = self._handler
        if handler is None:
            self._finish_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if handler.request_streaming:
            self._watch_close()
            per_message = getattr(handler, "per_message", None)
            if per_message is not None:
                self._per_message = per_message
                per_message.begin()
                self._start((cygrpc.ReceiveMessageOperation(NO_FLAGS),), self._on_each)
                return
            if handler.response_streaming:
                coro = handler.stream_stream(self.requests(), self)
            else:
                coro = handler.stream_unary(self.requests(), self)
            self._run_task(coro)
            return
        self._start((cygrpc.ReceiveMessageOperation(NO_FLAGS),), self._on_request)

    def _on_request(self, event: Any) -> None:
        handler = self._handler
        assert handler is not None
        if event is None or not event.success:
            self.cancelled_by_client = True
            self._engine.call_ended(self)
            return
        data = event.batch_operations[0].message()
        if data is None:
            self._finish_status(grpc.StatusCode.INTERNAL, "grpc: the client sent no request message")
            return
        request = handler.request_deserializer(data)
        if handler.response_streaming:
            self._watch_close()
            self._run_task(handler.unary_stream(request, self))
            return
        self._coro = handler.unary_unary(request, self)
        self._step()

    # -- a stream whose every request gets one response (LeaseKeepAlive) ----------------------
    def _on_each(self, event: Any) -> None:
        """The next request of a one-response-per-request stream arrived (and the response before it
        went out: both travel in one batch, so each message is one round trip into core)."""
        if event is None or not event.success:
            self._end_each(asyncio.CancelledError())
            return
        data = event.batch_operations[-1].message()
        if data is None:  # the client half-closed: every request has had its answer
            self._end_each(None)
            return
        assert self._handler is not None
        self._coro = self._per_message.each(self._handler.request_deserializer(data), self)
        self._step()

    def _answer_each(self, response: Any) -> None:
        assert self._handler is not None
        try:
            data = self._handler.response_serializer(response)
        except Exception as exc:  # noqa: BLE001
            self._end_each(exc)
            return
        send = cygrpc.SendMessageOperation(data, NO_FLAGS)
        receive = cygrpc.ReceiveMessageOperation(NO_FLAGS)
        if self._initial_sent:
            self._start((send, receive), self._on_each)
        else:
            self._initial_sent = True
            self._start((cygrpc.SendInitialMetadataOperation(_EMPTY, NO_FLAGS), send, receive), self._on_each)

    def _end_each(self, exc: BaseException | None) -> None:
        self._per_message.end(exc, self)
        if exc is None:
            self._finish_status(grpc.StatusCode.OK, "")
        else:
            self._finish_error(exc)

    def _watch_close(self) -> None:
        self._close_watched = True
        self._start((cygrpc.ReceiveCloseOnServerOperation(NO_FLAGS),), self._on_close)

    def _step(self, _future: Any = None) -> None:
        """Run a handler coroutine until it returns or waits, like a task's step without the task: a
        unary handler, or the handler of one message of a one-response-per-request stream."""
        coro = self._coro
        waiting, self._waiting = self._waiting, None
        try:
            if waiting is not None and waiting.cancelled():
                yielded = coro.throw(asyncio.CancelledError())
            else:
                yielded = coro.send(None)
        except StopIteration as stop:
            self._coro = None
            self._returned(stop.value)
            return
        except BaseException as exc:  # noqa: BLE001 - every end of a handler becomes a status
            self._coro = None
            self._raised(exc)
            return
        if getattr(yielded, "_asyncio_future_blocking", None):
            yielded._asyncio_future_blocking = False
            self._waiting = yielded
            yielded.add_done_callback(self._step)
            if self._per_message is None and not self._close_watched:
                self._watch_close()  # a waiting unary call must learn that its client went away
        elif yielded is None:  # a bare yield: asyncio.sleep(0)
            self._engine.loop.call_soon(self._step)
        else:
            self._coro = None
            coro.close()
            self._raised(RuntimeError(f"a handler yielded {yielded!r}"))

    def _returned(self, response: Any) -> None:
        if self._per_message is None:
            self._finish_response(response)
        else:
            self._answer_each(response)

    def _raised(self, exc: BaseException) -> None:
        if self._per_message is None:
            self._finish_error(exc)
        else:
            self._end_each(exc)

    def _run_task(self, coro: Any) -> None:
        task = self._engine.loop.create_task(coro, name=f"grpc {self.method.decode(errors='replace')}")
        self._task = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._task = None
        if task.cancelled():
            self._finish_error(asyncio.CancelledError())
            return
        exc = task.exception()
        if exc is not None:
            self._finish_error(exc)
            return
        result = task.result()
        if self._handler is not None and not self._handler.response_streaming:
            self._finish_response(result)
        else:
            self._finish_status(self._code or grpc.StatusCode.OK, self._details)

    def _finish_response(self, response: Any) -> None:
        assert self._handler is not None
        try:
            data = self._handler.response_serializer(response)
        except Exception as exc:  # noqa: BLE001
            self._finish_error(exc)
            return
        code = self._code or grpc.StatusCode.OK
        if code is not grpc.StatusCode.OK:  # set_code without abort: status only, as grpc does
            self._finish_status(code, self._details)
        else:
            self._finish_status(code, "", data)

    def _finish_error(self, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            self._finish_status(self._code or grpc.StatusCode.UNKNOWN, self._details)
        elif isinstance(exc, asyncio.CancelledError):
            if self.cancelled_by_client:
                self._finish_status(grpc.StatusCode.CANCELLED, "")  # only ends the call in core
            else:
                self._finish_status(grpc.StatusCode.CANCELLED, "etcdserver: server stopped")
        else:
            log.error("unexpected error in %s", self.method.decode(errors="replace"), exc_info=exc)
            self._finish_status(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")

    def _finish_status(self, code: grpc.StatusCode, details: str, message: bytes | None = None) -> None:
        """End the call: its status, after ``message`` (a unary response) if there is one."""
        if self._sending:  # after the last message, which core is still sending
            self._status_after_send = (code, details)
            return
        ops: list[Any] = []
        if not self._initial_sent:
            self._initial_sent = True
            ops.append(cygrpc.SendInitialMetadataOperation(_EMPTY, NO_FLAGS))
        if message is not None:
            ops.append(cygrpc.SendMessageOperation(message, NO_FLAGS))
        ops.append(cygrpc.SendStatusFromServerOperation(self._trailing, _status_code(code),
                                                         details.encode(), NO_FLAGS))
        if not self._close_watched:
            self._close_watched = True
            ops.append(cygrpc.ReceiveCloseOnServerOperation(NO_FLAGS))
        self._start(tuple(ops), self._on_finished)

    def cancel(self) -> None:
        """End the call's handler (its client went away, or the server stops)."""
        if self._task is not None:
            self._task.cancel()
        elif self._waiting is not None:
            self._waiting.cancel()


