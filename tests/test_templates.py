"""Templated ``with`` values: rendering against an event, native values, missing values,
load-time checks with key paths, and the sandbox."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2.exceptions import SecurityError

from orchestrator import config, exceptions, templates
from orchestrator.testing import make_event

EVENT = make_event(
    type="call.failed",
    call={"to": "+14155550100", "attempt": 2, "metadata": {"tier": "gold", "tags": ["a", "b"]}},
    error={"code": "SIP_503"},
    duration=12.5,
).to_json()


def render(value: Any, *, native: bool = True, body: dict[str, Any] = EVENT) -> Any:
    return templates.compile_value(value).render(body, native=native)


def load_problems(value: Any) -> list[str]:
    with pytest.raises(exceptions.InvalidConfig) as info:
        templates.compile_value(value, ("rules", 3, "with"))
    return [str(p) for p in info.value.problems]


def test_the_issue_example_renders() -> None:
    text = "Call to {{ call.to }} failed: {{ error.code }}"
    assert render({"text": text}) == {"text": "Call to +14155550100 failed: SIP_503"}


def test_values_that_are_not_templates_are_kept_as_they_are() -> None:
    value = {"delay": "10m", "n": 3, "flag": True, "none": None, "list": [1, "x"], "brace": "{x}"}
    compiled = templates.compile_value(value)
    assert not compiled.templated
    assert compiled.render(EVENT) == value


def test_one_expression_renders_to_its_native_value() -> None:
    assert render({"n": "{{ call.attempt + 1 }}"}) == {"n": 3}
    assert render({"d": "{{ duration }}"}) == {"d": 12.5}
    assert render({"m": "{{ call.metadata }}"}) == {"m": {"tier": "gold", "tags": ["a", "b"]}}
    assert render({"t": "{{ call.metadata.tags }}"}) == {"t": ["a", "b"]}
    assert render({"to": "{{ call.to }}"}) == {"to": "+14155550100"}  # never re-parsed
    assert render({"w": "{{- call.attempt -}}"}) == {"w": 2}
    assert render({"s": "attempt {{ call.attempt }}"}) == {"s": "attempt 2"}  # text: a string
    assert render({"two": "{{ call.attempt }}{{ call.attempt }}"}) == {"two": "22"}
    assert render({"n": "{{ call.attempt }}"}, native=False) == {"n": "2"}


def test_templates_render_through_mappings_and_lists() -> None:
    value = {"headers": {"x-to": "{{ call.to }}"}, "lines": ["{{ type }}", "fixed"], "k": 1}
    compiled = templates.compile_value(value, ("rules", 0, "with"))
    assert compiled.template_paths == (
        ("rules", 0, "with", "headers", "x-to"),
        ("rules", 0, "with", "lines", 0),
    )
    assert compiled.render(EVENT) == {
        "headers": {"x-to": "+14155550100"},
        "lines": ["call.failed", "fixed"],
        "k": 1,
    }
    assert compiled.static("?") == {"headers": {"x-to": "?"}, "lines": ["?", "fixed"], "k": 1}


def test_missing_values_render_as_empty_or_none() -> None:
    completed = make_event(type="call.completed").to_json()
    assert render({"t": "code={{ error.code }}"}, body=completed) == {"t": "code="}
    assert render({"t": "{{ error.code }}"}, body=completed) == {"t": None}
    assert render({"t": "{{ data.a.b.c }}"}, body=completed) == {"t": None}
    assert render({"t": "{{ error.code or status }}"}, body=completed) == {"t": "completed"}
    assert render({"t": "{{ call.metadata.tier | default('none') }}"}, body=completed) == {
        "t": "none"
    }


def test_computing_with_a_missing_value_fails_at_render_naming_the_key() -> None:
    compiled = templates.compile_value({"n": "{{ data.count + 1 }}"}, ("rules", 1, "with"))
    with pytest.raises(exceptions.RenderError, match=r"rules\[1\].with.n: cannot render"):
        compiled.render(EVENT)


def test_jinja_statements_and_filters_work() -> None:
    value = "{% for t in call.metadata.tags %}{{ t | upper }}{% if not loop.last %},{% endif %}{% endfor %}"
    assert render({"t": value}) == {"t": "A,B"}
    assert render({"t": "{{ call.to[-4:] }} {{ '%.1f' % duration }}"}) == {"t": "0100 12.5"}


def test_syntax_errors_are_reported_at_load_with_key_paths() -> None:
    found = load_problems({"text": "{{ call.to", "nested": {"x": ["ok", "{% if %}"]}})
    assert found == [
        "rules[3].with.text: template syntax error: unexpected end of template, "
        "expected 'end of print statement'. (line 1)",
        "rules[3].with.nested.x[1]: template syntax error: Expected an expression, "
        "got 'end of statement block' (line 1)",
    ]


def test_unknown_names_and_fields_are_reported_at_load() -> None:
    found = load_problems({"a": "{{ cal.to }}", "b": "{{ call.too }}", "c": "{{ call['attemt'] }}"})
    assert found[0].startswith(
        "rules[3].with.a: unknown name 'cal' (did you mean 'call'?); a template sees the "
        "event's fields: id, type, occurred_at, call,"
    )
    assert found[1:] == [
        "rules[3].with.b: no event has the field 'call.too' (did you mean 'call.to'?)",
        "rules[3].with.c: no event has the field 'call.attemt' (did you mean 'call.attempt'?)",
    ]
    # Open parts of the event, local names and Jinja's globals are fine.
    templates.compile_value(
        {"x": "{{ data.anything }}{{ call.metadata.x }}{% set y = 1 %}{{ y }}{{ range(2) }}"}
    )


def test_a_broken_template_does_not_hide_the_others_when_collecting() -> None:
    found: list[config.Problem] = []
    compiled = templates.compile_value(
        {"bad": "{{ x", "good": "{{ call.to }}"}, "with", problems=found
    )
    assert [str(p) for p in found] == [
        "with.bad: template syntax error: unexpected end of template, "
        "expected 'end of print statement'. (line 1)"
    ]
    assert compiled.static(0) == {"bad": 0, "good": 0}
    with pytest.raises(exceptions.RenderError, match="did not compile"):
        compiled.render(EVENT)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ call['__class__'] }}",
        "{{ call.to._formatter_parser }}",
    ],
)
def test_sandbox_escapes_are_refused_at_load(source: str) -> None:
    found = load_problems({"x": source})
    assert any("names that start with _ are unsafe" in p for p in found)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ call | attr('__class__') }}", "access to attribute '__class__' of 'dict'"),
        ("{{ call.to | attr('__cla' ~ 'ss__') }}", "access to attribute '__class__' of 'str'"),
        ("{{ lipsum | attr('__globals__') }}", "access to attribute '__globals__'"),
        ("{{ call.metadata.tags.append(1) }}", "access to attribute 'append' of 'list'"),
        ("{{ call.metadata.update({}) }}", "access to attribute 'update' of 'dict'"),
    ],
)
def test_sandbox_escapes_fail_safely_at_render(source: str, message: str) -> None:
    compiled = templates.compile_value({"x": source})
    with pytest.raises(exceptions.RenderError, match=f"SecurityError: {message}"):
        compiled.render(EVENT)
    with pytest.raises(exceptions.RenderError, match="SecurityError"):
        compiled.render(EVENT, native=False)
    assert EVENT["call"]["metadata"]["tags"] == ["a", "b"]  # nothing changed


@pytest.mark.parametrize(
    "source", ["{{ ''.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}"]
)
def test_the_sandbox_itself_refuses_dunders(source: str) -> None:
    # Behind the load-time check: the environment raises rather than rendering them.
    with pytest.raises(SecurityError):
        templates.ENV.from_string(source).render(EVENT)


def test_is_template() -> None:
    assert templates.is_template("{{ x }}") and templates.is_template("a {% if x %}b{% endif %}")
    assert templates.is_template("{# note #}")
    assert not templates.is_template("{x}") and not templates.is_template(5)
