"""Users' rule tests: ``orchestrator rules test FILE``, like ``promtool test rules``::

    config: orchestrator.yaml          # relative to this file
    env: {SLACK_WEBHOOK_URL: https://hooks.example.invalid/x}   # the only variables set
    tests:
      - name: gold failures go to ops
        event: {type: call.failed, call: {attempt: 2, metadata: {tier: gold}}, error: {code: X}}
        expect:                        # exactly these rules route it (in any order)
          - rule: tell ops about failed gold customers
            handler: ops               # optional: the instance it goes to
            with: {text: "Call to +14155550100 failed: X"}   # a subset of its options
      - name: completed calls are only audited
        event: {type: call.completed}
        expect: [{rule: audit everything}]

Each test's event (fields left out get :func:`orchestrator.testing.make_event`'s defaults) goes
through the compiled rules as the daemon routes it (``EventBus.route``); each matching route's
``with`` is rendered and validated, and compared with ``expect``: a ``with`` value matches if it
equals the rendered value or the plugin's validated one (so ``delay: 10m`` matches ``10m`` and
``600.0``). Only problems in ``plugins`` and ``rules`` fail the run: the config's other sections
are not checked here. A test whose event ``type`` no event has (``call.complete``, ``call.*``)
fails, with a did-you-mean as rules get. The environment is ``env`` alone (not the process's),
so the tests give the same result everywhere: a ``${VAR}`` used in ``plugins`` or ``rules``
must be set there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from orchestrator import bus, config, exceptions, rules
from orchestrator.conditions import equal
from orchestrator.config import Problem
from orchestrator.model import EVENT_TYPES, Event
from orchestrator.testing.events import make_event


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Expect(_Strict):
    rule: str
    handler: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class _Case(_Strict):
    name: str
    event: dict[str, Any]
    expect: list[_Expect]


class _TestFile(_Strict):
    config: str
    env: dict[str, str] = {}
    tests: list[_Case]


@dataclass
class RuleTestResult:
    """One test: whether it passed, and what differed (readable lines) if not."""

    name: str
    passed: bool
    diff: list[str] = field(default_factory=list)


@dataclass
class RuleTestRun:
    """A test file's run: ``problems`` (the file or the config is broken), or the results."""

    problems: list[str] = field(default_factory=list)
    results: list[RuleTestResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.passed for r in self.results)


def run_rule_tests(path: str | Path) -> RuleTestRun:
    """Run a rule test file (see the module's docstring)."""
    doc, problems = config.read(path, environ={}, interpolated=False)
    if doc is None:
        return RuleTestRun([str(p) for p in problems])
    try:
        spec = _TestFile.model_validate(doc.data)
    except ValidationError as exc:
        return RuleTestRun(
            [str(doc.locate(Problem(_loc(e), config.message(e)))) for e in exc.errors()]
        )
    config_path = Path(path).parent / spec.config
    loaded = rules.load(config_path, environ=spec.env, require_env=False)
    broken = [
        str(p)
        for p in sorted([*loaded.problems, *loaded.warnings], key=lambda p: p.position)
        if p.path is None or p.path[:1] in (("plugins",), ("rules",))
    ]
    if broken:
        return RuleTestRun(broken)
    event_bus = bus.EventBus(loaded.subscriptions)
    routes = {sub.name: sub for sub in loaded.subscriptions}
    run = RuleTestRun()

    for index, case in enumerate(spec.tests):
        diff: list[str] = []
        unknown = _unknown_type(case.event.get("type"), ("tests", index, "event", "type"))
        if unknown is not None:
            run.results.append(RuleTestResult(case.name, False, [str(doc.locate(unknown))]))
            continue
        try:
            event = make_event(**case.event)
        except (ValueError, TypeError) as exc:
            where = doc.locate(Problem(("tests", index, "event"), str(exc)))
            run.results.append(RuleTestResult(case.name, False, [str(where)]))
            continue
        got = event_bus.route(event)
        wanted = [e.rule for e in case.expect]
        missing = [name for name in wanted if name not in got]
        extra = [name for name in got if name not in wanted]
        if missing or extra:
            diff.append(f"expected rules: {_names(wanted)}")
            diff.append(f"routed to:      {_names(got)}")
            diff += [f"  - {name} (expected, did not match)" for name in missing]
            diff += [f"  + {name} (matched, not expected)" for name in extra]
        for expect in case.expect:
            if expect.rule in got:
                diff += _check(routes[expect.rule], expect, event)
        run.results.append(RuleTestResult(case.name, not diff, diff))
    return run


def _unknown_type(type_: Any, where: config.KeyPath) -> Problem | None:
    """The problem with a test event's ``type`` if no event can have it: a type the
    orchestrator does not emit (told as rules tell an unknown ``on``, with a did-you-mean), a
    pattern (``call.*``), or a plugin's type not of the form ``plugin.<instance>.<name>``.
    None if it is fine, or left out (the default type is used)."""
    if not isinstance(type_, str):
        return None  # make_event reports it
    if type_.startswith("plugin."):
        if _PLUGIN_TYPE.fullmatch(type_):
            return None
        return Problem(where, f"a plugin's event type is plugin.<instance>.<name>, not {type_!r}")
    if type_ in EVENT_TYPES:
        return None
    problems = rules.pattern_problems(type_, where)
    if problems:
        return problems[0]
    return Problem(where, f"an event's type is not a pattern: {type_!r}")


_PLUGIN_TYPE = re.compile(r"plugin\.[^.\s]+\.[^\s]+")


def _loc(error: Any) -> config.KeyPath:
    return tuple(p for p in error["loc"] if isinstance(p, str | int))


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) or "(none)"


def _check(sub: bus.Subscription, expect: _Expect, event: Event) -> list[str]:
    """How the route's handler and options differ from ``expect`` (nothing if they match)."""
    out = []
    if expect.handler is not None and expect.handler != sub.target:
        out.append(f"{sub.name}: handler: expected {expect.handler!r}, got {sub.target!r}")
    if not expect.with_:
        return out
    try:
        validated = _plain(sub.options(event))
        rendered = sub.options.merged(event) if isinstance(sub.options, rules.RouteOptions) else {}
    except exceptions.ConfigError as exc:
        return [*out, f"{sub.name}: with: {exc.message}"]
    for key, want in expect.with_.items():
        candidates = [c[key] for c in (rendered, validated) if key in c]
        if not any(_subset(want, c) for c in candidates):
            shown = " / ".join(dict.fromkeys(repr(c) for c in candidates)) or "(not set)"
            out.append(f"{sub.name}: with.{key}: expected {want!r}, got {shown}")
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _subset(want: Any, got: Any) -> bool:
    """``want`` matches ``got``: mappings by their keys (recursively), the rest by equality."""
    if isinstance(want, Mapping):
        return isinstance(got, Mapping) and all(
            k in got and _subset(v, got[k]) for k, v in want.items()
        )
    return equal(want, _plain(got))
