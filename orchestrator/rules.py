"""Rules: which events go to which handler instance.

This is the routing core (``on`` patterns to a ``do`` target); conditions and templated
options build on it. Each invalid rule is reported with its index and the others still load.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator import bus, config, exceptions, plugin
from orchestrator.model import EVENT_TYPES, matches


class Rule(BaseModel):
    """``{name, on, do}``: events whose type matches ``on`` go to the handler ``do``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    on: tuple[str, ...]
    do: str = Field(min_length=1)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    @field_validator("on", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("on")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one event type pattern is needed")
        for pattern in value:
            if pattern.startswith("plugin.") or any(matches(pattern, t) for t in EVENT_TYPES):
                continue
            close = difflib.get_close_matches(pattern, EVENT_TYPES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown event type {pattern!r}{hint}")
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


def subscriptions(
    plugins: Mapping[str, Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]],
    types: Mapping[str, plugin.PluginType],
) -> tuple[list[bus.Subscription], list[str]]:
    """Build one route per rule, and each handler instance a rule routes to once.

    Returns the routes and the problems found; an invalid rule or plugin is skipped and
    reported, the rest load.
    """
    problems: list[str] = []
    instances: dict[str, tuple[plugin.Handler, bus.DeliveryPolicy, type[plugin.Options]]] = {}
    broken: set[str] = set()
    subs: list[bus.Subscription] = []
    seen: set[str] = set()
    for index, raw in enumerate(rules):
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                problems.append(
                    f"rules[{index}].{where}: {str(error['msg']).removeprefix('Value error, ')}"
                )
            continue
        if rule.name in seen:
            problems.append(f"rules[{index}].name: another rule is named {rule.name!r}")
            continue
        seen.add(rule.name)
        if rule.do not in plugins and rule.do not in types:
            known = sorted({*plugins, *types})
            close = difflib.get_close_matches(rule.do, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"rules[{index}].do: no plugin instance or type {rule.do!r}{hint}")
            continue
        if rule.do in broken:
            continue
        spec: Mapping[str, Any] = plugins.get(rule.do, {"use": rule.do})
        if rule.do not in instances:
            try:
                handler = plugin.build(rule.do, spec, types)
                delivery = DeliveryOptions.model_validate(spec.get("delivery") or {})
            except exceptions.ConfigError as exc:
                problems.append(exc.message)
                broken.add(rule.do)
                continue
            except ValidationError as exc:
                problems.extend(
                    f"plugins.{rule.do}.delivery.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors()
                )
                broken.add(rule.do)
                continue
            model = types[str(spec["use"])].options_model
            instances[rule.do] = (handler, delivery.policy(), model)
        handler, policy, model = instances[rule.do]
        base = plugin.options_of(spec)
        merged = {**base, **rule.with_}
        try:
            fixed = model.model_validate(merged)
        except ValidationError as exc:
            problems.extend(
                f"rules[{index}].with.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors()
            )
            continue
        subs.append(
            bus.Subscription(
                name=rule.name,
                instance=rule.do,
                handler=handler,
                patterns=tuple(dict.fromkeys(rule.on)),
                policy=policy,
                options=lambda event, fixed=fixed: fixed,  # type: ignore[misc]
            )
        )
    return subs, problems
