"""A per-key linearizability check (Wing & Gong's search with a memo), for histories of register
operations; the same ``Op`` shape and answers as branch harden's ``tests/linearizability.py``, which
replaces this module once merged (tests import that one first).

Each key is a register (value bytes, or None when absent); operations: ``get`` (answer: the value),
``put`` / ``delete`` (answer: the previous value), ``cas`` (input (expected, new), answer (succeeded,
value read when it failed)).  ``maybe`` operations got no answer: applied once between ``call`` and
``ret``, or never.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

State = bytes | None
ANY = object()


@dataclass
class Op:
    client: int
    kind: str
    key: bytes
    call: float
    ret: float
    input: Any = None
    output: Any = ANY
    maybe: bool = False


@dataclass
class Verdict:
    ok: bool
    key: bytes = b""

    def explain(self) -> str:
        return "linearizable" if self.ok else f"key {self.key!r} is not linearizable"


def _step(state: State, op: Op) -> list[State]:
    out, known = op.output, op.output is not ANY
    if op.kind == "get":
        return [state] if not known or out == state else []
    if op.kind in ("put", "delete"):
        return [op.input if op.kind == "put" else None] if not known or out == state else []
    expected, new = op.input  # cas
    if state == expected:
        return [new] if not known or out[0] else []
    return [state] if not known or out == (False, state) else []


def _options(state: State, op: Op) -> list[State]:
    nexts = _step(state, op)
    if op.maybe and state not in nexts:
        nexts.append(state)  # it never took effect
    return nexts


def _search(ops: list[Op], initial: State) -> set[State]:
    """Every state the register can end in after an order of ``ops`` respecting real time in which
    every answer is the register's (empty: there is none)."""
    full = (1 << len(ops)) - 1
    finals: set[State] = set()
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[int, State]] = [(0, initial)]
    while stack:
        done, state = stack.pop()
        if done == full:
            finals.add(state)
            continue
        if (done, state) in seen:
            continue
        seen.add((done, state))
        pending = [i for i in range(len(ops)) if not done >> i & 1]
        first_return = min(ops[i].ret for i in pending)
        for i in pending:
            if ops[i].call <= first_return:  # nothing pending returned before it was called
                for nxt in _options(state, ops[i]):
                    stack.append((done | 1 << i, nxt))
    return finals


def _segments(ops: list[Op]) -> list[list[Op]]:
    """The history cut where no operation spans the cut: each part is searched on its own."""
    parts: list[list[Op]] = []
    latest = float("-inf")
    for op in sorted(ops, key=lambda o: o.call):
        if not parts or op.call > latest:
            parts.append([])
        parts[-1].append(op)
        latest = max(latest, op.ret)
    return parts


def check_key(ops: list[Op], initial: State = None, key: bytes = b"") -> Verdict:
    """Is there an order of ``ops`` respecting real time in which every answer is the register's?"""
    states: set[State] = {initial}
    for part in _segments(ops):
        states = {end for start in states for end in _search(part, start)}
        if not states:
            return Verdict(False, key)
    return Verdict(True, key)


def check(history: list[Op], initial: dict[bytes, State] | None = None) -> Verdict:
    by_key: dict[bytes, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    for key in sorted(by_key):
        verdict = check_key(by_key[key], (initial or {}).get(key), key)
        if not verdict.ok:
            return verdict
    return Verdict(True)
