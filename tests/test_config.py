"""Config loading: interpolation, durations, and errors that point at file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import config, exceptions

GOOD = """\
magpipe:
  base_url: http://127.0.0.1:8700
  token: ${MAGPIPE_TOKEN}
  webhook_secret: ${MAGPIPE_WEBHOOK_SECRET:-}
  timeout: 2s
defaults: {from: "+16045551234", agent_id: c72ea2b8-1234-5678-9abc-def012345678}
webhooks: {listen: 127.0.0.1:8080, public_url: http://127.0.0.1:8080}
api: {listen: 127.0.0.1:8081, token: "${API_TOKEN:-fallback-token}"}
store: sqlite:///tmp/state.db
dialer: {max_live_calls: 20, calls_per_second: 5, max_call_duration: 30m}
plugins: {}
rules: []
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orchestrator.yaml"
    path.write_text(text)
    return path


def test_the_issue_example_loads(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD), environ={"MAGPIPE_TOKEN": "tok-123456"})
    assert cfg.magpipe.token.get_secret_value() == "tok-123456"
    assert cfg.magpipe.webhook_secret is None
    assert cfg.magpipe.timeout == 2.0
    assert cfg.dialer.max_call_duration == 1800.0
    assert cfg.defaults.from_ == "+16045551234"
    assert cfg.api.token is not None
    assert cfg.api.token.get_secret_value() == "fallback-token"
    assert "tok-123456" not in repr(cfg)
    assert set(cfg.secrets()) == {"tok-123456", "fallback-token"}


def test_every_problem_is_reported_with_line_column_and_key(tmp_path: Path) -> None:
    text = (
        GOOD.replace("timeout: 2s", "timeout: 10 parsecs").replace(
            "calls_per_second: 5", "calls_per_second: -1"
        )
        + "colour: blue\n"
    )
    with pytest.raises(exceptions.ConfigError) as info:
        config.load(write(tmp_path, text), environ={})
    message = str(info.value)
    assert "4 problem(s)" in message
    assert (
        "orchestrator.yaml:3:3 magpipe.token: environment variable MAGPIPE_TOKEN is not set"
        in message
    )
    assert "orchestrator.yaml:5:3 magpipe.timeout: not a duration: '10 parsecs'" in message
    assert (
        "orchestrator.yaml:10:30 dialer.calls_per_second: Input should be greater than 0" in message
    )
    assert "orchestrator.yaml:13:1 colour: unknown key" in message


def test_a_missing_required_key_points_at_its_section(tmp_path: Path) -> None:
    with pytest.raises(
        exceptions.ConfigError, match=r"orchestrator.yaml:1:1 magpipe.token: required"
    ):
        config.load(write(tmp_path, "magpipe:\n  base_url: http://x:1\n"), environ={})


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(
        exceptions.ConfigError, match=r"orchestrator.yaml:\d+:\d+ invalid YAML: .* at line 3"
    ):
        config.load(write(tmp_path, "magpipe:\n  token: a\n  bad: [unclosed\n"), environ={})


def test_an_invalid_default_caller_id_is_refused(tmp_path: Path) -> None:
    text = 'magpipe: {token: abcd}\ndefaults:\n  from: "+1555"\n'
    with pytest.raises(exceptions.ConfigError, match=r":3:3 defaults.from: 'from' must be E.164"):
        config.load(write(tmp_path, text), environ={})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        (2.5, 2.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "ten", "5 weeks", -1, True, None])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        config.parse_duration(value)


