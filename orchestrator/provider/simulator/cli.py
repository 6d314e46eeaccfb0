"""The simulator's command line: ``orchestrator simulator`` options (faults, scripts, dialect,
time scale) turned into a :class:`~orchestrator.provider.simulator.model.SimulatorConfig`, and serving it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import textwrap

import structlog

from orchestrator.provider.simulator import Simulator
from orchestrator.provider.simulator.model import (
    FAULT_NAMES,
    FAULT_PARAMETERS,
    OUTCOME_NAMES,
    Dialect,
    Faults,
    Outcome,
    Script,
    SimulatorConfig,
)

__all__ = ["add_arguments", "config_from_args", "serve"]

log = structlog.get_logger(__name__)

# -- CLI helpers -----------------------------------------------------------------------------

# Parameters `--fault` accepts besides the probabilities themselves.
_FAULT_PARAMETERS = FAULT_PARAMETERS


def _name(text: str) -> str:
    """A fault or parameter name as the model spells it (``hang-placement``: ``hang_placement``)."""
    return text.strip().lower().replace("-", "_")


def _fault_arg(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    name = _name(name)
    if not sep or name not in (*FAULT_NAMES, *_FAULT_PARAMETERS):
        choices = ", ".join((*FAULT_NAMES, *_FAULT_PARAMETERS))
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of: {choices}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None
    if name in FAULT_NAMES and not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{name}: probability must be in [0, 1]")
    if number < 0:
        raise argparse.ArgumentTypeError(f"{name}: must be >= 0")
    return name, number


def _script_arg(text: str) -> tuple[str, Script]:
    number, sep, value = text.partition("=")
    names = [v.strip() for v in value.split(",") if v.strip()]
    try:
        outcomes = [Outcome.parse(name) for name in names]
    except ValueError:
        choices = ", ".join(OUTCOME_NAMES)
        raise argparse.ArgumentTypeError(
            f"outcomes are: {choices} ('_' and '-' alike, e.g. no_answer)"
        ) from None
    if not sep or not number.strip() or not outcomes:
        raise argparse.ArgumentTypeError("expected NUMBER=OUTCOME[,OUTCOME...]")
    return number.strip(), Script(outcome=outcomes[0], then=tuple(outcomes[1:]))


def _script_fault_arg(text: str) -> tuple[str, str, int]:
    number, sep, value = text.partition("=")
    fault, _, times = value.partition(":")
    fault = _name(fault)
    if not sep or not number.strip() or fault not in FAULT_NAMES:
        raise argparse.ArgumentTypeError(
            f"expected NUMBER=FAULT[:TIMES] with FAULT one of: {', '.join(FAULT_NAMES)}"
        )
    try:
        count = int(times) if times else 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"TIMES must be a whole number, not {times!r}") from None
    return number.strip(), fault, count


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text without breaking a name at its hyphen (``no-answer``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(re.sub(r"\s+", " ", text).strip(), width, break_on_hyphens=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's command-line options to `parser` (used by the CLI's subcommand);
    their help lists the fault and outcome names, from the model."""
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = _HelpFormatter
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8700, help="port to listen on (0: any)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    parser.add_argument(
        "--token",
        default=os.environ.get("MAGPIPE_TOKEN", "sim-token"),
        help="bearer token to accept (default: $MAGPIPE_TOKEN or sim-token)",
    )
    parser.add_argument(
        "--dialect",
        choices=[d.value for d in Dialect],
        default=Dialect.DOCUMENTED.value,
        help="answer as the documented API or as the deployed provider",
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every delay")
    parser.add_argument("--max-concurrent", type=int, default=None, help="live call limit")
    parser.add_argument("--balance", type=float, default=None, help="starting account balance")
    parser.add_argument(
        "--conference-limit",
        type=float,
        default=None,
        help="deployed: seconds (scaled) before an unanswered call's agent leg ends with a "
        "misleading call.completed (0: never; default 5400)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        metavar="N",
        help="enforce N provider API requests per minute (sliding, real time): the rest get "
        "429 with Retry-After (default: unlimited, as deployed)",
    )
    parser.add_argument("--webhook-url", default=None, help="account-level webhook URL")
    parser.add_argument(
        "--webhook-secret", default=None, help="HMAC secret signing webhooks (default built in)"
    )
    parser.add_argument(
        "--number", action="append", default=None, help="provisioned caller id (repeatable)"
    )
    parser.add_argument("--agent", action="append", default=None, help="agent id (repeatable)")
    parser.add_argument(
        "--script",
        action="append",
        type=_script_arg,
        default=None,
        metavar="NUMBER=OUTCOME[,OUTCOME...]",
        help="fix the outcomes of a number's dials, e.g. +14155550100=busy,completed "
        f"(the last repeats; repeatable); OUTCOME is one of: {', '.join(OUTCOME_NAMES)} "
        "('_' and '-' alike: no_answer is no-answer)",
    )
    parser.add_argument(
        "--script-fault",
        action="append",
        type=_script_fault_arg,
        default=None,
        metavar="NUMBER=FAULT[:TIMES]",
        help="force a fault on a number's placements (only its first TIMES; repeatable), e.g. "
        "+14155550100=hang_placement:1; FAULT is one of the --fault names",
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=_fault_arg,
        default=None,
        metavar="NAME=PROB",
        help="inject a fault with a probability, e.g. rate_limit=0.1 (repeatable); NAME is "
        f"one of: {', '.join(FAULT_NAMES)}; or set a parameter, e.g. retry_after=2: "
        f"{', '.join(_FAULT_PARAMETERS)} ('_' and '-' alike)",
    )


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    """Build a SimulatorConfig from options added by `add_arguments`; unset ones keep defaults."""
    defaults = SimulatorConfig()
    faults: dict[str, float | int] = {}
    for name, value in ns.fault or ():
        faults[name] = int(value) if name == "retry_after" else value
    return SimulatorConfig(
        token=ns.token,
        numbers=tuple(ns.number) if ns.number else defaults.numbers,
        agents=tuple(ns.agent) if ns.agent else defaults.agents,
        balance=ns.balance if ns.balance is not None else defaults.balance,
        max_concurrent=(
            ns.max_concurrent if ns.max_concurrent is not None else defaults.max_concurrent
        ),
        time_scale=ns.time_scale,
        conference_limit=(
            ns.conference_limit if ns.conference_limit is not None else defaults.conference_limit
        ),
        seed=ns.seed,
        dialect=Dialect(ns.dialect),
        webhook_url=ns.webhook_url,
        webhook_secret=(
            ns.webhook_secret if ns.webhook_secret is not None else defaults.webhook_secret
        ),
        faults=Faults(**faults),  # type: ignore[arg-type]
        scripts=_scripts(ns),
        rate_limit=ns.rate_limit,
    )


def _scripts(ns: argparse.Namespace) -> dict[str, Script]:
    scripts: dict[str, Script] = dict(ns.script or ())
    for number, fault, times in ns.script_fault or ():
        base = scripts.get(number, Script())
        scripts[number] = dataclasses.replace(base, fault=fault, fault_dials=times)
    return scripts


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Run a simulator on `host:port` until cancelled, logging where it listens."""
    sim = Simulator(config)
    url = await sim.start(host, port)
    log.info(
        "simulator.listening",
        url=url,
        dialect=config.dialect.value,
        numbers=list(config.numbers),
        agents=list(config.agents),
        seed=config.seed,
        time_scale=config.time_scale,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
        log.info("simulator.stopped", stats=sim.stats())
