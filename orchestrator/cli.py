"""The ``orchestrator`` command: it parses arguments, sets up logging and calls into the app."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from orchestrator import client, config, exceptions, log
from orchestrator.model import CallStatus

CALL_EXAMPLE = """\
example:
  MAGPIPE_BASE_URL=http://127.0.0.1:8700 MAGPIPE_TOKEN=sim-token \\
    orchestrator call --to +14155551234 --from +16045551234 \\
      --metadata customer_id=cust_123 --metadata campaign=follow_up

exit status: 0 placed; 1 refused or invalid input (nothing placed); 2 usage or config error;
3 ambiguous (the call may have been placed: do not simply retry); 4 provider unavailable
(nothing placed: safe to retry)."""

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_AMBIGUOUS, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    from orchestrator import simulator

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

    sim = commands.add_parser(
        "simulator",
        help="run the built-in Magpipe simulator",
        description="Run a Magpipe simulator that behaves as the provider's document says.",
    )
    simulator.add_arguments(sim)

    commands.add_parser(
        "demo",
        help="place a few calls on the built-in simulator and show their lifecycle",
        description="Start the simulator in this process, place a few calls and show what "
        "happens to each, from the provider's answer to the final status webhook.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    fmt = args.log_format
    level = args.log_level or ("warning" if args.command == "demo" else "info")
    redactor = log.configure(level=level, json=None if fmt == "auto" else fmt == "json")
    try:
        if args.command == "call":
            return asyncio.run(_wait(args) if args.wait else _call(args))
        if args.command == "run":
            return _run(args, redactor)
        if args.command == "simulator":
            return _simulator(args)
        if args.command == "demo":
            from orchestrator import demo

            return asyncio.run(demo.run())
    except KeyboardInterrupt:
        return 130
    except exceptions.ConfigError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


def _settings(args: argparse.Namespace) -> tuple[config.MagpipeSettings, config.Defaults]:
    if args.config is not None:
        cfg = config.load(args.config)
        return cfg.magpipe, cfg.defaults
    token = os.environ.get("MAGPIPE_TOKEN")
    if not token:
        raise exceptions.ConfigError("no Magpipe token: set MAGPIPE_TOKEN or pass --config FILE")
    base_url = os.environ.get("MAGPIPE_BASE_URL") or client.DEFAULT_BASE_URL
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
    from orchestrator import simulator

    cfg = simulator.config_from_args(args)
    asyncio.run(simulator.serve(cfg, args.host, args.port))
    return EXIT_OK


def _run(args: argparse.Namespace, redactor: log.Redactor) -> int:
    from orchestrator import app

    cfg = config.load(args.config)
    redactor.add(*cfg.secrets())
    daemon = app.Daemon(cfg, shutdown_grace=args.shutdown_grace)
    return asyncio.run(daemon.run())


async def _wait(args: argparse.Namespace) -> int:
    """Queue through the daemon's API and poll until the call is terminal."""
    import httpx

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        while loop.time() < deadline:
            call = (await api.get(f"/v1/calls/{call_id}")).json()
            if _terminal(call["status"]):
                final = [e for e in call["events"] if e["status"] == call["status"]]
                print(json.dumps(final[-1] if final else call, indent=2))
                return EXIT_OK if call["status"] == "completed" else EXIT_REFUSED
            await asyncio.sleep(0.5)
    print(f"orchestrator: call {call_id} did not end within {args.timeout:g}s", file=sys.stderr)
    return EXIT_AMBIGUOUS


def _terminal(status: object) -> bool:
    """True for a status the daemon reports as final (False for one this CLI does not know)."""
    try:
        return CallStatus(str(status)).terminal
    except ValueError:
        return False