def test_interpolation_rules() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert config.interpolate("${A}-${B:-two}-$${A}", env) == "1-two-${A}"
    assert config.interpolate("${EMPTY:-d}", env) == "d"
    assert config.interpolate("${EMPTY}", env) == ""
    assert config.interpolate({"k": ["${A}"]}, env) == {"k": ["1"]}
    with pytest.raises(exceptions.ConfigError, match="B is not set"):
        config.interpolate("${B}", env)


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(exceptions.ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.yaml")


def test_yaml_1_1_booleans_are_strings(tmp_path: Path) -> None:
    text = "magpipe: {token: abcd}\nrules:\n  - {name: r, on: call.completed, do: x}\n  - {name: yes, on: [call.busy], do: off}\n"
    cfg = config.load(write(tmp_path, text), environ={})
    assert cfg.rules[0]["on"] == "call.completed"
    assert cfg.rules[1] == {"name": "yes", "on": ["call.busy"], "do": "off"}
    cfg2 = config.load(write(tmp_path, "magpipe: {token: abcd, send_aliases: false}\n"), environ={})
    assert cfg2.magpipe.send_aliases is False


# -- the whole file: sections, plugins and rules, each problem at its line and column ---------

FULL = """\
magpipe: {token: abcd}
plugins:
  audit: {use: http, url: https://example.com/hooks/calls}
  ops: {use: log, level: warning}
rules:
  - name: audit everything
    on: call.*
    do: audit
  - name: tell ops
    on: [call.failed, call.rejected]
    if: {call.metadata.tier: {in: [gold, platinum]}, call.attempt: {gte: 2}}
    do: ops
    with: {level: "{{ 'error' if call.attempt > 3 else 'warning' }}"}
"""


def load_all(text: str) -> list[str]:
    from orchestrator_plugins.http import HttpHandler
    from orchestrator_plugins.log import LogHandler

    from orchestrator import rules

    loaded = rules.load(
        "orchestrator.yaml", text=text, environ={}, types={"http": HttpHandler, "log": LogHandler}
    )
    return [str(p) for p in loaded.problems]


def test_the_full_example_loads() -> None:
    assert load_all(FULL) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ("on: call.*", "on: [call.*"),
            "orchestrator.yaml:8:7 invalid YAML: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence at line 7)",
        ),
        (
            ("    do: audit\n", "    do: audit\n    when: always\n"),
            "orchestrator.yaml:9:5 rules[0].when: unknown key",
        ),
        (
            ("do: ops", "do: [ops]"),
            "orchestrator.yaml:12:5 rules[1].do: Input should be a valid string",
        ),
        (
            ("use: http", "use: htpp"),
            "orchestrator.yaml:3:11 plugins.audit.use: unknown plugin type 'htpp' "
            "(did you mean 'http'?); installed: http, log",
        ),
        (
            ("do: ops", "do: opps"),
            "orchestrator.yaml:12:5 rules[1].do: no plugin instance or type 'opps' "
            "(did you mean 'ops'?)",
        ),
        (
            ("{in: [gold, platinum]}", "{matches: '[gold'}"),
            "orchestrator.yaml:11:31 rules[1].if['call.metadata.tier'].matches: invalid regular "
            "expression '[gold': unterminated character set at position 0",
        ),
        (
            ("else 'warning' }}", "else 'warning' }"),
            "orchestrator.yaml:13:12 rules[1].with.level: template syntax error: unexpected '}' "
            "(line 1)",
        ),
        (
            ("call.rejected]", "call.rejectd]"),
            "orchestrator.yaml:10:23 rules[1].on[1]: unknown event type 'call.rejectd' "
            "(did you mean 'call.rejected'?)",
        ),
        (
            ("level: warning}", "level: loud}"),
            "orchestrator.yaml:4:19 plugins.ops.level: Input should be 'debug', 'info', 'warning' "
            "or 'error'",
        ),
        (
            ("magpipe: {token: abcd}", "magpipe: {token: abcd, timeout: soon}"),
            "orchestrator.yaml:1:24 magpipe.timeout: not a duration: 'soon' (use e.g. 500ms, "
            "10s, 30m, 1h)",
        ),
    ],
    ids=[
        "yaml-syntax",
        "unknown-key",
        "wrong-type",
        "unknown-plugin-type",
        "unknown-do",
        "bad-regex",
        "bad-template",
        "unknown-event-type",
        "plugin-option",
        "section",
    ],
)
def test_each_broken_config_points_at_its_line_and_column(
    change: tuple[str, str], problem: str
) -> None:
    old, new = change
    assert old in FULL
    assert load_all(FULL.replace(old, new, 1)) == [problem]


def test_all_problems_are_reported_at_once_in_file_order() -> None:
    text = (
        FULL.replace("use: http", "use: htpp")
        .replace("call.rejected]", "call.rejectd]")
        .replace("do: ops", "do: opps")
        .replace("magpipe: {token: abcd}", "magpipe: {token: abcd}\ncolour: blue")
    )
    assert load_all(text) == [
        "orchestrator.yaml:2:1 colour: unknown key",
        "orchestrator.yaml:4:11 plugins.audit.use: unknown plugin type 'htpp' (did you mean "
        "'http'?); installed: http, log",
        "orchestrator.yaml:11:23 rules[1].on[1]: unknown event type 'call.rejectd' (did you "
        "mean 'call.rejected'?)",
        "orchestrator.yaml:13:5 rules[1].do: no plugin instance or type 'opps' (did you mean "
        "'ops'?)",
    ]


def test_problem_helpers() -> None:
    problem = config.Problem(("rules", 1, "if", "call.attempt", "gte"), "bad", "f.yaml:3:4")
    assert str(problem) == "f.yaml:3:4 rules[1].if['call.attempt'].gte: bad"
    assert problem.position == (3, 4)
    assert (
        str(config.Problem(None, "invalid YAML: x", "f.yaml:1:2")) == "f.yaml:1:2 invalid YAML: x"
    )
    assert config.dotted(()) == "(top level)"
    error = config.invalid([problem, config.Problem(("a",), "b")], name="f.yaml")
    assert error.message == (
        "2 problem(s) in f.yaml:\n  f.yaml:3:4 rules[1].if['call.attempt'].gte: bad\n  a: b"
    )
    assert isinstance(error, exceptions.ConfigError) and error.problems[1].path == ("a",)
