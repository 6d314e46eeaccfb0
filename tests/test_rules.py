"""Rules and plugin instances: routes with conditions and rendered options, every problem at
once, the full loader, the schema and catalog, make_event, and the rule test runner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import pytest
from orchestrator_plugins.http import HttpHandler
from orchestrator_plugins.log import LogHandler
from pydantic import Field, model_validator

from orchestrator import bus, config, exceptions, plugin, rules, testing
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.daemon import delivery
from orchestrator.model import NewCall
from orchestrator.store import Store
from orchestrator.testing import make_event


class NoteOptions(plugin.Options):
    text: str = ""
    level: Literal["info", "warning"] = "info"
    count: int = Field(default=1, description="how many")
    headers: dict[str, str] = {}
    delay: config.Duration = 0.0


class Note:
    """Record what it is given."""

    type_name: ClassVar[str] = "note"
    options_model: ClassVar[type[plugin.Options]] = NoteOptions
    built: ClassVar[list[str]] = []

    def __init__(self, name: str, options: NoteOptions) -> None:
        Note.built.append(name)
        self.name = name
        self.options = options
        self.seen: list[tuple[str, plugin.Options]] = []

    async def handle(self, event: Any, ctx: plugin.Context) -> None:
        self.seen.append((event.type, ctx.options))


class RetryOptions(plugin.Options):
    delay: config.Duration = 600.0
    backoff: float = Field(default=2.0, ge=1)
    max_attempts: int = 3


class Retry(Note):
    type_name: ClassVar[str] = "retry"
    options_model: ClassVar[type[plugin.Options]] = RetryOptions


class SlackOptions(plugin.Options):
    webhook_url: str
    text: str | None = None


class Slack(Note):
    type_name: ClassVar[str] = "slack"
    options_model: ClassVar[type[plugin.Options]] = SlackOptions


class PickyOptions(plugin.Options):
    mode: str = "a"

    @model_validator(mode="after")
    def _known(self) -> PickyOptions:
        if self.mode not in ("a", "b"):
            raise ValueError("mode must be a or b")
        return self


class Picky(Note):
    type_name: ClassVar[str] = "picky"
    options_model: ClassVar[type[plugin.Options]] = PickyOptions

    def __init__(self, name: str, options: PickyOptions) -> None:
        if options.mode == "b":
            raise RuntimeError("b is not ready")
        super().__init__(name, options)  # type: ignore[arg-type]


TYPES: dict[str, plugin.PluginType] = {
    "note": Note,
    "retry": Retry,
    "slack": Slack,
    "picky": Picky,
    "http": HttpHandler,
    "log": LogHandler,
}

ISSUE_PLUGINS = {
    "audit": {"use": "http", "url": "https://example.com/hooks/calls", "secret": ""},
    "ops": {"use": "slack", "webhook_url": "https://hooks.example.invalid/x"},
}
ISSUE_RULES = [
    {
        "name": "retry busy or unanswered",
        "on": ["call.busy", "call.no_answer"],
        "do": "retry",
        "with": {"delay": "10m", "backoff": 2, "max_attempts": 3},
    },
    {"name": "audit everything", "on": "call.*", "do": "audit"},
    {
        "name": "tell ops about failed gold customers",
        "on": ["call.failed", "call.rejected", "call.timed_out"],
        "if": {"call.metadata.tier": {"in": ["gold", "platinum"]}, "call.attempt": {"gte": 2}},
        "do": "ops",
        "with": {"text": "Call to {{ call.to }} failed: {{ error.code }}"},
    },
]


def build(plugins: Any, rules_: Any) -> tuple[list[bus.Subscription], list[str]]:
    subs, problems = rules.build(plugins, rules_, TYPES)
    return subs, [str(p) for p in problems]


def by_name(subs: list[bus.Subscription]) -> dict[str, bus.Subscription]:
    return {s.name: s for s in subs}


def test_the_issue_example_routes_and_renders() -> None:
    subs, problems = build(ISSUE_PLUGINS, ISSUE_RULES)
    assert problems == []
    routes = by_name(subs)
    event_bus = bus.EventBus(subs)
    assert event_bus.route(make_event(type="call.busy")) == [
        "retry busy or unanswered",
        "audit everything",
    ]
    first = make_event(type="call.failed", call={"metadata": {"tier": "gold"}})
    assert event_bus.route(first) == ["audit everything"]
    gold = make_event(
        type="call.failed", call={"attempt": 2, "metadata": {"tier": "gold"}}, error={"code": "X"}
    )
    assert event_bus.route(gold) == ["audit everything", "tell ops about failed gold customers"]
    ops = routes["tell ops about failed gold customers"]
    options = ops.options(gold)
    assert isinstance(options, SlackOptions)
    assert options.text == "Call to +14155550100 failed: X"
    assert options.webhook_url == "https://hooks.example.invalid/x"  # the instance's
    retry = routes["retry busy or unanswered"].options(make_event(type="call.busy"))
    assert retry == RetryOptions(delay=600.0, backoff=2, max_attempts=3)
    assert routes["retry busy or unanswered"].target == "retry"  # a type used as is
    assert routes["audit everything"].policy == rules.DeliveryOptions().policy()


def test_instances_are_built_once_and_shared_by_their_rules() -> None:
    Note.built.clear()
    subs, problems = build(
        {"n": {"use": "note", "delivery": {"concurrency": 2}}, "unused": {"use": "note"}},
        [
            {"name": "a", "on": "call.completed", "do": "n"},
            {"name": "b", "on": "call.failed", "do": "n", "with": {"text": "x"}},
            {"name": "c", "on": "call.failed", "do": "note"},
            {"name": "d", "on": "call.busy", "do": "note"},
        ],
    )
    assert problems == []
    assert sorted(Note.built) == ["n", "note", "unused"]
    routes = by_name(subs)
    assert routes["a"].handler is routes["b"].handler
    assert routes["c"].handler is routes["d"].handler is not routes["a"].handler
    assert routes["a"].policy.concurrency == 2


def test_options_without_templates_are_validated_once() -> None:
    subs, _ = build(
        {"n": {"use": "note", "text": "base", "count": 5, "headers": {"a": "1"}}},
        [{"name": "r", "on": "call.*", "do": "n", "with": {"text": "rule", "headers": {"b": "2"}}}],
    )
    [route] = subs
    first = route.options(make_event())
    assert first is route.options(make_event(type="call.failed"))
    # The rule's top-level keys replace the instance's (no deep merge).
    assert first == NoteOptions(text="rule", count=5, headers={"b": "2"})


def test_templated_options_render_per_event() -> None:
    subs, problems = build(
        {"n": {"use": "note", "text": "base"}},
        [
            {
                "name": "r",
                "on": "call.*",
                "do": "n",
                "with": {
                    "count": "{{ call.attempt * 10 }}",
                    "text": "{{ call.attempt }}",  # a number where a string is wanted
                    "headers": {"x-type": "{{ type }}"},
                    "delay": "{{ data.wait or '1m' }}",
                },
            }
        ],
    )
    assert problems == []
    [route] = subs
    options = route.options(make_event(type="call.busy", call={"attempt": 3}))
    assert options == NoteOptions(text="3", count=30, headers={"x-type": "call.busy"}, delay=60)
    assert route.options(make_event(data={"wait": 5})).delay == 5.0  # type: ignore[attr-defined]


def test_options_that_cannot_be_rendered_or_validated_raise_a_config_error() -> None:
    subs, problems = build(
        {"n": {"use": "note"}},
        [
            {"name": "bad count", "on": "call.*", "do": "n", "with": {"count": "{{ call.id }}"}},
            {"name": "bad sum", "on": "call.*", "do": "n", "with": {"text": "{{ data.n + 1 }}"}},
        ],
    )
    assert problems == []  # both may be right for some event
    routes = by_name(subs)
    with pytest.raises(exceptions.RenderError) as info:
        routes["bad count"].options(make_event())
    assert info.value.rule == "bad count" and info.value.plugin == "n"
    assert "with.count: Input should be a valid integer" in info.value.message
    with pytest.raises(exceptions.RenderError, match=r"rules\[1\].with.text: cannot render"):
        routes["bad sum"].options(make_event())
    assert routes["bad sum"].options(make_event(data={"n": 1})).text == "2"  # type: ignore[attr-defined]


def test_with_values_are_checked_at_load_except_templates() -> None:
    _, problems = build(
        {"n": {"use": "note"}},
        [
            {
                "name": "r",
                "on": "call.*",
                "do": "n",
                "with": {
                    "colour": "red",
                    "count": "many",
                    "level": "{{ status }}",  # known per event only
                    "extra": "{{ status }}",  # but an unknown key is unknown anyway
                    "headers": {"a": "{{ call.id }}", "b": 5},
                },
            },
            {"name": "p", "on": "call.*", "do": "picky", "with": {"mode": "c"}},
        ],
    )
    assert problems == [
        "rules[0].with.count: Input should be a valid integer, unable to parse string as an integer",
        "rules[0].with.headers.b: Input should be a valid string",
        "rules[0].with.colour: unknown key",
        "rules[0].with.extra: unknown key",
        "rules[1].with: mode must be a or b",
    ]


def test_every_problem_is_collected_and_valid_rules_still_load() -> None:
    subs, problems = build(
        {
            "bad": {"use": "htp"},
            "nouse": {"url": "x"},
            "worse": {"use": "slack", "webhook_url": 5, "delivery": {"timeout": "soon"}},
            "refuses": {"use": "picky", "mode": "b"},
            "notamapping": "slack",
        },
        [
            {"name": "good", "on": "call.completed", "do": "note"},
            {"name": "uses bad", "on": "call.completed", "do": "bad"},
            {"name": "typo", "on": ["call.complete", "call.*"], "do": "nte", "colour": 1},
            {"name": "good", "on": "call.failed", "do": "note"},
            {"name": "needs options", "on": "call.failed", "do": "slack"},
            {"name": "empty", "on": [], "do": "note"},
            "not a rule",
            {"name": "uses refuses", "on": "call.failed", "do": "refuses"},
            {"on": "call.failed", "do": "note", "if": {"status": {"in": 1}}, "with": {"x": "{{"}},
        ],
    )
    assert [s.name for s in subs] == ["good"]
    assert problems == [
        "plugins.bad.use: unknown plugin type 'htp' (did you mean 'http'?); "
        "installed: http, log, note, picky, retry, slack",
        "plugins.nouse.use: required key is missing (the plugin type: "
        "http, log, note, picky, retry, slack)",
        "plugins.worse.webhook_url: Input should be a valid string",
        "plugins.worse.delivery.timeout: not a duration: 'soon' (use e.g. 500ms, 10s, 30m, 1h)",
        "plugins.refuses: the picky plugin refused its options: RuntimeError: b is not ready",
        "plugins.notamapping: an instance must be a mapping {use: TYPE, ...options}",
        "rules[2].colour: unknown key",
        "rules[2].on[0]: unknown event type 'call.complete' (did you mean 'call.completed'?)",
        "rules[3].name: another rule is named 'good'",
        "rules[4].do: the slack plugin needs options (webhook_url: required key is missing): "
        "declare an instance under plugins: (e.g. my_slack: {use: slack, ...}) and use its name",
        "rules[5].on: at least one event type pattern is needed",
        "rules[6]: a rule must be a mapping {name, on, do, if?, with?}",
        "rules[8].name: required key is missing",
        "rules[8].if.status.in: in takes a list of values, not a number",
        "rules[8].with.x: template syntax error: unexpected 'end of template' (line 1)",
    ]


def test_shapes_of_the_sections() -> None:
    assert build(["x"], None)[1] == [
        "plugins: must be a mapping of instance names to {use: TYPE, ...}"
    ]
    assert build(None, {"a": 1})[1] == ["rules: must be a list of rules"]
    assert build({}, []) == ([], [])


def test_subscriptions_keeps_its_string_problems() -> None:
    subs, problems = rules.subscriptions(ISSUE_PLUGINS, [*ISSUE_RULES, {"name": "x"}], TYPES)
    assert len(subs) == 3
    assert problems == [
        "rules[3].on: required key is missing",
        "rules[3].do: required key is missing",
    ]


def test_plugin_patterns_and_wildcards_are_known() -> None:
    _, problems = build(
        {}, [{"name": "p", "on": ["plugin.ops.sent", "*", "delivery.*"], "do": "note"}]
    )
    assert problems == []


async def test_a_rule_delivers_rendered_options_through_the_bus(tmp_path: Path) -> None:
    store = Store(SQLiteConnector(f"sqlite://{tmp_path}/rules.db"))
    await store.open()
    subs, problems = build(
        {"n": {"use": "note", "level": "warning"}},
        [
            {
                "name": "gold queued",
                "on": "call.queued",
                "if": {"call.metadata.tier": "gold"},
                "do": "n",
                "with": {"text": "queued {{ call.to }} ({{ call.metadata.tier }})"},
            }
        ],
    )
    assert problems == []
    event_bus = bus.EventBus(subs)
    store.router = event_bus.route
    http = httpx.AsyncClient()
    workers = delivery.workers(event_bus, store, "owner", http)
    for worker in workers:
        worker.poll = 0.05
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await store.create_call(NewCall(to="+14155550111", from_="+16045551234"))
        await store.create_call(
            NewCall(to="+14155550122", from_="+16045551234", metadata={"tier": "gold"})
        )
        note = subs[0].handler
        assert isinstance(note, Note)
        for _ in range(200):
            if note.seen:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert note.seen == [
            ("call.queued", NoteOptions(text="queued +14155550122 (gold)", level="warning"))
        ]
    finally:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(w.stop(loop.time() + 1) for w in workers))
        await asyncio.wait(tasks, timeout=2)
        await http.aclose()
        await store.close()


# -- the full loader ---------------------------------------------------------------------

CONFIG = """\
magpipe: {token: "${TOKEN}"}
plugins:
  ops: {use: slack, webhook_url: "${HOOK}"}
  audit: {use: http, url: "https://example.com/x"}
