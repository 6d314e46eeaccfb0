"""Rule conditions (a rule's ``if``): declarative matchers over an event's JSON.

A condition is data, never code: there is no eval and no attribute access. It is compiled
once, when the config loads, into one predicate over the event's JSON (``Event.to_json()``)::

    if:
      call.metadata.tier: {in: [gold, platinum]}   # a path and its matcher
      call.attempt: {gte: 2}                       # several paths: all of them must hold
      status: failed                               # a bare value means {eq: failed}
      any:                                         # all / any / not combine conditions
        - {error.code: {matches: "^SIP_"}}
        - not: {data.reason: {exists: true}}

A path is dotted and walks mapping keys (and list indices, ``data.items.0``). Operators: ``eq``,
``ne``, ``in``, ``not_in``, ``lt``, ``lte``, ``gt``, ``gte``, ``matches`` (a regular expression,
``re.search``) and ``exists``. Evaluation never raises: a matcher on a path that is absent is
false (except ``exists: false``), comparing values of incomparable types is false, and
``true`` equals neither ``1`` nor ``1.0``. ``exists`` counts a null value as absent. Mistakes
(an unknown operator, a bad regular expression, ``in`` without a list, a path that no event
has) are config errors naming their key path, all of them at once.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.config import KeyPath, Problem, invalid

#: A compiled condition: true if the event (its JSON) satisfies it.
Predicate = Callable[[Mapping[str, Any]], bool]
#: What is known of a document's keys: a key maps to its own shape, or None (anything below).
Shape = Mapping[str, "Shape | None"]

#: The shape of ``Event.to_json()``: the paths a condition may start with.
EVENT_SHAPE: Shape = {
    "id": None,
    "type": None,
    "occurred_at": None,
    "call": {
        "id": None,
        "to": None,
        "from": None,
        "agent_id": None,
        "campaign": None,
        "metadata": None,
        "attempt": None,
        "provider_call_id": None,
    },
    "status": None,
    "duration": None,
    "recording_url": None,
    "transcript": None,
    "error": None,
    "data": None,
}

OPERATORS = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "matches", "exists")
COMBINATORS = ("all", "any", "not")


class _Missing:
    """What :func:`resolve` returns for a path that leads nowhere."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_MISSING = MISSING
_Test = Callable[[Any], bool]


