"""The YAML configuration: loading, ``${VAR}`` interpolation and validation.

Every problem is reported at once, each with file, line, column and key path, e.g.
``orchestrator.yaml:4:10 magpipe.timeout: not a duration: '10 parsecs'``.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from orchestrator import exceptions, phone
from orchestrator.exceptions import InvalidConfig
from orchestrator.provider import DEFAULT_BASE_URL
from orchestrator.windows import CallingWindow

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: Where a value is in the config: keys and list indices from the top.
KeyPath = tuple[str | int, ...]
Marks = Mapping[KeyPath, tuple[int, int]]


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


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)?\s*$"},
    ],
    "description": "Seconds, or a duration such as 500ms, 10s, 30m, 1h, 1d.",
}
#: Seconds, written as a number or as ``500ms``, ``10s``, ``30m``, ``1h``, ``1d``.
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]


def _empty_is_none(value: object) -> object:
    return None if value == "" else value


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_is_none)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ReconcileSettings(_Model):
    """When to ask the provider about calls it has not reported on (get-call, list-calls)."""

    enabled: bool = Field(
        default=True, description="look calls up at the provider (off: webhooks and the watchdog)"
    )
    after: Duration = Field(
        default=60.0, gt=0, description="first look-up this long after placement"
    )
    every: Duration = Field(default=60.0, gt=0, description="then this often while it is live")
    ambiguous_grace: Duration = Field(
        default=300.0,
        gt=0,
        description="an ambiguous placement is looked for this long after it was sent",
    )
    max_per_minute: int = Field(
        default=60, gt=0, description="look-ups and hang-ups per minute, fleet-wide"
    )


#: What the provider documents (``../shared/magpipe-contract.md``): requests per API key.
DOCUMENTED_PER_MINUTE = 100
DOCUMENTED_PER_HOUR = 1000
#: How its own batch dialer keeps its carrier's one call per second: 5 live, 1.2 s apart.
DOCUMENTED_LIVE_CALLS = 5
DOCUMENTED_CALLS_PER_SECOND = 1 / 1.2


class RateLimit(_Model):
    """The provider key's request budget, fleet-wide: placements, look-ups and hang-ups."""

    per_minute: int = Field(
        default=DOCUMENTED_PER_MINUTE, gt=0, description="requests per minute (documented: 100)"
    )
    per_hour: int = Field(
        default=DOCUMENTED_PER_HOUR, gt=0, description="requests per hour (documented: 1000)"
    )
    placements: float = Field(
        default=0.6,
        gt=0,
        lt=1,
        description="the share kept for placements; look-ups and hang-ups have the rest",
    )


class MagpipeSettings(_Model):
    """How to reach the provider."""

    base_url: str = DEFAULT_BASE_URL
    token: SecretStr
    webhook_secret: OptionalSecret = None
    timeout: Duration = 10.0
    send_aliases: bool = True
    reconcile: ReconcileSettings = ReconcileSettings()
    rate_limit: RateLimit = RateLimit()

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
    """Pacing of outbound calls, for the whole fleet of daemons on one store."""

    max_live_calls: int = Field(
        default=DOCUMENTED_LIVE_CALLS,
        gt=0,
        description="calls live at once, fleet-wide (the provider's own dialer keeps 5)",
    )
    calls_per_second: float = Field(
        default=round(DOCUMENTED_CALLS_PER_SECOND, 3),
        gt=0,
        description="placements per second, fleet-wide (the provider's own dialer: one per "
        "1.2 s); magpipe.rate_limit may hold it lower",
    )
    max_call_duration: Duration = 1800.0
    max_live_per_caller_id: int | None = Field(
        default=None, gt=0, description="live calls at once from one caller id"
    )
    max_attempts_per_person_per_day: int | None = Field(
        default=None, gt=0, description="attempts to one number over 24 hours, all campaigns"
    )
    window: CallingWindow | None = Field(
        default=None, description="when people may be called (their local time), by default"
    )
    default_time_zone: str | None = Field(
        default=None, description="for numbers whose time zone cannot be told from the number"
    )
    do_not_call: str | None = Field(
        default=None, description="a file of numbers never to call (re-read when it changes)"
    )
    balance_probe: Duration = Field(
        default=60.0, description="after INSUFFICIENT_BALANCE: wait, then try one call (doubles)"
    )
    unauthorized_probe: Duration = Field(
        default=300.0, description="after UNAUTHORIZED: wait, then try one call"
    )
    hangup_on_timeout: bool = Field(
        default=True,
        description="when the watchdog fires on a call still live at the provider, hang it up",
    )
    max_placement_failures: int = Field(
        default=5,
        ge=1,
        le=100,
        description="placements of one call the provider certainly fails (its carrier overrun: "
        "nobody rung) before the call ends as failed (PLACEMENT_FAILED); each waits longer",
    )
    placement_failure_backoff: Duration = Field(
        default=5.0,
        description="the wait after the first such failure of a call (doubles, to 5 minutes)",
    )


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
        """Every secret value in the config, for the log redactor (plugin options named like
        credentials included: their models are the plugins', not ours)."""
        values = [self.magpipe.token, self.magpipe.webhook_secret, self.api.token]
        found = [v.get_secret_value() for v in values if v is not None]
        for options in self.plugins.values():
            for key, value in options.items():
                if isinstance(value, str) and value and _SECRET_KEY.search(key):
                    found.append(value)
        return found