rules:
  - {name: audit, on: call.*, do: audit}
  - name: ops
    on: call.failed
    if: {call.attempt: {gte: 2}}
    do: ops
    with: {text: "{{ call.to }}"}
"""


def test_load_returns_the_config_routes_and_counts() -> None:
    loaded = rules.load("c.yaml", text=CONFIG, types=TYPES, environ={"TOKEN": "t", "HOOK": "h"})
    assert loaded.ok and loaded.problems == [] and loaded.warnings == []
    assert loaded.config is not None and loaded.config.magpipe.token.get_secret_value() == "t"
    assert [s.name for s in loaded.subscriptions] == ["audit", "ops"]
    assert (loaded.plugins, loaded.rules) == (2, 2)


def test_load_reports_unset_variables_as_problems_or_warnings() -> None:
    strict = rules.load("c.yaml", text=CONFIG, types=TYPES, environ={})
    assert [str(p) for p in strict.problems] == [
        "c.yaml:1:11 magpipe.token: environment variable TOKEN is not set",
        "c.yaml:3:21 plugins.ops.webhook_url: environment variable HOOK is not set",
    ]
    assert not strict.ok
    with pytest.raises(exceptions.InvalidConfig, match=r"2 problem\(s\) in c.yaml"):
        raise strict.error()
    lenient = rules.load("c.yaml", text=CONFIG, types=TYPES, environ={}, require_env=False)
    assert lenient.ok and len(lenient.warnings) == 2


def test_problems_caused_by_an_unset_variable_are_not_reported_twice() -> None:
    text = "magpipe: {token: t, base_url: '${URL}'}\nplugins: {h: {use: note, count: '${N}'}}\n"
    loaded = rules.load("c.yaml", text=text, types=TYPES, environ={}, require_env=False)
    assert loaded.problems == []
    assert [p.message for p in loaded.warnings] == [
        "environment variable URL is not set",
        "environment variable N is not set",
    ]
    assert loaded.config is None  # base_url '' is not a URL: the daemon would not start


def test_load_of_an_unreadable_file(tmp_path: Path) -> None:
    loaded = rules.load(tmp_path / "absent.yaml", types=TYPES)
    assert not loaded.ok and "cannot read" in str(loaded.problems[0])


# -- schema and catalog ------------------------------------------------------------------


def test_schema_lists_each_plugin_type_under_plugins() -> None:
    schema = rules.schema({"note": Note, "http": HttpHandler})
    plugins = schema["properties"]["plugins"]["additionalProperties"]
    assert plugins["discriminator"]["mapping"] == {
        "http": "#/$defs/plugin.http",
        "note": "#/$defs/plugin.note",
    }
    note = schema["$defs"]["plugin.note"]
    assert note["properties"]["use"] == {"const": "note", "description": "The plugin type (note)."}
    assert {"text", "level", "count", "delivery"} <= set(note["properties"])
    assert note["required"] == ["use"] and note["additionalProperties"] is False
    assert schema["$defs"]["plugin.http"]["required"] == ["use", "url"]
    rule = schema["$defs"]["Rule"]
    assert {"name", "on", "if", "do", "with"} == set(rule["properties"])
    assert schema["properties"]["rules"]["items"] == {"$ref": "#/$defs/Rule"}
    assert "magpipe" in schema["required"]
    timeout = schema["$defs"]["MagpipeSettings"]["properties"]["timeout"]
    assert {"type": "number", "minimum": 0} in timeout["anyOf"]  # durations: numbers or "10s"


def test_catalog_describes_options() -> None:
    [note] = rules.catalog({"note": Note})
    assert note["type"] == "note" and note["description"] == "Record what it is given."
    options = {o["name"]: o for o in note["options"]}
    assert options["count"] == {
        "name": "count",
        "type": "int",
        "required": False,
        "default": 1,
        "description": "how many",
    }
    assert options["level"]["type"] == "Literal['info', 'warning']"
    assert options["headers"]["type"] == "dict[str, str]"
    assert options["delay"]["type"] == "duration"
    [slack] = rules.catalog({"slack": Slack})
    assert slack["options"][0] == {
        "name": "webhook_url",
        "type": "str",
        "required": True,
        "default": None,
        "description": "",
    }


# -- make_event --------------------------------------------------------------------------


def test_make_event_defaults_and_overrides() -> None:
    event = make_event()
    assert (event.type, event.status, event.call.to, event.call.attempt) == (
        "call.completed",
        "completed",
        "+14155550100",
        1,
    )
    assert event.to_json()["occurred_at"] == "2024-01-01T00:00:00.000Z"
    failed = make_event(
        type="call.failed",
        call={"from": "+16045559999", "metadata": {"tier": "gold"}},
        error={"code": "X"},
        occurred_at="2025-05-01T12:00:00Z",
    )
    assert failed.status == "failed" and failed.call.from_ == "+16045559999"
    assert failed.call.metadata == {"tier": "gold"} and failed.error == {"code": "X"}
    assert make_event(type="call.retry_scheduled").status is None
    assert make_event(type="plugin.ops.sent", status="x").status == "x"
    assert make_event(call={"from_": "+1"}).call.from_ == "+1"


def test_make_event_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown event field"):
        make_event(colour="red")
    with pytest.raises(ValueError, match=r"unknown call field.*tier"):
        make_event(call={"tier": "gold"})


# -- the rule test runner ----------------------------------------------------------------

CONFIG_FOR_TESTS = """\
magpipe: {token: "${MAGPIPE_TOKEN}"}
plugins:
  audit: {use: http, url: "${AUDIT_URL}"}
  ops: {use: log, level: info}