def resolve(body: Any, path: Sequence[str]) -> Any:
    """The value at ``path`` in ``body`` (mapping keys; digits index lists), or ``MISSING``."""
    value = body
    for part in path:
        if isinstance(value, Mapping):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list | tuple) and part.isascii() and part.isdigit():
            index = int(part)
            if index >= len(value):
                return _MISSING
            value = value[index]
        else:
            return _MISSING
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but a boolean equals only a boolean; never raises."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _number(a) and _number(b):
        return bool(a == b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return bool(a == b)
    except Exception:  # an exotic value in a hand-built event
        return False


def _ordered(compare: Callable[[Any, Any], bool], operand: Any) -> _Test:
    def test(value: Any) -> bool:
        if _number(value) and _number(operand):
            return compare(value, operand)
        if isinstance(value, str) and isinstance(operand, str):
            return compare(value, operand)
        return False  # absent, null, or not comparable with the operand

    return test


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def hint(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'X'?)`` for the choice closest to ``word``, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_field(parts: Sequence[str], shape: Shape) -> str | None:
    """Why the dotted path ``parts`` names no field of ``shape`` (None if it may)."""
    current: Shape | None = shape
    for depth, part in enumerate(parts):
        if current is None:
            return None
        if part not in current:
            prefix = ".".join(parts[:depth])
            known = [f"{prefix}.{k}" if prefix else k for k in current]
            name = ".".join(parts[: depth + 1])
            return f"no event has the field {name!r}{hint(name, known)}"
        current = current[part]
    return None


class _Compiler:
    def __init__(self, shape: Shape | None) -> None:
        self.shape = shape
        self.problems: list[Problem] = []

    def fail(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(path, message))

    def condition(self, spec: Any, where: KeyPath) -> Predicate:
        """A mapping (every entry holds) or a list (every item holds)."""
        if isinstance(spec, Mapping):
            parts = [self.entry(key, value, (*where, key)) for key, value in spec.items()]
            return _all(parts)
        if isinstance(spec, list):
            return _all([self.condition(item, (*where, i)) for i, item in enumerate(spec)])
        self.fail(
            where,
            f"expected a mapping of paths to matchers (or all/any/not), not {_kind(spec)}",
        )
        return _never

    def entry(self, key: Any, value: Any, where: KeyPath) -> Predicate:
        if not isinstance(key, str):
            self.fail(where, f"a key must be a dotted path or all/any/not, not {_kind(key)}")
            return _never
        if key in ("all", "any"):
            if isinstance(value, Mapping):  # each entry on its own
                parts = [self.entry(k, v, (*where, k)) for k, v in value.items()]
            elif isinstance(value, list):
                parts = [self.condition(item, (*where, i)) for i, item in enumerate(value)]
            else:
                self.fail(where, f"{key} takes a list of conditions, not {_kind(value)}")
                return _never
            return _all(parts) if key == "all" else _any(parts)
        if key == "not":
            inner = self.condition(value, where)
            return lambda body: not inner(body)
        return self.path(key, value, where)

    def path(self, key: str, matcher: Any, where: KeyPath) -> Predicate:
        parts = key.split(".")
        if not all(parts):
            self.fail(where, f"not a dotted path: {key!r}")
            return _never
        self.check_known(parts, where)
        if isinstance(matcher, Mapping):
            if not matcher:
                self.fail(where, "an empty matcher: give an operator, e.g. {eq: VALUE}")
                return _never
            tests = [self.operator(op, operand, (*where, op)) for op, operand in matcher.items()]
        else:
            tests = [self.operator("eq", matcher, where)]
        path = tuple(parts)

        def holds(body: Mapping[str, Any]) -> bool:
            value = resolve(body, path)
            return all(test(value) for test in tests)

        return holds

    def check_known(self, parts: list[str], where: KeyPath) -> None:
        if self.shape is not None:
            problem = unknown_field(parts, self.shape)
            if problem:
                self.fail(where, problem)

    def operator(self, op: Any, operand: Any, where: KeyPath) -> _Test:
        if op == "eq":
            return lambda v: v is not _MISSING and equal(v, operand)
        if op == "ne":
            return lambda v: v is not _MISSING and not equal(v, operand)
        if op in ("in", "not_in"):
            if not isinstance(operand, list):
                self.fail(where, f"{op} takes a list of values, not {_kind(operand)}")
                return _refuse
            choices = list(operand)
            if op == "in":
                return lambda v: v is not _MISSING and any(equal(v, c) for c in choices)
            return lambda v: v is not _MISSING and not any(equal(v, c) for c in choices)
        if op in ("lt", "lte", "gt", "gte"):
            if not (_number(operand) or isinstance(operand, str)):
                self.fail(where, f"{op} takes a number or a string, not {_kind(operand)}")
                return _refuse
            return _ordered(
                getattr(operator, op.replace("lte", "le").replace("gte", "ge")), operand
            )
        if op == "matches":
            if not isinstance(operand, str):
                self.fail(where, f"matches takes a regular expression string, not {_kind(operand)}")
                return _refuse
            try:
                pattern = re.compile(operand)
            except re.error as exc:
                self.fail(where, f"invalid regular expression {operand!r}: {exc}")
                return _refuse
            return lambda v: isinstance(v, str) and pattern.search(v) is not None
        if op == "exists":
            if not isinstance(operand, bool):
                self.fail(where, f"exists takes true or false, not {_kind(operand)}")
                return _refuse
            return lambda v: (v is not _MISSING and v is not None) is operand
        name = str(op)
        self.fail(
            where,
            f"unknown operator {name!r}{hint(name, OPERATORS)}; operators: "
            + ", ".join(OPERATORS)
            + " (to compare with a mapping, write {eq: {...}})",
        )
        return _refuse


def _never(body: Mapping[str, Any]) -> bool:
    return False


def _refuse(value: Any) -> bool:
    return False


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda body: all(p(body) for p in parts)


def _any(parts: list[Predicate]) -> Predicate:
    return lambda body: any(p(body) for p in parts)


def compile_condition(
    spec: Any, where: str | KeyPath = "if", *, shape: Shape | None = EVENT_SHAPE
) -> Predicate:
    """Compile a rule's ``if`` into one predicate over an event's JSON.

    ``where`` is the key path of ``spec`` in the config (problems are reported under it).
    ``shape`` lists the fields paths may name (default: an event's; None: anything). Raises
    :class:`orchestrator.exceptions.InvalidConfig` with every problem found.
    """
    base: KeyPath = (where,) if isinstance(where, str) else tuple(where)
    compiler = _Compiler(shape)
    predicate = compiler.condition(spec, base)
    if compiler.problems:
        raise invalid(compiler.problems)
    return predicate
