"""Rules and plugin instances: which events go to which handler, when, and with what options.

::

    plugins:                   # named handler instances; `use` picks the plugin type
      audit: {use: http, url: https://example.com/hooks/calls}
    rules:
      - name: audit failures   # unique; keys the outbox
        on: [call.failed, call.timed_out]     # event type patterns (`call.*` works)
        if: {call.attempt: {gte: 2}}          # optional: see orchestrator.conditions
        do: audit                             # an instance name, or a plugin type used as is
        with: {headers: {x-call: "{{ call.id }}"}}   # optional: see orchestrator.templates

Everything is checked when the config loads, and every problem is reported at once with its
key path (and, through :func:`load`, its file, line and column): unknown keys, unknown event
types (with a did-you-mean), conditions, template syntax, plugin types, each instance's options
(by the plugin's own model) and each rule's ``with`` values that are not templates (merged over
the instance's options). An invalid rule or instance is left out and the valid ones still load.

Each rule becomes one :class:`orchestrator.bus.Subscription`: ``condition`` is the compiled
``if``; ``options`` renders ``with`` against the event, merges it over the instance's options
(top-level keys replace) and validates the result with the plugin's model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema

from orchestrator import bus, config, exceptions, plugin, templates
from orchestrator.conditions import Predicate, compile_condition, hint
from orchestrator.config import KeyPath, Problem, invalid
from orchestrator.exceptions import InvalidConfig
from orchestrator.model import EVENT_TYPES, Event, matches

_PATTERNS_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ],
    "description": "Event type patterns, e.g. call.failed or call.* (one or a list).",
}


class Rule(BaseModel):
    """``{name, on, if, do, with}``: events whose type matches ``on`` and that satisfy ``if``
    go to the handler ``do``, with the options ``with``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, description="Unique name of the rule.")
    on: Annotated[tuple[str, ...], WithJsonSchema(_PATTERNS_SCHEMA)]
    if_: Any = Field(
        default=None,
        alias="if",
        description="Conditions on the event's JSON: {PATH: VALUE or {OPERATOR: OPERAND}}, "
        "all/any/not; operators: eq, ne, in, not_in, lt, lte, gt, gte, matches, exists.",
    )
    do: str = Field(min_length=1, description="A plugin instance name, or a plugin type.")
    with_: dict[str, Any] = Field(
        default_factory=dict,
        alias="with",
        description="Options for this rule's deliveries, over the instance's; strings may "
        "be Jinja2 templates rendered against the event ({{ call.to }}).",
    )

    @field_validator("on", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("on")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one event type pattern is needed")
        return value


class DeliveryOptions(BaseModel):
    """Per-instance delivery policy (``plugins.NAME.delivery``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(default=8, gt=0)
    timeout: config.Duration = 30.0
    schedule: tuple[config.Duration, ...] = bus.SCHEDULE
    max_attempts: int | None = Field(default=None, gt=0)
    jitter: float = Field(default=0.2, ge=0, le=1)
    breaker_threshold: int = Field(default=5, gt=0)
    breaker_cooldown: config.Duration = 30.0
    breaker_max_cooldown: config.Duration = 600.0

    def policy(self) -> bus.DeliveryPolicy:
        return bus.DeliveryPolicy(
            concurrency=self.concurrency,
            timeout=self.timeout,
            schedule=tuple(self.schedule),
            max_attempts=self.max_attempts or len(self.schedule) + 1,
            jitter=self.jitter,
            breaker_threshold=self.breaker_threshold,
            breaker_cooldown=self.breaker_cooldown,
            breaker_max_cooldown=self.breaker_max_cooldown,
        )


def pattern_problems(on: Any, where: KeyPath) -> list[Problem]:
    """The unknown event type patterns in ``on`` (a string or a list), with did-you-means."""
    items = [(where, on)] if isinstance(on, str) else []
    if isinstance(on, list | tuple):
        items = [((*where, i), p) for i, p in enumerate(on) if isinstance(p, str)]
    problems = []
    for path, pattern in items:
        if pattern.startswith("plugin.") or any(matches(pattern, t) for t in EVENT_TYPES):
            continue
        problems.append(
            Problem(path, f"unknown event type {pattern!r}{hint(pattern, EVENT_TYPES)}")
        )
    return problems


@dataclass(frozen=True)
class _Instance:
    handler: plugin.Handler
    policy: bus.DeliveryPolicy
    model: type[plugin.Options]
    options: dict[str, Any]


class _Pending:
    """Stands for a template's value in the checks at load (it fits no type but Any)."""


_PENDING = _Pending()


@dataclass(frozen=True, eq=False)
class RouteOptions:
    """A route's ``options`` callable: the rule's ``with`` rendered against the event, merged
    over the instance's options, validated by the plugin's model. Raises ConfigError (the
    delivery then fails permanently) if that cannot be done."""

    rule: str
    instance: str
    model: type[plugin.Options]
    base: Mapping[str, Any]
    with_: templates.Compiled
    fixed: plugin.Options | None = None

    def merged(self, event: Event) -> dict[str, Any]:
        """The instance's options with the rule's ``with`` rendered over them (unvalidated)."""
        return {**self.base, **self.with_.render(event.to_json())}

    def __call__(self, event: Event) -> plugin.Options:
        if self.fixed is not None:
            return self.fixed
        body = event.to_json()
        try:
            rendered = self.with_.render(body)
            try:
                return self.model.model_validate({**self.base, **rendered})
            except ValidationError as first:
                # A one-expression template's value may be a number where the plugin wants a
                # string ("{{ call.attempt }}"): try again with every template as a string.
                try:
                    plain = self.with_.render(body, native=False)
                    return self.model.model_validate({**self.base, **plain})
                except ValidationError:
                    raise first from None
        except exceptions.RenderError as exc:
            raise exceptions.RenderError(
                exc.message, rule=self.rule, plugin=self.instance
            ) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"with.{config.dotted(_loc(e))}: {config.message(e)}" for e in exc.errors()
            )
            raise exceptions.RenderError(problems, rule=self.rule, plugin=self.instance) from None


