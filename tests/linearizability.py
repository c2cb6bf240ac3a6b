"""A linearizability checker for histories of single-key operations (Wing & Gong / Lowe, as porcupine).

A history is a list of ``Op``: who called what on which key, when the call started and when its
answer came back (one monotonic clock for all clients), and the answer.  Each key is an
independent register (linearizability is local: a history is linearizable iff each key's
sub-history is), so every key is checked on its own: a depth-first search for an order of the
operations that respects real time (an operation that returned before another started comes
first) and in which every answer is what a single register would have answered, with a cache of
(operations placed, register state) pairs already explored, so no configuration is searched twice.

An operation whose answer never came (the server was killed while it was in flight) is
``maybe``: it may have taken effect at any point between its call and its ``ret`` (the moment of
the kill), or not at all, and its answer is unknown.

The register model: the value (bytes) or None when the key does not exist.

* ``get``: answer = the value (None: absent);
* ``put``: input = the new value, answer = the previous value (``prev_kv``);
* ``delete``: answer = the previous value (``prev_kv``; None: nothing was deleted);
* ``cas`` (a Txn: if the value is ``expected`` (None: the key is absent) put ``new``, else read it):
  input = (expected, new), answer = (succeeded, the value read when it did not succeed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

State = bytes | None
ANY = object()  # the answer of a ``maybe`` operation: unknown


@dataclass
class Op:
    client: int
    kind: str  # get | put | delete | cas
    key: bytes
    call: float
    ret: float
    input: Any = None
    output: Any = ANY
    maybe: bool = False  # no answer: took effect before ``ret`` or never

    def __repr__(self) -> str:
        out = "?" if self.output is ANY else repr(self.output)
        tag = " (maybe)" if self.maybe else ""
        return f"c{self.client} {self.kind}({self.input!r}) -> {out} [{self.call:.6f}, {self.ret:.6f}]{tag}"


def step(state: State, op: Op) -> list[State]:
    """Every state the register can be in after ``op`` from ``state`` with ``op``'s answer."""
    out = op.output
    known = out is not ANY
    if op.kind == "get":
        return [state] if not known or out == state else []
    if op.kind in ("put", "delete"):
        new = op.input if op.kind == "put" else None
        return [new] if not known or out == state else []
    if op.kind == "cas":
        expected, new = op.input
        if state == expected:
            return [new] if not known or out[0] else []
        return [state] if not known or out == (False, state) else []
    raise ValueError(f"unknown operation {op.kind!r}")


def options(state: State, op: Op) -> list[State]:
    """``step``, plus (for an operation without an answer) leaving the state as it was: not applied."""
    nexts = step(state, op)
    if op.maybe and state not in nexts:
        nexts.append(state)
    return nexts


@dataclass
class _Entry:
    """A call or a return in the doubly linked list of events the search lifts operations out of."""

    op_id: int
    is_call: bool
    match: _Entry | None = None  # a call's return
    prev: _Entry | None = None
    next: _Entry | None = None


@dataclass
class Verdict:
    ok: bool
    key: bytes = b""
    explored: int = 0
    longest_prefix: list[Op] = field(default_factory=list)  # the longest order found before failing
    stuck: list[Op] = field(default_factory=list)  # what could come next after it: none of them fits

    def explain(self) -> str:
        if self.ok:
            return "linearizable"
        lines = [f"key {self.key!r} is not linearizable; the longest valid order ({len(self.longest_prefix)} "
                 f"operations) ends with:"]
        lines += [f"  {op}" for op in self.longest_prefix[-8:]]
        lines.append("and none of these can come next:")
        lines += [f"  {op}" for op in self.stuck]
        return "\n".join(lines)


def _events(ops: list[Op]) -> _Entry:
    """The events sorted by time (a call before a return at the same instant: concurrent, the weaker
    claim), linked behind a head sentinel."""
    events: list[tuple[float, int, _Entry]] = []
    for i, op in enumerate(ops):
        if op.ret < op.call:
            raise ValueError(f"{op} returns before it is called")
        call, ret = _Entry(i, True), _Entry(i, False)
        call.match = ret
        events.append((op.call, 0, call))
        events.append((op.ret, 1, ret))
    events.sort(key=lambda e: (e[0], e[1]))
    head = _Entry(-1, False)
    prev = head
    for _, _, entry in events:
        prev.next, entry.prev = entry, prev
        prev = entry
    return head


