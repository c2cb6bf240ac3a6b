"""Fault injection for applications' tests (``--experimental-fault-injection``).

A real etcd cannot be told to fail; an application must still handle its failures.  The faults:

* ``error``    the next N (or a fraction of, or for a while all) requests of chosen methods fail with
               one of etcd's own errors (``ERRORS``: etcd's rpctypes code and message);
* ``latency``  requests of chosen methods wait ``delay`` before they are served;
* ``pause``    requests of chosen methods (all by default) wait until the pause ends, then proceed;
* ``cut_watches``  every open watch stream ends now with an error, as streams do when their member
               loses its leader (etcd's ``monitorLeader`` cancels them with "etcdserver: no leader");
* ``expire_lease`` a lease expires now: revoked with its keys, as the lease reaper would.

Nothing here knows gRPC or HTTP.  The guard around every method (``transport/rpc.py``) reads
``active`` once per request, and only while a fault is set awaits ``before(method)``, which waits
(pause, latency) and raises the injected error; methods are named "Service/Method" ("KV/Put").
Every injected fault is logged on one line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import errors
from ..config import parse_go_duration
from ..errors import EtcdError

if TYPE_CHECKING:
    from .server import Core

log = logging.getLogger("etcdlite.faults")

# the errors that can be injected, by the name the API takes
ERRORS: dict[str, EtcdError] = {
    "leader-changed": errors.LEADER_CHANGED,
    "no-leader": errors.NO_LEADER,
    "timeout": errors.TIMEOUT,
    "timeout-leader-fail": errors.TIMEOUT_DUE_TO_LEADER_FAIL,
    "timeout-connection-lost": errors.TIMEOUT_DUE_TO_CONNECTION_LOST,
    "timeout-wait-applied": errors.TIMEOUT_WAIT_APPLIED_INDEX,
    "unhealthy": errors.UNHEALTHY,
    "stopped": errors.STOPPED,
    "not-capable": errors.NOT_CAPABLE,
    "too-many-requests": errors.TOO_MANY_REQUESTS,
    "compacted": errors.COMPACTED,
    "nospace": errors.NO_SPACE,
    "corrupt": errors.CORRUPT,
}
CUT_WATCHES_DEFAULT_ERROR = "no-leader"  # what etcd ends the streams of a member without a leader with

MAX_FAULTS = 1000  # faults set at once: past it, adding one is refused
MAX_SECONDS = 3600.0  # the longest delay, pause or fault lifetime
MAX_COUNT = 1 << 31
ALL = "*"


class FaultSpecError(ValueError):
    """A fault the API cannot take (the HTTP API answers 400 with the message)."""


# -- what a request to set a fault says ----------------------------------------------------------------
def _seconds(value: object, name: str) -> float:
    """A number of seconds, or a Go duration ("250ms", "1.5s")."""
    if isinstance(value, str):
        try:
            seconds = parse_go_duration(value.strip())
        except ValueError:
            raise FaultSpecError(f'"{name}": {value!r} is not a duration (seconds, or Go\'s "250ms", "2s")') from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise FaultSpecError(f'"{name}" must be a number of seconds or a duration string like "250ms"')
    if not 0 <= seconds <= MAX_SECONDS:  # also refuses NaN
        raise FaultSpecError(f'"{name}" must be between 0 and {MAX_SECONDS:g} seconds')
    return seconds


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
        raise FaultSpecError(f'"count" must be an integer from 1 to {MAX_COUNT}')
    return value


def _fraction(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
        raise FaultSpecError('"fraction" must be a number above 0 and at most 1')
    return float(value)


def _error(value: object) -> tuple[str, EtcdError]:
    if not isinstance(value, str) or value not in ERRORS:
        raise FaultSpecError(f'"error" must be one of: {", ".join(ERRORS)}')
    return value, ERRORS[value]


def _check_fields(params: Mapping[str, object], allowed: set[str], fault: str) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise FaultSpecError(f"unknown field {unknown[0]!r} for a {fault} fault (fields: {', '.join(sorted(allowed))})")


# -- one fault ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Fault:
    """A fault set on methods: an error, a latency or a pause, until its count or lifetime runs out."""

    id: int
    kind: str  # "error", "latency" or "pause"
    methods: frozenset[str] | None  # None: every method
    error_name: str = ""
    error: EtcdError | None = None
    delay: float = 0.0
    count: int | None = None  # injections left; None: no limit
    fraction: float = 1.0
    ends: float | None = None  # time.monotonic() when it goes away by itself
    injected: int = 0
    resumed: asyncio.Event = field(default_factory=asyncio.Event)  # a pause: set when it ends
    timer: asyncio.TimerHandle | None = None

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "fault": self.kind,
                                  "methods": [ALL] if self.methods is None else sorted(self.methods)}
        if self.error is not None:
            out.update(error=self.error_name, code=self.error.code.name, message=self.error.message)
        if self.kind == "latency":
            out["delay"] = self.delay
        if self.count is not None:
            out["count"] = self.count
        if self.fraction < 1:
            out["fraction"] = self.fraction
        if self.ends is not None:
            out["remaining"] = round(max(0.0, self.ends - time.monotonic()), 3)
        out["injected"] = self.injected
        return out


class FaultInjector:
    """The faults set on one server.  ``active`` is False whenever none is set."""

    def __init__(self, core: Core, methods: Iterable[str] = ()) -> None:
        self.active = False
        self._core = core
        self._methods: frozenset[str] = frozenset(methods)
        self._faults: dict[int, Fault] = {}
        self._next_id = 1
        self._random = random.Random()

    def set_methods(self, methods: Iterable[str]) -> None:
        """The server's methods, named "Service/Method": what a fault may name."""
        self._methods = frozenset(methods)

    @property
    def error_table(self) -> dict[str, dict[str, str]]:
        return {name: {"code": e.code.name, "message": e.message} for name, e in ERRORS.items()}

    # -- setting and clearing ----------------------------------------------------------------------
    def add(self, kind: str, params: Mapping[str, object]) -> Fault:
        """Set an error, latency or pause fault from the API's fields; raises FaultSpecError."""
        if kind not in ("error", "latency", "pause"):
            raise FaultSpecError(f"unknown fault {kind!r}")
        if len(self._faults) >= MAX_FAULTS:
            raise FaultSpecError(f"{MAX_FAULTS} faults are set already: clear some first")
        fault = self._parse(kind, params)
        self._faults[fault.id] = fault
        self._next_id += 1
        if fault.ends is not None:
            lifetime = fault.ends - time.monotonic()
            fault.timer = asyncio.get_running_loop().call_later(lifetime, self._end, fault)
        self.active = True
        log.info("fault injection: fault set", extra={"fields": fault.describe()})
        return fault

    def _parse(self, kind: str, params: Mapping[str, object]) -> Fault:
        allowed = {"methods", "duration"} | ({"count", "fraction"} if kind != "pause" else set())
        allowed |= {"error": {"error"}, "latency": {"delay"}, "pause": set()}[kind]
        _check_fields(params, allowed, kind)
        fault = Fault(self._next_id, kind, self._parse_methods(params.get("methods", ALL)))
        if kind == "error":
            if "error" not in params:
                raise FaultSpecError('an error fault needs "error": one of ' + ", ".join(ERRORS))
            fault.error_name, fault.error = _error(params["error"])
        elif kind == "latency":
            if "delay" not in params:
                raise FaultSpecError('a latency fault needs "delay" (seconds, or a duration like "200ms")')
            fault.delay = _seconds(params["delay"], "delay")
        elif "duration" not in params:
            raise FaultSpecError('a pause needs "duration" (seconds, or a duration like "2s")')
        if "count" in params:
            fault.count = _count(params["count"])
        if "fraction" in params:
            fault.fraction = _fraction(params["fraction"])
        if "duration" in params:
            fault.ends = time.monotonic() + _seconds(params["duration"], "duration")
        elif kind == "error" and "count" not in params and "fraction" not in params:
            fault.count = 1  # an error with no limit given: the next matching request only
        return fault

    def _parse_methods(self, value: object) -> frozenset[str] | None:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise FaultSpecError('"methods" must be a method name or a non-empty list of them '
                                 '("KV/Put", "Lease/LeaseKeepAlive", "KV/*", "*")')
        chosen: set[str] = set()
        for name in names:
            method = self._method(name)
            if method is None:
                return None
            chosen |= method
        return frozenset(chosen)

    def _method(self, name: str) -> set[str] | None:
        """The methods ``name`` stands for ("KV/Put", "etcdserverpb.KV/Put", "KV/*"); None for "*"."""
        if name == ALL:
            return None
        service, _, method = name.lstrip("/").partition("/")
        service = service.rpartition(".")[2]  # "etcdserverpb.KV" -> "KV"
        if method == ALL:
            found = {m for m in self._methods if m.startswith(service + "/")}
        else:
            found = {f"{service}/{method}"} & self._methods
        if not found:
            raise FaultSpecError(f"unknown method {name!r}: methods are named Service/Method, "
                                 f'e.g. "KV/Put", "Watch/Watch", "Lease/*", or "*"')
        return found

    def remove(self, fault_id: int) -> bool:
        fault = self._faults.get(fault_id)
        if fault is None:
            return False
        self._drop(fault)
        log.info("fault injection: fault cleared", extra={"fields": {"id": fault_id}})
        return True

    def clear(self) -> int:
        """Clear every fault; paused requests proceed.  Returns how many there were."""
        faults = list(self._faults.values())
        for fault in faults:
            self._drop(fault)
        log.info("fault injection: all faults cleared", extra={"fields": {"cleared": len(faults)}})
        return len(faults)

    def describe(self) -> list[dict[str, object]]:
        return [fault.describe() for fault in self._faults.values()]

    def _end(self, fault: Fault) -> None:
        if self._faults.get(fault.id) is fault:
            self._drop(fault)

    def _drop(self, fault: Fault) -> None:
        del self._faults[fault.id]
        fault.resumed.set()  # a pause's waiters proceed
        if fault.timer is not None:
            fault.timer.cancel()
        self.active = bool(self._faults)

    # -- the guard's hook --------------------------------------------------------------------------
    async def before(self, method: str) -> None:
        """Called for each request of ``method`` while a fault is set: waits out pauses and latency,
        then raises the injected error, if any."""
        error: Fault | None = None
        delay = 0.0
        for fault in list(self._faults.values()):
            if not fault.matches(method) or self._faults.get(fault.id) is not fault:  # cleared during a pause
                continue
            if fault.kind == "pause":
                if not fault.resumed.is_set():
                    self._log(fault, method, paused=round(max(0.0, (fault.ends or 0) - time.monotonic()), 3))
                    await fault.resumed.wait()
            elif (fault.kind == "latency" or error is None) and self._fires(fault):
                if fault.kind == "latency":
                    delay += fault.delay
                    self._log(fault, method, delay=fault.delay)
                else:
                    error = fault
        if delay:
            await asyncio.sleep(delay)
        if error is not None:
            assert error.error is not None
            self._log(error, method, error=error.error.message, code=error.error.code.name)
            raise error.error

    def _fires(self, fault: Fault) -> bool:
        """Whether the fault hits this request (its fraction), counting it; drops a spent fault."""
        if fault.fraction < 1 and self._random.random() >= fault.fraction:
            return False
        fault.injected += 1
        if fault.count is not None:
            fault.count -= 1
            if fault.count == 0 and self._faults.get(fault.id) is fault:
                self._drop(fault)
        return True

    @staticmethod
    def _log(fault: Fault, method: str, **details: object) -> None:
        log.warning("injected fault", extra={"fields": {"fault": fault.kind, "method": method, "id": fault.id,
                                                        **details}})

    # -- faults that happen at once ----------------------------------------------------------------
    def cut_watches(self, params: Mapping[str, object]) -> tuple[int, EtcdError]:
        """End every open watch stream with an error (``"error"``, "no-leader" by default)."""
        _check_fields(params, {"error"}, "cut-watches")
        _, error = _error(params.get("error", CUT_WATCHES_DEFAULT_ERROR))
        streams = self._core.watches.cut(error)
        log.warning("injected fault", extra={"fields": {"fault": "cut-watches", "method": "Watch/Watch",
                                                        "streams": streams, "error": error.message}})
        return streams, error

    async def expire_lease(self, params: Mapping[str, object]) -> tuple[int, int]:
        """Expire a lease now: revoke it and its keys as the reaper would.  Returns (id, keys);
        raises errors.LEASE_NOT_FOUND."""
        _check_fields(params, {"id"}, "expire-lease")
        lease_id = _lease_id(params.get("id"))
        core = self._core
        lease = core.lessor.lookup(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND
        keys = len(lease.keys)
        await core.backend.write(lambda txn: core.lessor.revoke(txn, lease_id))
        log.warning("injected fault", extra={"fields": {"fault": "expire-lease", "method": "Lease",
                                                        "lease-id": f"{lease_id:016x}", "keys": keys}})
        return lease_id, keys


def _lease_id(value: object) -> int:
    """A lease ID: a JSON integer, or a decimal string (as etcd's JSON gateway writes int64s)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 63:
        raise FaultSpecError('"id" must be a lease ID: a positive integer, or one as a decimal string')
    return value
