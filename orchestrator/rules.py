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
    max_attempts: int = Field(default=10, gt=0)
    backoff: config.Duration = 1.0
    max_backoff: config.Duration = 3600.0

    def policy(self) -> bus.DeliveryPolicy:
        return bus.DeliveryPolicy(
            concurrency=self.concurrency,
            timeout=self.timeout,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
        )


def subscriptions(
    plugins: Mapping[str, Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]],
    types: Mapping[str, plugin.PluginType],
) -> tuple[list[bus.Subscription], list[str]]:
    """Build one subscription per handler instance that some rule routes to.

    Returns the subscriptions and the problems found; an invalid rule or plugin is skipped
    and reported, the rest load.
    """
    problems: list[str] = []
    patterns: dict[str, list[str]] = {}
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
        if rule.do not in plugins and rule.do not in types:
            known = sorted({*plugins, *types})
            close = difflib.get_close_matches(rule.do, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"rules[{index}].do: no plugin instance or type {rule.do!r}{hint}")
            continue
        patterns.setdefault(rule.do, []).extend(rule.on)
    subs: list[bus.Subscription] = []
    for name, on in patterns.items():
        spec: Mapping[str, Any] = plugins.get(name, {"use": name})
        try:
            handler = plugin.build(name, spec, types)
            delivery = DeliveryOptions.model_validate(spec.get("delivery") or {})
        except exceptions.ConfigError as exc:
            problems.append(exc.message)
            continue
        except ValidationError as exc:
            problems.extend(
                f"plugins.{name}.delivery.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors()
            )
            continue
        subs.append(
            bus.Subscription(
                name=name,
                handler=handler,
                patterns=tuple(dict.fromkeys(on)),
                policy=delivery.policy(),
            )
        )
    return subs, problems