_SECRET_KEY = re.compile(r"token|secret|password|api_key|webhook_url|authorization", re.I)


class _MarkedLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 booleans: only true/false are booleans, so a rule's
    ``on:`` key stays the string "on" (YAML 1.1 would read it as True).

    Aliases (``*name``) are refused where they appear: a few hundred bytes of nested aliases
    expand to gigabytes ("billion laughs"), and a config has no need of them."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"aliases (*{event.anchor}) are not allowed in the config: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


_MarkedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _load_marked(text: str) -> tuple[Any, dict[KeyPath, tuple[int, int]]]:
    loader = _MarkedLoader(text)
    marks: dict[KeyPath, tuple[int, int]] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, marks

        def walk(n: yaml.Node, path: KeyPath) -> None:
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
    path: KeyPath = (),
    missing: list[tuple[KeyPath, str]] | None = None,
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


def dotted(path: KeyPath) -> str:
    """``rules[1].if['call.attempt'].gte`` for ``("rules", 1, "if", "call.attempt", "gte")``:
    a key that contains a dot is quoted, so the path reads unambiguously."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in part or not part:
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


_dotted = dotted


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: its key path (None: not about a key, e.g. a YAML syntax
    error), a message, and once located, ``where`` (``file:line:col``).

    Modules that check parts of the config (conditions, templates, rules) return or raise
    these with paths from the file's top; :meth:`Document.locate` adds the position.
    """

    path: KeyPath | None
    message: str
    where: str = ""

    @property
    def position(self) -> tuple[int, int]:
        """(line, column) from ``where``; (0, 0) when it has none (to sort by)."""
        found = re.search(r":(\d+):(\d+)$", self.where)
        return (int(found.group(1)), int(found.group(2))) if found else (0, 0)

    def __str__(self) -> str:
        head = f"{self.where} " if self.where else ""
        if self.path is None:
            return head + self.message
        return f"{head}{dotted(self.path)}: {self.message}"


def invalid(problems: Sequence[Problem], *, name: str | None = None) -> InvalidConfig:
    """The error that reports every one of ``problems`` (``name``: the file's)."""
    return InvalidConfig(report(problems, name=name), problems=problems)


def limit_warnings(cfg: Config) -> list[Problem]:
    """Settings past what the provider documents, each naming the documented limit (the
    daemon runs with them: a provider may grant more; ``config check`` says so)."""
    out = []
    limit, dialer = cfg.magpipe.rate_limit, cfg.dialer
    if limit.per_minute > DOCUMENTED_PER_MINUTE:
        out.append(
            Problem(
                ("magpipe", "rate_limit", "per_minute"),
                f"{limit.per_minute} is over the {DOCUMENTED_PER_MINUTE} requests a minute the "
                "provider documents",
            )
        )
    if limit.per_hour > DOCUMENTED_PER_HOUR:
        out.append(
            Problem(
                ("magpipe", "rate_limit", "per_hour"),
                f"{limit.per_hour} is over the {DOCUMENTED_PER_HOUR} requests an hour the "
                "provider documents",
            )
        )
    if dialer.max_live_calls > DOCUMENTED_LIVE_CALLS:
        out.append(
            Problem(
                ("dialer", "max_live_calls"),
                f"{dialer.max_live_calls} is over the {DOCUMENTED_LIVE_CALLS} live calls the "
                "provider's own dialer keeps",
            )
        )
    if dialer.calls_per_second > DOCUMENTED_CALLS_PER_SECOND + 1e-3:
        out.append(
            Problem(
                ("dialer", "calls_per_second"),
                f"{dialer.calls_per_second:g} is over the one call per 1.2 s the provider's own "
                "dialer keeps to its carrier's one a second",
            )
        )
    share = limit.per_minute * limit.placements
    if dialer.calls_per_second * 60 > share + 1e-9:
        out.append(
            Problem(
                ("dialer", "calls_per_second"),
                f"{dialer.calls_per_second * 60:g}/min is over the placements' share of "
                f"magpipe.rate_limit ({share:g}/min): the budget holds the pace lower",
            )
        )
    return out  # fmt: skip


def report(problems: Sequence[Problem], *, name: str | None = None) -> str:
    """``N problem(s) in NAME:`` and one indented line per problem (one problem: just it)."""
    lines = [str(p) for p in problems]
    if len(lines) == 1 and name is None:
        return lines[0]
    title = f"{len(lines)} problem(s)" + (f" in {name}" if name else "")
    return title + ":\n  " + "\n  ".join(lines)