def _lift(call: _Entry) -> None:
    """Take an operation's call and return out of the list."""
    for entry in (call, call.match):
        assert entry is not None and entry.prev is not None
        entry.prev.next = entry.next
        if entry.next is not None:
            entry.next.prev = entry.prev


def _unlift(call: _Entry) -> None:
    for entry in (call.match, call):
        assert entry is not None and entry.prev is not None
        entry.prev.next = entry
        if entry.next is not None:
            entry.next.prev = entry


def _candidates(head: _Entry) -> list[int]:
    """The operations that may be placed next: called before the first pending return."""
    out = []
    entry = head.next
    while entry is not None:
        out.append(entry.op_id)
        if not entry.is_call:
            break
        entry = entry.next
    return list(dict.fromkeys(out))


@dataclass
class _Search:
    finals: set[State]  # the states the register can end in, over every valid order
    explored: int
    longest: list[int]  # op indexes of the longest valid order found
    stuck: list[int]  # what could come after it


def _search(ops: list[Op], initial: State, every_order: bool) -> _Search:
    """Depth-first search for orders that respect real time and the register's answers; with
    ``every_order`` the search goes on after the first one, collecting every possible end state."""
    head = _events(ops)
    seen: set[tuple[int, State]] = set()
    # each frame: (call entry placed, state before it, option index taken, placed set before it)
    stack: list[tuple[_Entry, State, int, int]] = []
    state, placed = initial, 0
    entry = head.next
    finals: set[State] = set()
    longest: list[int] = []
    stuck: list[int] = _candidates(head)
    resume_at = 0  # the option of ``entry`` to try first (after a backtrack)
    while True:
        if head.next is None:  # every operation placed: a valid order
            finals.add(state)
            if not every_order:
                break
            entry = None  # backtrack for the others
        elif entry is not None and entry.is_call:
            op = ops[entry.op_id]
            nexts = options(state, op)
            moved = False
            for k in range(resume_at, len(nexts)):
                after = placed | (1 << entry.op_id)
                if (after, nexts[k]) in seen:
                    continue
                seen.add((after, nexts[k]))
                stack.append((entry, state, k, placed))
                state, placed = nexts[k], after
                _lift(entry)
                if len(stack) > len(longest):
                    longest = [frame[0].op_id for frame in stack]
                    stuck = _candidates(head)
                entry, resume_at, moved = head.next, 0, True
                break
            if not moved:
                entry, resume_at = entry.next, 0
            continue
        # at a return (the operation it ends must be placed before anything after it), or done
        if not stack:
            break
        call, state, k, placed = stack.pop()
        _unlift(call)
        entry, resume_at = call, k + 1
    return _Search(finals, len(seen), longest, stuck)


def segments(ops: list[Op]) -> list[list[Op]]:
    """The history cut wherever no operation spans the cut (every earlier one returned before the
    next one was called; a kill and restart always is such a point): each part can be searched on
    its own, from the states the previous part can end in."""
    out: list[list[Op]] = []
    last_ret = float("-inf")
    for op in sorted(ops, key=lambda o: o.call):
        if not out or op.call > last_ret:
            out.append([])
        out[-1].append(op)
        last_ret = max(last_ret, op.ret)
    return out


def check_key(ops: list[Op], initial: State = None, key: bytes = b"") -> Verdict:
    """Is this one key's history linearizable from ``initial``?"""
    states: set[State] = {initial}
    explored = 0
    for part in segments(ops):
        ends: set[State] = set()
        for start in states:
            found = _search(part, start, every_order=True)
            ends |= found.finals
            explored += found.explored
        if not ends:
            worst = max((_search(part, start, every_order=False) for start in states),
                        key=lambda f: len(f.longest))
            return Verdict(False, key, explored, [part[i] for i in worst.longest], [part[i] for i in worst.stuck])
        states = ends
    return Verdict(True, key, explored)


def check(history: list[Op], initial: dict[bytes, State] | None = None) -> Verdict:
    """Every key's sub-history; the first one that is not linearizable, else ok."""
    by_key: dict[bytes, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    explored = 0
    for key in sorted(by_key):
        verdict = check_key(by_key[key], (initial or {}).get(key), key)
        if not verdict.ok:
            return verdict
        explored += verdict.explored
    return Verdict(True, explored=explored)
