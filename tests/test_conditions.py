"""Rule conditions: every operator, the combinators, config errors with key paths, and
properties over random events and random conditions (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import exceptions
from orchestrator.conditions import (
    EVENT_SHAPE,
    MISSING,
    compile_condition,
    equal,
    resolve,
)
from orchestrator.testing import make_event

GOLD = make_event(
    type="call.failed",
    call={"attempt": 2, "metadata": {"tier": "gold", "score": 7.5}, "campaign": None},
    error={"code": "SIP_503", "message": "busy here"},
    data={"items": [{"sku": "a"}, {"sku": "b"}], "flag": True},
).to_json()


def holds(spec: Any, body: Any = GOLD) -> bool:
    return compile_condition(spec)(body)


def problems(spec: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(exceptions.InvalidConfig) as info:
        compile_condition(spec, **kwargs)
    return [str(p) for p in info.value.problems]


# -- operators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"status": "failed"}, True),
        ({"status": {"eq": "failed"}}, True),
        ({"status": {"ne": "failed"}}, False),
        ({"call.attempt": 2}, True),
        ({"call.attempt": 2.0}, True),  # JSON numbers
        ({"call.attempt": "2"}, False),  # not a string
        ({"data.flag": True}, True),
        ({"data.flag": 1}, False),  # a boolean equals only a boolean
        ({"call.campaign": None}, True),  # null is a value
        ({"call.metadata.tier": {"in": ["gold", "platinum"]}}, True),
        ({"call.metadata.tier": {"not_in": ["gold", "platinum"]}}, False),
        ({"call.attempt": {"gte": 2}}, True),
        ({"call.attempt": {"gt": 2}}, False),
        ({"call.attempt": {"lt": 2.5}}, True),
        ({"call.attempt": {"lte": 1}}, False),
        ({"call.metadata.score": {"gt": 7, "lt": 8}}, True),  # several operators: all
        ({"call.to": {"gte": "+1"}}, True),  # strings compare as strings
        ({"call.attempt": {"gte": "1"}}, False),  # a number and a string: incomparable
        ({"error.code": {"matches": "^SIP_5"}}, True),
        ({"error.message": {"matches": "here$"}}, True),
        ({"call.attempt": {"matches": "2"}}, False),  # not a string
        ({"error.code": {"exists": True}}, True),
        ({"error.nothing": {"exists": False}}, True),
        ({"call.campaign": {"exists": True}}, False),  # null counts as absent
        ({"data.items.1.sku": "b"}, True),  # list indices
        ({"data.items.2.sku": {"exists": False}}, True),
        ({"data.items.x": {"exists": True}}, False),
    ],
)
def test_operators(spec: dict[str, Any], expected: bool) -> None:
    assert holds(spec) is expected


@pytest.mark.parametrize("op", ["eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "matches"])
def test_a_matcher_on_an_absent_path_is_false(op: str) -> None:
    operand: Any = {"in": ["x"], "not_in": ["x"], "matches": "x"}.get(op, 1)
    assert holds({"data.absent": {op: operand}}) is False
    assert holds({"error.code.deeper": {op: operand}}) is False  # through a string


def test_a_path_through_null_is_absent() -> None:
    body = make_event(type="call.completed").to_json()
    assert body["error"] is None
    assert holds({"error.code": {"exists": False}}, body)
    assert not holds({"error.code": {"ne": "X"}}, body)
    assert holds({"not": {"error.code": "X"}}, body)  # the way to say "not X or absent"


def test_combinators() -> None:
    assert holds({"all": [{"status": "failed"}, {"call.attempt": 2}]})
    assert not holds({"all": [{"status": "failed"}, {"call.attempt": 3}]})
    assert holds({"any": [{"status": "completed"}, {"call.attempt": 2}]})
    assert not holds({"any": [{"status": "completed"}, {"call.attempt": 3}]})
    assert holds({"any": {"status": "completed", "call.attempt": 2}})  # a mapping: each entry
    assert not holds({"all": {"status": "completed", "call.attempt": 2}})
    assert holds({"not": {"status": "completed"}})
    assert not holds({"not": [{"status": "failed"}, {"call.attempt": 2}]})  # not (a and b)
    assert holds([{"status": "failed"}, {"call.attempt": 2}])  # a list: all of them
    assert holds({"all": []}) and not holds({"any": []})
    nested = {"any": [{"all": [{"status": "failed"}, {"not": {"call.attempt": 1}}]}, {"x.y": 1}]}
    assert compile_condition(nested, shape=None)(GOLD)


def test_the_issue_example() -> None:
    spec = {"call.metadata.tier": {"in": ["gold", "platinum"]}, "call.attempt": {"gte": 2}}
    assert holds(spec)
    first = make_event(type="call.failed", call={"metadata": {"tier": "gold"}}).to_json()
    assert not holds(spec, first)
    silver = make_event(type="call.failed", call={"attempt": 3, "metadata": {"tier": "silver"}})
    assert not holds(spec, silver.to_json())


def test_evaluation_is_safe_on_odd_bodies() -> None:
    predicate = compile_condition({"a.b": {"gt": 1}, "a.c": {"in": [1]}}, shape=None)
    for body in [{}, {"a": None}, {"a": "text"}, {"a": [1, 2]}, {"a": {"b": math.nan}}, []]:
        assert predicate(body) is False


# -- config errors -----------------------------------------------------------------------


def test_every_problem_is_reported_with_its_key_path() -> None:
    found = problems(
        {
            "call.metadata.tier": {"in": "gold"},
            "call.attempt": {"gte": [2]},
            "error.code": {"matches": "("},
            "status": {"equals": "failed"},
            "call.atempt": 2,
            "data.x": {"exists": "yes"},
            "any": [{"call.to": {"matches": 5}}, "oops"],
            "not": 3,
            "a..b": 1,
            "data.y": {},
        },
        where=("rules", 2, "if"),
    )
    assert found == [
        "rules[2].if['call.metadata.tier'].in: in takes a list of values, not a string",
        "rules[2].if['call.attempt'].gte: gte takes a number or a string, not a list",
        "rules[2].if['error.code'].matches: invalid regular expression '(': "
        "missing ), unterminated subpattern at position 0",
        "rules[2].if.status.equals: unknown operator 'equals'; operators: eq, ne, in, not_in, "
        "lt, lte, gt, gte, matches, exists (to compare with a mapping, write {eq: {...}})",
        "rules[2].if['call.atempt']: no event has the field 'call.atempt' "
        "(did you mean 'call.attempt'?)",
        "rules[2].if['data.x'].exists: exists takes true or false, not a string",
        "rules[2].if.any[0]['call.to'].matches: matches takes a regular expression string, "
        "not a number",
        "rules[2].if.any[1]: expected a mapping of paths to matchers (or all/any/not), "
        "not a string",
        "rules[2].if.not: expected a mapping of paths to matchers (or all/any/not), not a number",
        "rules[2].if['a..b']: not a dotted path: 'a..b'",
        "rules[2].if['data.y']: an empty matcher: give an operator, e.g. {eq: VALUE}",
    ]


def test_a_close_operator_is_suggested() -> None:
    [found] = problems({"status": {"not_inn": ["x"]}})
    assert "unknown operator 'not_inn' (did you mean 'not_in'?)" in found


def test_unknown_top_level_fields_are_caught_but_open_ones_are_not() -> None:
    [found] = problems({"stauts": "failed"})
    assert found == "if.stauts: no event has the field 'stauts' (did you mean 'status'?)"
    compile_condition({"data.anything.at.all": 1, "call.metadata.x": 1, "error.code": 1})


def test_the_error_is_a_config_error() -> None:
    with pytest.raises(
        exceptions.InvalidConfig, match=r"if.status.lt: lt takes a number or a string"
    ):
        compile_condition({"status": {"lt": None}})


def test_event_shape_matches_the_event_json() -> None:
    body = make_event().to_json()
    assert set(EVENT_SHAPE) == set(body)
    call_shape = EVENT_SHAPE["call"]
    assert call_shape is not None and set(call_shape) == set(body["call"])


def test_resolve_and_equal() -> None:
    assert resolve({"a": [{"b": 1}]}, ["a", "0", "b"]) == 1
    assert resolve({"a": [1]}, ["a", "5"]) is MISSING
    assert resolve({"a": [1]}, ["a", "-1"]) is MISSING
    assert resolve({"a": [1]}, ["a", "²"]) is MISSING
    assert equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not equal(True, 1) and not equal(0, False) and not equal("1", 1)
    assert not equal([1], (1, 2)) and not equal({"a": 1}, {"b": 1})


# -- properties --------------------------------------------------------------------------

KEYS = ["a", "b", "c", "0", "1"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5)
paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
operands = {
    "eq": json_values,
    "ne": json_values,
    "in": st.lists(scalars, max_size=4),
    "not_in": st.lists(scalars, max_size=4),
    "lt": st.integers() | st.floats(allow_nan=True) | st.text(max_size=3),
    "lte": st.integers() | st.floats() | st.text(max_size=3),
    "gt": st.integers() | st.floats() | st.text(max_size=3),
    "gte": st.integers() | st.floats(allow_nan=True) | st.text(max_size=3),
    "matches": st.sampled_from(["", "a", "^x", "[0-9]+", "(a|b)*c$"]),
    "exists": st.booleans(),
}
matchers = st.sampled_from(sorted(operands)).flatmap(
    lambda op: operands[op].map(lambda operand: {op: operand})
)
leaves = st.builds(lambda path, matcher: {path: matcher}, paths, matchers | scalars)
conditions = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: {"all": items})
        | st.lists(inner, max_size=3).map(lambda items: {"any": items})
        | inner.map(lambda item: {"not": item})
        | st.lists(inner, min_size=1, max_size=3)
    ),
    max_leaves=8,
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(spec: Any, body: Any) -> bool:
    return compile_condition(spec, shape=None)(body)


@PROPERTY
@given(conditions, bodies)
def test_evaluation_never_raises_and_returns_a_bool(spec: Any, body: dict[str, Any]) -> None:
    assert check(spec, body) in (True, False)


@PROPERTY
@given(conditions, bodies)
def test_not_inverts(spec: Any, body: dict[str, Any]) -> None:
    assert check({"not": spec}, body) is (not check(spec, body))


@PROPERTY
@given(st.lists(conditions, max_size=4), bodies)
def test_all_and_any_agree_with_python(specs: list[Any], body: dict[str, Any]) -> None:
    each = [check(s, body) for s in specs]
    assert check({"all": specs}, body) is all(each)
    assert check({"any": specs}, body) is any(each)


@PROPERTY
@given(paths, st.lists(scalars, max_size=4), bodies)
def test_in_and_not_in_are_complementary_when_the_path_exists(
    path: str, values: list[Any], body: dict[str, Any]
) -> None:
    inside = check({path: {"in": values}}, body)
    outside = check({path: {"not_in": values}}, body)
    if resolve(body, path.split(".")) is MISSING:
        assert not inside and not outside
    else:
        assert inside is not outside


@PROPERTY
@given(paths, json_values, bodies)
def test_eq_and_ne(path: str, value: Any, body: dict[str, Any]) -> None:
    if isinstance(value, dict):
        return  # a bare mapping is a matcher, not a value
    bare = check({path: value}, body)
    assert bare is check({path: {"eq": value}}, body)
    if resolve(body, path.split(".")) is not MISSING:
        assert bare is not check({path: {"ne": value}}, body)


@PROPERTY
@given(paths, st.integers() | st.floats(allow_nan=False) | st.text(max_size=3), bodies)
def test_lt_and_gte_split_comparable_values(path: str, operand: Any, body: dict[str, Any]) -> None:
    value = resolve(body, path.split("."))
    below = check({path: {"lt": operand}}, body)
    above = check({path: {"gte": operand}}, body)
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (value, operand))
    comparable = (numbers and not (isinstance(value, float) and math.isnan(value))) or (
        isinstance(value, str) and isinstance(operand, str)
    )
    if comparable:
        assert below is not above
    else:
        assert not below and not above
