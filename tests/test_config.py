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