rules:
  - {name: audit everything, on: call.*, do: audit}
  - name: warn about gold failures
    on: [call.failed]
    if: {call.metadata.tier: gold}
    do: ops
    with: {level: warning}
  - name: header
    on: call.completed
    do: audit
    with: {headers: {x-to: "{{ call.to }}"}}
"""


def write_tests(tmp_path: Path, tests: str, cfg: str = CONFIG_FOR_TESTS) -> Path:
    (tmp_path / "orchestrator.yaml").write_text(cfg)
    path = tmp_path / "rules.test.yaml"
    path.write_text(tests)
    return path


def test_rule_tests_that_pass(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        """\
config: orchestrator.yaml
env: {AUDIT_URL: "https://audit.example.invalid/x"}
tests:
  - name: gold failures warn
    event: {type: call.failed, call: {metadata: {tier: gold}}}
    expect:
      - {rule: warn about gold failures, handler: ops, with: {level: warning}}
      - {rule: audit everything, with: {url: "https://audit.example.invalid/x"}}
  - name: completed calls carry a header
    event: {type: call.completed, call: {to: "+14155550199"}}
    expect:
      - {rule: header, with: {headers: {x-to: "+14155550199"}}}
      - {rule: audit everything}
  - name: nothing for plugin events
    event: {type: plugin.x.y}
    expect: []