def _loc(error: Any) -> KeyPath:
    return tuple(p for p in error["loc"] if isinstance(p, str | int))


class _Builder:
    """Builds instances once and one route per rule, collecting every problem."""

    def __init__(self, types: Mapping[str, plugin.PluginType]) -> None:
        self.types = types
        self.problems: list[Problem] = []
        self.instances: dict[str, _Instance] = {}
        self.declared: dict[str, Any] = {}
        self.broken: set[str] = set()

    def fail(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(path, message))

    def validation(self, exc: ValidationError, base: KeyPath) -> None:
        for error in exc.errors():
            self.fail((*base, *_loc(error)), config.message(error))

    def plugins(self, raw: Any) -> None:
        if raw is None:
            return
        if not isinstance(raw, Mapping):
            self.fail(("plugins",), "must be a mapping of instance names to {use: TYPE, ...}")
            return
        for name, spec in raw.items():
            if not isinstance(name, str):
                self.fail(("plugins", str(name)), "an instance name must be a string")
                continue
            self.declared[name] = spec
            self.instance(name, spec, ("plugins", name))

    def instance(self, name: str, spec: Any, where: KeyPath) -> _Instance | None:
        """Build instance ``name`` from ``spec`` (once); None (reported) if it cannot be."""
        if name in self.instances:
            return self.instances[name]
        if name in self.broken:
            return None
        self.broken.add(name)  # until it is built
        if not isinstance(spec, Mapping):
            self.fail(where, "an instance must be a mapping {use: TYPE, ...options}")
            return None
        kind = spec.get("use")
        installed = ", ".join(sorted(self.types)) or "none"
        if kind is None:
            self.fail((*where, "use"), f"required key is missing (the plugin type: {installed})")
            return None
        if not isinstance(kind, str) or kind not in self.types:
            self.fail(
                (*where, "use"),
                f"unknown plugin type {kind!r}{hint(str(kind), sorted(self.types))}; "
                f"installed: {installed}",
            )
            return None
        plugin_type = self.types[kind]
        options = plugin.options_of(spec)
        before = len(self.problems)
        try:
            parsed = plugin_type.options_model.model_validate(options)
        except ValidationError as exc:
            self.validation(exc, where)
        try:
            delivery = DeliveryOptions.model_validate(spec.get("delivery") or {})
        except ValidationError as exc:
            self.validation(exc, (*where, "delivery"))
        if len(self.problems) > before:
            return None
        try:
            handler = plugin_type(name, parsed)
        except Exception as exc:  # a plugin's own check of its options
            self.fail(where, f"the {kind} plugin refused its options: {type(exc).__name__}: {exc}")
            return None
        self.broken.discard(name)
        built = _Instance(handler, delivery.policy(), plugin_type.options_model, options)
        self.instances[name] = built
        return built

    def rule(self, index: int, raw: Any, seen: set[str]) -> bus.Subscription | None:
        where: KeyPath = ("rules", index)
        if not isinstance(raw, Mapping):
            self.fail(where, "a rule must be a mapping {name, on, do, if?, with?}")
            return None
        before = len(self.problems)
        rule: Rule | None = None
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            self.validation(exc, where)
        self.problems.extend(pattern_problems(raw.get("on"), (*where, "on")))
        condition: Predicate | None = None
        if raw.get("if") is not None:
            try:
                condition = compile_condition(raw["if"], (*where, "if"))
            except InvalidConfig as exc:
                self.problems.extend(exc.problems)
        compiled = templates.Compiled({}, ())
        if isinstance(raw.get("with"), Mapping):
            compiled = templates.compile_value(
                raw["with"], (*where, "with"), problems=self.problems
            )
        if rule is None:
            return None
        if rule.name in seen:
            self.fail((*where, "name"), f"another rule is named {rule.name!r}")
        seen.add(rule.name)
        instance = self.target(rule.do, (*where, "do"))
        if instance is None:
            return None
        options = self.options(rule, instance, compiled, where)
        if options is None or len(self.problems) > before:
            return None
        return bus.Subscription(
            name=rule.name,
            instance=rule.do,
            handler=instance.handler,
            patterns=tuple(dict.fromkeys(rule.on)),
            policy=instance.policy,
            condition=condition,
            options=options,
        )

    def target(self, do: str, where: KeyPath) -> _Instance | None:
        if do in self.declared:
            return self.instances.get(do)  # a broken instance is reported where it is declared
        if do not in self.types:
            close = difflib.get_close_matches(do, sorted({*self.declared, *self.types}), n=1)
            hint_ = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(where, f"no plugin instance or type {do!r}{hint_}")
            return None
        if do in self.broken:
            return None
        problems = len(self.problems)
        built = self.instance(do, {"use": do}, where)
        if built is None:
            # The type's options have required keys: it cannot be used without an instance.
            found = self.problems[problems:]
            del self.problems[problems:]
            detail = "; ".join(
                f"{config.dotted((p.path or ())[len(where) :])}: {p.message}" for p in found
            )
            self.fail(
                where,
                f"the {do} plugin needs options ({detail}): declare an instance under "
                f"plugins: (e.g. my_{do}: {{use: {do}, ...}}) and use its name",
            )
        return built

    def options(
        self, rule: Rule, instance: _Instance, compiled: templates.Compiled, where: KeyPath
    ) -> RouteOptions | None:
        """The route's options callable, after checking what can be checked at load."""
        paths = [p[len(where) + 1 :] for p in compiled.template_paths]
        probe = {**instance.options, **compiled.static(_PENDING)}
        try:
            fixed = instance.model.model_validate(probe)
        except ValidationError as exc:
            fixed = None
            before = len(self.problems)
            for error in exc.errors():
                loc = _loc(error)
                pending = any(loc[: len(p)] == p for p in paths)
                if pending and error["type"] != "extra_forbidden":
                    continue  # a template's value is only known per event
                at = loc if loc and loc[0] in rule.with_ else ()
                self.fail((*where, "with", *at), config.message(error))
            if len(self.problems) > before:
                return None
        return RouteOptions(
            rule=rule.name,
            instance=rule.do,
            model=instance.model,
            base=instance.options,
            with_=compiled,
            fixed=None if compiled.templated else fixed,
        )