@dataclass(frozen=True)
class Document:
    """A config file as read: its interpolated data, where each key is, and the key paths
    whose ``${VAR}`` was unset (their values are empty strings)."""

    name: str
    data: dict[str, Any]
    marks: Marks
    unset: tuple[Problem, ...] = ()

    def locate(self, problem: Problem) -> Problem:
        """``problem`` with ``where`` set to the file, line and column of its key path."""
        if problem.where or problem.path is None:
            return problem
        return replace(problem, where=_where(self.name, self.marks, problem.path))

    def affected(self, problem: Problem) -> bool:
        """True if ``problem`` is at or under a key whose variable was unset (a consequence
        of the empty value, not a separate mistake)."""
        path = problem.path
        return path is not None and any(
            u.path is not None and path[: len(u.path)] == u.path for u in self.unset
        )


def _where(name: str, marks: Marks, path: KeyPath) -> str:
    # The deepest ancestor that exists in the file (a missing key points at its parent).
    for end in range(len(path), -1, -1):
        if path[:end] in marks:
            line, col = marks[path[:end]]
            return f"{name}:{line}:{col}"
    return name


def read(
    source: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    text: str | None = None,
    interpolated: bool = True,
) -> tuple[Document | None, list[Problem]]:
    """Read, parse and (unless ``interpolated=False``) interpolate a YAML file. Returns the
    document (None if it could not be parsed) and the located problems that stopped it;
    unset variables are not among them but in :attr:`Document.unset`."""
    name = str(source)
    environ = os.environ if environ is None else environ
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            return None, [Problem(None, f"{name}: cannot read: {exc.strerror}")]
    try:
        raw, marks = _load_marked(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        context = ""
        if exc.context and exc.context_mark:
            # "while parsing a flow sequence" at the line where the broken construct starts.
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        return None, [Problem(None, f"invalid YAML: {exc.problem}{context}", where)]
    except yaml.YAMLError as exc:  # e.g. a reader error (a control character) without a mark
        return None, [Problem(None, f"invalid YAML: {exc}", name)]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [Problem(None, "the config must be a mapping of sections", f"{name}:1:1")]
    missing: list[tuple[KeyPath, str]] = []
    data = interpolate(raw, environ, (), missing) if interpolated else raw
    unset = tuple(
        Problem(loc, f"environment variable {var} is not set", _where(name, marks, loc))
        for loc, var in missing
    )
    return Document(name, data, marks, unset), []


def validate(doc: Document, *, skip: Collection[str] = ()) -> tuple[Config | None, list[Problem]]:
    """Validate a document's sections; the located problems, none at or under an unset
    variable's key. Problems under the top-level keys in ``skip`` are left out (their
    checker reports them)."""
    try:
        return Config.model_validate(doc.data), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
            problem = Problem(loc, _message(error, Config))
            if (loc and loc[0] in skip) or doc.affected(problem):
                continue
            problems.append(doc.locate(problem))
        return None, problems


def load(
    source: str | Path, *, environ: Mapping[str, str] | None = None, text: str | None = None
) -> Config:
    """Load and validate a config file's sections (not its rules and plugins: see
    :func:`orchestrator.rules.load`); raise :class:`Invalid` listing every problem."""
    doc, problems = read(source, environ=environ, text=text)
    if doc is None:
        raise invalid(problems)
    cfg, problems = validate(doc)
    problems = [*doc.unset, *problems]
    if cfg is None or problems:
        raise invalid(problems, name=doc.name)
    return cfg


def message(error: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """A pydantic error's message as the config reports it (``unknown key``...).

    With the ``model`` that was validated, an unknown key gets a did-you-mean from the keys
    of the model at that level (``unknown key (did you mean 'max_live_calls'?)``).
    """
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown key" + (_key_hint(error, model) if model is not None else "")
    if kind == "missing":
        return "required key is missing"
    text = str(error.get("msg", "invalid"))
    return text.removeprefix("Value error, ")


_message = message


def known_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str] | None:
    """The keys (aliases where a field has one) of the model found at ``path`` inside
    ``model``, following fields, list items and mapping values; None if no model is there."""
    annotation: Any = model
    for part in path:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    found = _model_of(annotation)
    if found is None:
        return None
    return [info.alias or name for name, info in found.model_fields.items()]


def _key_hint(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = [p for p in error.get("loc", ()) if isinstance(p, str | int)]
    if not loc or not isinstance(loc[-1], str):
        return ""
    keys = known_keys(model, loc[:-1])
    close = difflib.get_close_matches(loc[-1], keys or [], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation stands for: itself, inside ``Annotated``, or the one model of
    a union such as ``CallingWindow | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is Annotated:
        return _model_of(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        models = [m for m in map(_model_of, get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one key or index further in (None when it cannot be told)."""
    found = _model_of(annotation)
    if found is not None:
        for name, info in found.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _step(args[0], part)
    if origin in (list, tuple, Sequence) and isinstance(part, int) and args:
        return args[0]
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None