""",
    )
    run = testing.run_rule_tests(path)
    assert run.problems == []
    assert [(r.name, r.passed, r.diff) for r in run.results] == [
        ("gold failures warn", True, []),
        ("completed calls carry a header", True, []),
        ("nothing for plugin events", True, []),
    ]
    assert run.ok


def test_rule_tests_that_fail_show_a_readable_diff(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        """\
config: orchestrator.yaml
env: {AUDIT_URL: "https://audit.example.invalid/x"}
tests:
  - name: wrong routes
    event: {type: call.failed, call: {metadata: {tier: silver}}}
    expect:
      - {rule: warn about gold failures}
  - name: wrong options
    event: {type: call.completed}
    expect:
      - {rule: header, handler: ops, with: {headers: {x-to: "+1"}}}
      - {rule: audit everything, with: {nothing: 1}}
  - name: bad event
    event: {type: call.failed, colour: red}
    expect: []
""",
    )
    run = testing.run_rule_tests(path)
    assert not run.ok
    routes, options, bad = run.results
    assert routes.diff == [
        "expected rules: 'warn about gold failures'",
        "routed to:      'audit everything'",
        "  - warn about gold failures (expected, did not match)",
        "  + audit everything (matched, not expected)",
    ]
    assert options.diff == [
        "header: handler: expected 'ops', got 'audit'",
        "header: with.headers: expected {'x-to': '+1'}, got {'x-to': '+14155550100'}",
        "audit everything: with.nothing: expected 1, got (not set)",
    ]
    assert bad.diff == [
        f"{path}:14:5 tests[2].event: unknown event field(s) colour; fields: id, type, "
        "occurred_at, call, status, duration, recording_url, transcript, error, data, seq"
    ]


def test_rule_test_file_problems_are_located(tmp_path: Path) -> None:
    path = write_tests(tmp_path, "config: orchestrator.yaml\ntests:\n  - {name: x, expect: []}\n")
    run = testing.run_rule_tests(path)
    assert run.problems == [f"{path}:3:5 tests[0].event: required key is missing"]
    path.write_text("config: [unclosed\n")
    assert "invalid YAML" in testing.run_rule_tests(path).problems[0]


def test_rule_tests_report_a_broken_config_but_not_its_other_sections(tmp_path: Path) -> None:
    broken = CONFIG_FOR_TESTS.replace("do: ops", "do: opz").replace(
        "magpipe:", "colour: 1\nmagpipe:"
    )
    path = write_tests(tmp_path, "config: orchestrator.yaml\ntests: []\n", broken)
    run = testing.run_rule_tests(path)
    cfg = tmp_path / "orchestrator.yaml"
    assert run.problems == [
        f"{cfg}:4:22 plugins.audit.url: environment variable AUDIT_URL is not set",
        f"{cfg}:11:5 rules[1].do: no plugin instance or type 'opz' (did you mean 'ops'?)",
    ]  # MAGPIPE_TOKEN is not needed, and `colour` is not the rules' business
