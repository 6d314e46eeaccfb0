"""Templated values (a rule's ``with``): Jinja2 in a sandbox, rendered against each event.

A string in ``with`` that contains ``{{``, ``{%`` or ``{#`` is a template; every other value is
used as it is. Templates are parsed and compiled once when the config loads (a syntax error, an
unknown name such as ``{{ cal.to }}`` or a path no event has, such as ``{{ call.too }}``, is a
config error naming its key path), and rendered per event against the event's JSON: the
top-level names are ``call``, ``status``, ``error``, ``data``, ``duration``, ``type``, ``id``,
``occurred_at``, ``recording_url`` and ``transcript``.

Choices:

- A string that is exactly one ``{{ expression }}`` renders to the expression's value (a
  number, a list, a mapping, None), so ``max_attempts: "{{ call.attempt + 1 }}"`` is a number;
  any other template renders to a string. (Values are not re-parsed as with Jinja's native
  types, so a phone number stays a string.)
- Missing values are not errors: ``{{ error.code }}`` on an event without an error renders as an
  empty string inside a longer string and as None when it is the whole value. Computing with a
  missing value (``{{ data.n + 1 }}``) fails at delivery, as does anything else that cannot be
  rendered: the delivery fails permanently and the error names the key.
- The environment is Jinja's ``ImmutableSandboxedEnvironment``: no attribute that starts with
  ``_`` and no method that changes a value may be reached. Such a template is refused when it
  loads where that can be seen, and fails safely (an error, no access) when it renders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, meta, nodes
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.conditions import EVENT_SHAPE, Shape, hint, unknown_field
from orchestrator.config import KeyPath, Problem, dotted, invalid
from orchestrator.exceptions import RenderError

_MARKERS = ("{{", "{%", "{#")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, made to raise on an unsafe attribute instead of rendering it as empty."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


ENV = _Sandbox(undefined=ChainableUndefined, autoescape=False)


def is_template(value: Any) -> bool:
    """True for a string with Jinja syntax in it."""
    return isinstance(value, str) and any(m in value for m in _MARKERS)


@dataclass(frozen=True, eq=False)
class _Piece:
    """One compiled template string; ``expression`` is set when it is one ``{{ ... }}``."""

    path: KeyPath
    template: Template | None  # None: it did not compile (and was reported)
    expression: TemplateExpression | None

    def render(self, context: Mapping[str, Any], native: bool) -> Any:
        if self.template is None:
            raise RenderError(f"{dotted(self.path)}: the template did not compile")
        try:
            if native and self.expression is not None:
                return self.expression(context)
            return self.template.render(context)
        except Exception as exc:
            raise RenderError(
                f"{dotted(self.path)}: cannot render: {type(exc).__name__}: {exc}"
            ) from None


@dataclass(frozen=True)
class Compiled:
    """A value with its templates compiled; :meth:`render` it per event."""

    value: Any
    pieces: tuple[_Piece, ...]

    @property
    def templated(self) -> bool:
        """True if any string in the value is a template."""
        return bool(self.pieces)

    @property
    def template_paths(self) -> tuple[KeyPath, ...]:
        """The key paths of the template strings (under ``where``)."""
        return tuple(p.path for p in self.pieces)

    def render(self, context: Mapping[str, Any], *, native: bool = True) -> Any:
        """The value with every template rendered against ``context`` (an event's JSON).

        ``native=False`` renders one-expression templates to strings too. Raises RenderError.
        """
        return _walk(self.value, lambda piece: piece.render(context, native))

    def static(self, placeholder: Any) -> Any:
        """The value with each template replaced by ``placeholder`` (for checks at load)."""
        return _walk(self.value, lambda piece: placeholder)


def _walk(value: Any, fill: Any) -> Any:
    if isinstance(value, _Piece):
        return fill(value)
    if isinstance(value, dict):
        return {k: _walk(v, fill) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fill) for v in value]
    return value


def compile_value(
    value: Any,
    where: str | KeyPath = "with",
    *,
    shape: Shape = EVENT_SHAPE,
    problems: list[Problem] | None = None,
) -> Compiled:
    """Compile every template string in ``value`` (through mappings and lists).

    ``where`` is the value's key path in the config; ``shape`` the fields templates may name.
    Raises :class:`orchestrator.exceptions.InvalidConfig` listing every problem with its key path, or,
    given a ``problems`` list, appends them there and returns the value with each broken
    template as a piece that cannot render (so the rest can still be checked).
    """
    base: KeyPath = (where,) if isinstance(where, str) else tuple(where)
    found: list[Problem] = []
    pieces: list[_Piece] = []

    def visit(item: Any, path: KeyPath) -> Any:
        if isinstance(item, Mapping):
            return {k: visit(v, (*path, k)) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [visit(v, (*path, i)) for i, v in enumerate(item)]
        if not is_template(item):
            return item
        piece = _compile(str(item), path, shape, found)
        pieces.append(piece)
        return piece

    compiled = visit(value, base)
    if found and problems is None:
        raise invalid(found)
    if problems is not None:
        problems.extend(found)
    return Compiled(compiled, tuple(pieces))


def _compile(source: str, path: KeyPath, shape: Shape, problems: list[Problem]) -> _Piece:
    try:
        tree = ENV.parse(source)
    except TemplateSyntaxError as exc:
        problems.append(Problem(path, f"template syntax error: {exc.message} (line {exc.lineno})"))
        return _Piece(path, None, None)
    found = _names_problems(tree, shape)
    if found:
        problems.extend(Problem(path, message) for message in found)
        return _Piece(path, None, None)
    template = ENV.from_string(tree)
    return _Piece(path, template, _expression(source, tree))


def _names_problems(tree: nodes.Template, shape: Shape) -> list[str]:
    found: list[str] = []
    allowed = [*shape, *ENV.globals]
    for name in sorted(meta.find_undeclared_variables(tree)):
        if name not in allowed:
            found.append(
                f"unknown name {name!r}{hint(name, list(shape))}; a template sees the "
                f"event's fields: {', '.join(shape)}"
            )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        key = _key(node)
        if key is not None and key.startswith("_"):
            found.append(f"a template may not reach {key!r}: names that start with _ are unsafe")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        parts = _chain(node)
        if parts and parts[0] in shape:
            problem = unknown_field(parts, shape)
            if problem:
                found.append(problem)
    return list(dict.fromkeys(found))


def _key(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return str(node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return node.arg.value if isinstance(node.arg.value, str) else None
    return None


def _chain(node: nodes.Node) -> list[str] | None:
    """``["call", "metadata", "tier"]`` for ``call.metadata.tier`` or ``call['metadata']``."""
    parts: list[str] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        key = _key(node)
        if key is None:
            return None
        parts.append(key)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    parts.append(str(node.name))
    return parts[::-1]


def _expression(source: str, tree: nodes.Template) -> TemplateExpression | None:
    """The compiled expression when ``source`` is exactly one ``{{ ... }}``, else None."""
    body = tree.body
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    if isinstance(body[0].nodes[0], nodes.TemplateData):
        return None
    text = source.strip()
    if not (text.startswith("{{") and text.endswith("}}")):
        return None
    inner = text[2:-2].removeprefix("-").removesuffix("-")
    try:
        return ENV.compile_expression(inner, undefined_to_none=True)
    except TemplateSyntaxError:
        return None