def build(
    plugins: Any, rules: Any, types: Mapping[str, plugin.PluginType]
) -> tuple[list[bus.Subscription], list[Problem]]:
    """One route per valid rule, each handler instance built once; and every problem found,
    each with its key path from the config's top (``plugins.NAME...``, ``rules[I]...``)."""
    builder = _Builder(types)
    builder.plugins(plugins)
    subs: list[bus.Subscription] = []
    if rules is not None and not isinstance(rules, list):
        builder.fail(("rules",), "must be a list of rules")
        rules = []
    seen: set[str] = set()
    for index, raw in enumerate(rules or ()):
        sub = builder.rule(index, raw, seen)
        if sub is not None:
            subs.append(sub)
    return subs, builder.problems


def subscriptions(
    plugins: Mapping[str, Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]],
    types: Mapping[str, plugin.PluginType],
) -> tuple[list[bus.Subscription], list[str]]:
    """:func:`build`, with each problem as a ``key.path: message`` line (no file position)."""
    subs, problems = build(plugins, list(rules), types)
    return subs, [str(p) for p in problems]


@dataclass(frozen=True)
class Loaded:
    """A config file loaded in full: its sections, its routes, and what is wrong with it.

    ``problems`` are located (``file:line:col key.path: message``), sorted by position; when
    there are any, the file must not be used. ``warnings`` are the unset variables when
    :func:`load` was told not to require them (``config`` may then be None).
    """

    name: str
    config: config.Config | None
    subscriptions: list[bus.Subscription] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    plugins: int = 0
    rules: int = 0

    @property
    def ok(self) -> bool:
        """True if nothing is wrong."""
        return not self.problems

    def error(self) -> InvalidConfig:
        """The problems as one ConfigError (to raise)."""
        return invalid(self.problems, name=self.name)


