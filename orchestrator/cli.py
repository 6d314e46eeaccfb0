"""The ``orchestrator`` command: it parses arguments, sets up logging and calls into the app
(the daemon, the client, the config checker and the rule test runner).

Thin on purpose: parsing needs only the standard library (and ``remote``'s parsers, which need
no more), and each command imports what it uses (pydantic, httpx, aiohttp, structlog, the
config...) when it runs, so ``--help`` does not pay for the daemon."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import exceptions, remote

if TYPE_CHECKING:
    from orchestrator import config, log

CALL_EXAMPLE = """\
example:
  MAGPIPE_BASE_URL=http://127.0.0.1:8700 MAGPIPE_TOKEN=sim-token \\
    orchestrator call --to +14155551234 --from +16045551234 \\
      --metadata customer_id=cust_123 --metadata campaign=follow_up

exit status: 0 placed; 1 refused or invalid input (nothing placed); 2 usage or config error;
3 ambiguous (the call may have been placed: do not simply retry); 4 provider unavailable
(nothing placed: safe to retry)."""

RULES_TEST_EXAMPLE = """\
a test file:
  config: orchestrator.yaml            # relative to the test file
  env: {SLACK_WEBHOOK_URL: https://hooks.example.invalid/x}   # ${VAR}s the config needs
  tests:
    - name: gold failures go to ops
      event: {type: call.failed, call: {attempt: 2, metadata: {tier: gold}}, error: {code: X}}
      expect:                          # exactly the rules that match, in any order
        - {rule: tell ops about failed gold customers, handler: ops,
           with: {text: "Call to +14155550100 failed: X"}}   # a subset of the options

event fields left out get defaults (type call.completed, call.to +14155550100, attempt 1)."""

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_AMBIGUOUS, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
#: Stdout's reader went away (``orchestrator plugins list | head -1``): what a shell reports for
#: a command killed by SIGPIPE (128 + 13), without the traceback.
EXIT_PIPE_CLOSED = 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Place and follow outbound AI-agent phone calls through Magpipe.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ORCHESTRATOR_LOG_LEVEL"),
        help="debug, info, warning or error (default: info; warning for demo)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="JSON lines unless stderr is a terminal (auto)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    call = commands.add_parser(
        "call",
        help="place one call and print the provider's answer as JSON",
        description="Place one outbound call and print the provider's answer as JSON.",
        epilog=CALL_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("--to", required=True, help="destination, E.164 (e.g. +14155551234)")
    call.add_argument("--from", dest="from_", help="caller id, E.164 (default: defaults.from)")
    call.add_argument("--agent", help="agent UUID (default: defaults.agent_id)")
    call.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata to attach (repeatable)",
    )
    call.add_argument("--purpose", help="purpose of the call, given to the agent")
    call.add_argument("--goal", help="goal of the call, given to the agent")
    call.add_argument("--template", help="call template id")
    call.add_argument("--webhook-url", help="URL for this call's status webhooks")
    call.add_argument(
        "--config",
        type=Path,
        help="config file (else MAGPIPE_BASE_URL and MAGPIPE_TOKEN from the environment)",
    )

    call.add_argument(
        "--wait",
        action="store_true",
        help="queue the call through the running daemon's control API (api.listen and "
        "api.token from --config) and wait for and print its terminal event",
    )
    call.add_argument(
        "--timeout", type=float, default=3600.0, help="with --wait: give up after SECONDS"
    )

    run = commands.add_parser(
        "run",
        help="run the daemon",
        description="Run the orchestrator daemon: webhook intake, control API, dialer, "
        "handler deliveries and timers. SIGTERM or SIGINT stops it gracefully.",
    )
    run.add_argument("--config", type=Path, required=True, help="the YAML config file")
    run.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="seconds in-flight work gets to finish on SIGTERM (default 10)",
    )

    # The simulator's options come from its own module, which imports aiohttp: they are added
    # to a parser of their own only when the command is ``simulator`` (_simulator_arguments).
    commands.add_parser("simulator", help="run the built-in Magpipe simulator", add_help=False)

    commands.add_parser(
        "demo",
        help="dial a bundled sample campaign on the built-in simulator: live progress, then a "
        "summary",
        description="Run the simulator, a Slack stand-in and the daemon in this process on a "
        "temporary SQLite file; dial a sample campaign of 300 rows with retries and alerts; "
        "show progress and a checked summary.",
    )
    _config_commands(commands)
    remote.add_commands(commands)
    return parser


def _config_commands(commands: Any) -> None:
    """``config check|schema``, ``plugins list`` and ``rules test``."""
    cfg = commands.add_parser(
        "config", help="check a config file or print its JSON Schema", description="Config files."
    )
    cfg_commands = cfg.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = cfg_commands.add_parser(
        "check",
        help="check a config file: sections, plugins and rules",
        description="Check a config file as the daemon loads it. Exit 0 with a summary, or 1 "
        "with every problem (file:line:col key.path: message) on stderr. An unset ${VAR} is "
        "a warning unless --require-env.",
    )
    check.add_argument("file", type=Path, help="the YAML config file")
    check.add_argument(
        "--require-env",
        action="store_true",
        help="an unset environment variable is a problem (as when the daemon starts)",
    )
    cfg_commands.add_parser(
        "schema",
        help="print the config's JSON Schema (for editors)",
        description="Print the JSON Schema of the config file, with the options of every "
        "installed plugin type, to stdout.",
    )
    plugins = commands.add_parser(
        "plugins", help="list installed plugin types", description="Handler plugins."
    )
    plugin_commands = plugins.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = plugin_commands.add_parser(
        "list",
        help="installed plugin types and their options",
        description="The plugin types installed (entry-point group orchestrator.plugins) and "
        "their options: name, type, default, description.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    rule = commands.add_parser("rules", help="test rules", description="Rules.")
    rule_commands = rule.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = rule_commands.add_parser(
        "test",
        help="run rule tests: events and the routes they should take",
        description="Route each test's event through the config's rules and compare the "
        "matching rules, handlers and rendered options with what the test expects. Exit 0 if "
        "every test passes, else 1.",
        epilog=RULES_TEST_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("file", type=Path, help="the YAML test file")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status.

    A reader that goes away before the output is written (``| head -1``) ends the command
    quietly with :data:`EXIT_PIPE_CLOSED`, as the Python docs' note on SIGPIPE does it.
    """
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here, not at exit, so that a closed pipe is seen where it can be handled.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket or a child's pipe, not our reader: a real error
        # Python flushes stdout again at exit: point it at devnull so that it cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE_CLOSED


def _stdout_closed() -> bool:
    """True when stdout is a pipe or socket whose reader has gone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    import select

    if not hasattr(select, "poll"):  # no poll (Windows): take the error for what it says
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "simulator":
        args = _simulator_arguments(args, extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from orchestrator import log

    fmt = args.log_format
    level = args.log_level or ("warning" if args.command == "demo" else "info")
    redactor = log.configure(level=level, json=None if fmt == "auto" else fmt == "json")
    try:
        if args.command == "call":
            import asyncio

            return asyncio.run(_wait(args) if args.wait else _call(args))
        if args.command == "run":
            return _run(args, redactor)
        if args.command == "simulator":
            return _simulator(args)
        if args.command == "demo":
            import asyncio

            from orchestrator import demo

            return asyncio.run(demo.run())
        if args.command in ("config", "plugins", "rules"):
            return _config_command(args)
        if args.command in remote.COMMANDS:
            return remote.run(args)
    except KeyboardInterrupt:
        return 130
    except exceptions.ConfigError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


def _simulator_arguments(args: argparse.Namespace, extra: Sequence[str]) -> argparse.Namespace:
    """Parse what follows ``simulator`` with the simulator's own options (its ``--help`` too)."""
    from orchestrator.provider.simulator import cli as simulator_cli

    parser = argparse.ArgumentParser(
        prog="orchestrator simulator",
        description="Run a Magpipe simulator that behaves as the provider's document says.",
    )
    simulator_cli.add_arguments(parser)
    return parser.parse_args(extra, namespace=args)


def _settings(args: argparse.Namespace) -> tuple[config.MagpipeSettings, config.Defaults]:
    from pydantic import SecretStr

    from orchestrator import config
    from orchestrator.provider import DEFAULT_BASE_URL

    if args.config is not None:
        cfg = config.load(args.config)
        return cfg.magpipe, cfg.defaults
    token = os.environ.get("MAGPIPE_TOKEN")
    if not token:
        raise exceptions.ConfigError("no Magpipe token: set MAGPIPE_TOKEN or pass --config FILE")
    base_url = os.environ.get("MAGPIPE_BASE_URL") or DEFAULT_BASE_URL
    return config.MagpipeSettings(token=SecretStr(token), base_url=base_url), config.Defaults()


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise exceptions.InvalidMetadata(f"--metadata takes KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


async def _call(args: argparse.Namespace) -> int:
    import json

    from orchestrator.provider import client

    try:
        settings, defaults = _settings(args)
        caller = args.from_ or defaults.from_
        if not caller:
            raise exceptions.ConfigError("no caller id: pass --from or set defaults.from")
        request = client.CallRequest(
            to=args.to,
            from_=caller,
            agent_id=args.agent or defaults.agent_id,
            metadata=_metadata(args.metadata),
            webhook_url=args.webhook_url,
            purpose=args.purpose or defaults.purpose,
            goal=args.goal or defaults.goal,
            template_id=args.template or defaults.template_id,
        )
        async with client.MagpipeClient(
            token=settings.token,
            base_url=settings.base_url,
            timeout=settings.timeout,
            send_aliases=settings.send_aliases,
        ) as magpipe:
            placed = await magpipe.place_call(request)
    except exceptions.ConfigError:
        raise
    except exceptions.OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return _exit_status(exc)
    print(json.dumps(dict(placed.raw), indent=2))
    return EXIT_OK


def _exit_status(exc: exceptions.OrchestratorError) -> int:
    if isinstance(exc, exceptions.MagpipeError):
        return {
            exceptions.Retry.POINTLESS: EXIT_REFUSED,
            exceptions.Retry.UNSAFE: EXIT_AMBIGUOUS,
            exceptions.Retry.SAFE: EXIT_UNAVAILABLE,
        }[exc.retry]
    return EXIT_REFUSED


def _simulator(args: argparse.Namespace) -> int:
    import asyncio

    from orchestrator.provider.simulator import cli as simulator_cli

    cfg = simulator_cli.config_from_args(args)
    asyncio.run(simulator_cli.serve(cfg, args.host, args.port))
    return EXIT_OK


def _run(args: argparse.Namespace, redactor: log.Redactor) -> int:
    import asyncio

    from orchestrator import rules
    from orchestrator.daemon.supervisor import Daemon

    loaded = rules.load(args.config)
    if not loaded.ok or loaded.config is None:
        raise loaded.error()
    redactor.add(*loaded.config.secrets())
    daemon = Daemon(
        loaded.config,
        subscriptions=loaded.subscriptions,
        shutdown_grace=args.shutdown_grace,
        config_path=args.config,
    )
    return asyncio.run(daemon.run())


def _config_command(args: argparse.Namespace) -> int:
    """``config check|schema``, ``plugins list``, ``rules test``: 0 if all is well, else 1."""
    import json

    from orchestrator import plugin, rules

    if args.command == "config" and args.action == "check":
        loaded = rules.load(args.file, require_env=args.require_env)
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for problem in loaded.problems:
            print(problem, file=sys.stderr)
        if not loaded.ok:
            return EXIT_REFUSED
        print(
            f"{loaded.name}: OK, {_count(loaded.plugins, 'plugin')}, {_count(loaded.rules, 'rule')}"
        )
        return EXIT_OK
    if args.command == "config":
        print(json.dumps(rules.schema(plugin.installed()), indent=2))
        return EXIT_OK
    if args.command == "plugins":
        found = rules.catalog(plugin.installed())
        if args.json:
            print(json.dumps(found, indent=2, default=str))
        else:
            print(catalog_text(found, delivery_options()))
        return EXIT_OK
    from orchestrator.testing import rule_tests as ruletest

    run = ruletest.run_rule_tests(args.file)
    for line in run.problems:
        print(line, file=sys.stderr)
    for result in run.results:
        print(f"{'PASS' if result.passed else 'FAIL'} {result.name}")
        for line in result.diff:
            print(f"    {line}")
    passed = sum(r.passed for r in run.results)
    if not run.problems:
        print(f"{passed} passed, {len(run.results) - passed} failed")
    return EXIT_OK if run.ok else EXIT_REFUSED


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- plugins list ------------------------------------------------------------------------------

#: What each ``delivery`` option does, for ``plugins list`` (the model, DeliveryOptions in
#: orchestrator/rules.py, has no field descriptions; one there is shown instead).
DELIVERY_HELP = {
    "concurrency": "deliveries of the instance at once",
    "timeout": "how long one try may run (then it is cancelled, and counts as failed)",
    "schedule": "the wait after try n failed, jittered (the last entry repeats)",
    "max_attempts": "tries before the delivery is dead (None: one more than the schedule has)",
    "jitter": "each wait is spread by this share of it (0.2: +-20%)",
    "breaker_threshold": "failures in a row that open the instance's circuit",
    "breaker_cooldown": "how long an open circuit waits before it lets one trial through",
    "breaker_max_cooldown": "the cooldown doubles after each failed trial, up to this",
}

_ROLE = re.compile(r":(?:[\w-]+:)*[\w-]+:`([^`]+)`")  # :class:`~a.B`, :py:func:`f`
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")  # `title <https://...>`_
_LITERAL = re.compile(r"``(.+?)``|`([^`]+)`")  # ``code``, `default role`
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")


def plain_text(text: str) -> str:
    """A docstring's reST markup as plain text, for a terminal: ``code`` and roles such as
    :class:`~a.b.C` lose their markup (``C``; a role's ``title <target>`` keeps its title)."""

    def role(match: re.Match[str]) -> str:
        content = match.group(1)
        title, _, target = content.partition(" <")
        if target.endswith(">"):
            return title
        content = content.lstrip("!")
        return content.rsplit(".", 1)[-1] if content.startswith("~") else content

    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
    return _STRONG.sub(r"\1", text)


def duration_text(seconds: float) -> str:
    """Seconds as a config file writes a duration (``500ms``, ``30s``, ``10m``, ``1h``, ``1d``:
    the largest unit that gives a whole number), so that a default shown can be pasted."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if 0 < seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def delivery_options() -> list[dict[str, Any]]:
    """The ``delivery`` options every plugin instance takes (``plugins.NAME.delivery``), read
    from the model the daemon checks them with, in the shape of a catalog entry's options."""
    import typing

    from orchestrator import config, rules

    def is_duration(metadata: Sequence[Any]) -> bool:
        return any(getattr(m, "func", None) is config.parse_duration for m in metadata)

    options = []
    for name, info in rules.DeliveryOptions.model_fields.items():
        annotation: Any = info.annotation
        if is_duration(info.metadata):
            kind = "duration"
        elif typing.get_origin(annotation) is tuple and is_duration(
            getattr(typing.get_args(annotation)[0], "__metadata__", ())
        ):
            kind = "list of durations"
        else:
            kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        required = info.is_required()
        options.append(
            {
                "name": info.alias or name,
                "type": kind,
                "required": required,
                "default": None if required else info.get_default(call_default_factory=True),
                "description": info.description or DELIVERY_HELP.get(name, ""),
            }
        )
    return options


def catalog_text(found: list[dict[str, Any]], delivery: list[dict[str, Any]]) -> str:
    """``plugins list``: each plugin type's summary and options as plain text (no docstring
    markup, durations as the config writes them), then the ``delivery`` options once."""
    lines = []
    for entry in found:
        lines.append(f"{entry['type']}: {plain_text(entry['description'])}".rstrip(": "))
        lines += [_option_text(option) for option in entry["options"]]
        if not entry["options"]:
            lines.append("  (no options)")
    if not lines:
        lines.append("no plugin types installed")
    if delivery:
        lines += ["", "delivery options, of every plugin instance (plugins.NAME.delivery):"]
        lines += [_option_text(option) for option in delivery]
    return "\n".join(lines)


def _option_text(option: dict[str, Any]) -> str:
    value = option["default"]
    if option["required"]:
        default = "required"
    elif option["type"] == "duration" and isinstance(value, int | float):
        default = f"default {duration_text(value)}"
    elif option["type"] == "list of durations" and isinstance(value, list | tuple):
        default = f"default [{', '.join(duration_text(v) for v in value)}]"
    else:
        default = f"default {value!r}"
    text = f"  {option['name']}: {option['type']}, {default}"
    return text + (f": {plain_text(option['description'])}" if option["description"] else "")


async def _wait(args: argparse.Namespace) -> int:
    """Queue through the daemon's API and poll until the call is terminal."""
    import asyncio
    import json

    import httpx

    from orchestrator import config

    if args.config is None:
        raise exceptions.ConfigError("--wait needs --config (for api.listen and api.token)")
    cfg = config.load(args.config)
    if cfg.api.token is None:
        raise exceptions.ConfigError("--wait needs api.token in the config")
    body: dict[str, object] = {"to": args.to, "metadata": _metadata(args.metadata)}
    optional = {
        "from": args.from_,
        "agent_id": args.agent,
        "purpose": args.purpose,
        "goal": args.goal,
        "template_id": args.template,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    headers = {"Authorization": f"Bearer {cfg.api.token.get_secret_value()}"}
    base = f"http://{cfg.api.listen}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10.0) as api:
        try:
            answer = await api.post("/v1/calls", json=body)
        except httpx.TransportError as exc:
            print(
                f"orchestrator: cannot reach the daemon at {base}: {type(exc).__name__}",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        if answer.status_code != 202:
            error = answer.json().get("error", {})
            print(f"orchestrator: {error.get('code')}: {error.get('message')}", file=sys.stderr)
            return EXIT_REFUSED
        call_id = answer.json()["id"]
        print(f"call {call_id} queued", file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        shown = 0
        while loop.time() < deadline:
            call = (await api.get(f"/v1/calls/{call_id}")).json()
            # Each event as it happens, on stderr: stdout keeps the final event's JSON alone.
            for event in call["events"][shown:]:
                print(_event_line(event), file=sys.stderr, flush=True)
            shown = len(call["events"])
            if _terminal(call["status"]):
                final = [e for e in call["events"] if e["status"] == call["status"]]
                print(json.dumps(final[-1] if final else call, indent=2))
                return EXIT_OK if call["status"] == "completed" else EXIT_REFUSED
            await asyncio.sleep(0.5)
    print(f"orchestrator: call {call_id} did not end within {args.timeout:g}s", file=sys.stderr)
    return EXIT_AMBIGUOUS


def _event_line(event: dict[str, object]) -> str:
    """One event as ``--wait`` shows it: time, type, and what the event adds."""
    at = str(event.get("occurred_at") or "")[11:19]
    extra = []
    error = event.get("error")
    if isinstance(error, dict) and error.get("code"):
        extra.append(f"{error['code']}: {error.get('message') or ''}".rstrip(": "))
    if event.get("duration") is not None:
        extra.append(f"{event['duration']} s")
    return f"{at}  {event.get('type')}" + (f"  ({'; '.join(extra)})" if extra else "")


def _terminal(status: object) -> bool:
    """True for a status the daemon reports as final (False for one this CLI does not know)."""
    from orchestrator.model import CallStatus

    try:
        return CallStatus(str(status)).terminal
    except ValueError:
        return False
