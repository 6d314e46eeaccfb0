"""The YAML configuration: loading, ``${VAR}`` interpolation and validation.

Every problem is reported at once, each with file, line, column and key path, e.g.
``orchestrator.yaml:4:10 magpipe.timeout: not a duration: '10 parsecs'``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from orchestrator import client, exceptions, phone

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object) -> float:
    """Seconds from ``10``, ``2.5``, ``500ms``, ``10s``, ``30m``, ``1h`` or ``1d``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 10s, 30m, 1h)")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_none)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MagpipeSettings(_Model):
    """How to reach the provider."""

    base_url: str = client.DEFAULT_BASE_URL
    token: SecretStr
    webhook_secret: OptionalSecret = None
    timeout: Duration = 10.0
    send_aliases: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"base_url must be an http(s) URL, not {value!r}")
        return value.rstrip("/")


class Defaults(_Model):
    """Values used for a call that does not set them."""

    from_: str | None = Field(default=None, alias="from")
    agent_id: str | None = None
    purpose: str | None = None
    goal: str | None = None
    template_id: str | None = None

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                phone.validate_number(value, field="from")
            except exceptions.InvalidNumber as exc:
                raise ValueError(exc.message) from None
        return value


class WebhookSettings(_Model):
    """Where the webhook intake listens and the URL the provider reaches it at."""

    listen: str = "127.0.0.1:8080"
    public_url: str | None = None
    max_body: int = Field(default=1 << 20, gt=0)


class ApiSettings(_Model):
    """The control API's address and bearer token."""

    listen: str = "127.0.0.1:8081"
    token: OptionalSecret = None


class DialerSettings(_Model):
    """Pacing of outbound calls."""

    max_live_calls: int = Field(default=20, gt=0)
    calls_per_second: float = Field(default=5.0, gt=0)
    max_call_duration: Duration = 1800.0


class Config(_Model):
    """The whole configuration file."""

    magpipe: MagpipeSettings
    defaults: Defaults = Defaults()
    webhooks: WebhookSettings = WebhookSettings()
    api: ApiSettings = ApiSettings()
    store: str = "sqlite://orchestrator.db"
    dialer: DialerSettings = DialerSettings()
    plugins: dict[str, dict[str, Any]] = {}
    rules: list[dict[str, Any]] = []

    def secrets(self) -> list[str]:
        """Every secret value in the config, for the log redactor."""
        values = [self.magpipe.token, self.magpipe.webhook_secret, self.api.token]
        return [v.get_secret_value() for v in values if v is not None]


class _MarkedLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 booleans: only true/false are booleans, so a rule's
    ``on:`` key stays the string "on" (YAML 1.1 would read it as True)."""


_MarkedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _load_marked(text: str) -> tuple[Any, dict[tuple[str | int, ...], tuple[int, int]]]:
    loader = _MarkedLoader(text)
    marks: dict[tuple[str | int, ...], tuple[int, int]] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, marks

        def walk(n: yaml.Node, path: tuple[str | int, ...]) -> None:
            marks[path] = (n.start_mark.line + 1, n.start_mark.column + 1)
            if isinstance(n, yaml.MappingNode):
                for key_node, value_node in n.value:
                    key = loader.construct_object(key_node, deep=True)
                    child = (*path, key if isinstance(key, str | int) else str(key))
                    # Point at the key: that is where the user looks for a key-path problem.
                    walk(value_node, child)
                    marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            elif isinstance(n, yaml.SequenceNode):
                for index, item in enumerate(n.value):
                    walk(item, (*path, index))

        walk(node, ())
        return loader.construct_document(node), marks
    finally:
        loader.dispose()


def interpolate(
    value: Any,
    environ: Mapping[str, str],
    path: tuple[str | int, ...] = (),
    missing: list[tuple[tuple[str | int, ...], str]] | None = None,
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``.

    An unset variable without a default is appended to ``missing`` as (key path, name), or
    raises ConfigError when no list is given.
    """
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in environ and (environ[name] != "" or default is None):
                return environ[name]
            if default is not None:
                return default
            if missing is None:
                raise exceptions.ConfigError(
                    f"{_dotted(path)}: environment variable {name} is not set"
                )
            missing.append((path, name))
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, (*path, k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, (*path, i), missing) for i, v in enumerate(value)]
    return value


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _where(
    name: str, marks: Mapping[tuple[str | int, ...], tuple[int, int]], path: tuple[str | int, ...]
) -> str:
    # The deepest ancestor that exists in the file (a missing key points at its parent).
    for end in range(len(path), -1, -1):
        if path[:end] in marks:
            line, col = marks[path[:end]]
            return f"{name}:{line}:{col}"
    return name


def load(
    source: str | Path, *, environ: Mapping[str, str] | None = None, text: str | None = None
) -> Config:
    """Load and validate a config file; raise ConfigError listing every problem found."""
    path = Path(source)
    name = str(source)
    environ = os.environ if environ is None else environ
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise exceptions.ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        raw, marks = _load_marked(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        context = ""
        if exc.context and exc.context_mark:
            # "while parsing a flow sequence" at the line where the broken construct starts.
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise exceptions.ConfigError(f"{where} invalid YAML: {exc.problem}{context}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise exceptions.ConfigError(f"{name}:1:1 the config must be a mapping of sections")
    missing: list[tuple[tuple[str | int, ...], str]] = []
    raw = interpolate(raw, environ, (), missing)
    problems = [
        f"{_where(name, marks, loc)} {_dotted(loc)}: environment variable {var} is not set"
        for loc, var in missing
    ]
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        unset = {loc for loc, _ in missing}
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
            if loc not in unset:
                problems.append(f"{_where(name, marks, loc)} {_dotted(loc)}: {_message(error)}")
    else:
        if not problems:
            return cfg
    raise exceptions.ConfigError(
        f"{len(problems)} problem(s) in {name}:\n  " + "\n  ".join(problems)
    )


def _message(error: Any) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")