def load(
    source: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    types: Mapping[str, plugin.PluginType] | None = None,
    text: str | None = None,
    require_env: bool = True,
) -> Loaded:
    """Load and check a config file in full: sections, plugins and rules. The daemon's start
    and reload, ``config check`` and ``rules test`` all use it. With ``require_env=False``
    an unset ``${VAR}`` is a warning (its value is empty and problems it causes are dropped).
    """
    doc, problems = config.read(source, environ=environ, text=text)
    if doc is None:
        return Loaded(str(source), None, problems=problems)
    cfg, problems = config.validate(doc, skip=("plugins", "rules"))
    types = plugin.installed() if types is None else types
    plugins, rules = doc.data.get("plugins"), doc.data.get("rules")
    subs, found = build(plugins, rules, types)
    problems += [doc.locate(p) for p in found if not doc.affected(p)]
    warnings = list(doc.unset)
    if require_env:
        problems, warnings = [*warnings, *problems], []
    if cfg is not None:  # settings past the provider's documented limits: said, not refused
        warnings += [doc.locate(p) for p in config.limit_warnings(cfg)]
    problems.sort(key=lambda p: p.position)
    return Loaded(
        doc.name,
        cfg,
        subs,
        problems,
        warnings,
        plugins=len(plugins) if isinstance(plugins, Mapping) else 0,
        rules=len(rules) if isinstance(rules, list) else 0,
    )


def schema(types: Mapping[str, plugin.PluginType]) -> dict[str, Any]:
    """The JSON Schema of the whole config file, with each installed plugin type's options
    under ``plugins`` (one of them, told apart by ``use``), for editors' completion."""
    names = sorted(types)
    models: list[type[BaseModel]] = list(
        dict.fromkeys(
            [config.Config, Rule, DeliveryOptions, *(types[n].options_model for n in names)]
        )
    )
    refs, top = models_json_schema([(m, "validation") for m in models], title="orchestrator")
    defs: dict[str, Any] = top["$defs"]

    def name_of(model: type[BaseModel]) -> str:
        return str(refs[(model, "validation")]["$ref"]).rsplit("/", 1)[1]

    variants = {}
    for kind in names:
        options = dict(defs[name_of(types[kind].options_model)])
        properties = {
            "use": {"const": kind, "description": f"The plugin type ({kind})."},
            **options.get("properties", {}),
            "delivery": {"$ref": f"#/$defs/{name_of(DeliveryOptions)}"},
        }
        key = f"plugin.{kind}"
        defs[key] = {
            **options,
            "title": f"{kind} instance",
            "properties": properties,
            "required": ["use", *options.get("required", [])],
            "additionalProperties": False,
        }
        variants[kind] = f"#/$defs/{key}"
    root = dict(defs.pop(name_of(config.Config)))
    root["properties"] = {
        **root["properties"],
        "plugins": {
            "type": "object",
            "description": "Named handler instances: {NAME: {use: TYPE, ...options}}.",
            "additionalProperties": {
                "oneOf": [{"$ref": ref} for ref in variants.values()],
                "discriminator": {"propertyName": "use", "mapping": variants},
            },
        },
        "rules": {
            "type": "array",
            "description": "Which events go to which handler.",
            "items": {"$ref": f"#/$defs/{name_of(Rule)}"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **root,
        "title": "orchestrator config",
        "$defs": defs,
    }


def catalog(types: Mapping[str, plugin.PluginType]) -> list[dict[str, Any]]:
    """Each plugin type with its options: name, type, default (or required), description."""
    out = []
    for kind in sorted(types):
        plugin_type = types[kind]
        doc = (getattr(plugin_type, "__doc__", None) or "").strip().split("\n\n")[0]
        summary = " ".join(doc.split())
        summary = summary.split(". ")[0].rstrip(".") + "." if summary else ""
        options = []
        for name, info in plugin_type.options_model.model_fields.items():
            required = info.is_required()
            duration = any(getattr(m, "func", None) is config.parse_duration for m in info.metadata)
            options.append(
                {
                    "name": info.alias or name,
                    "type": "duration" if duration else _type_name(info.annotation),
                    "required": required,
                    "default": None if required else info.get_default(call_default_factory=True),
                    "description": info.description or "",
                }
            )
        out.append({"type": kind, "description": summary, "options": options})
    return out


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return re.sub(r"\b(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_])", "", str(annotation))
