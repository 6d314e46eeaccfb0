"""The pure model behind the Magpipe simulator: configuration, outcome drawing and call records.

Nothing here does I/O, so the rules (what a call will do, what a webhook looks like, what the
inspection routes show) can be read and tested apart from the aiohttp server in
`orchestrator.provider.simulator`.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_OUTCOME_MIX",
    "FAULT_NAMES",
    "FAULT_PARAMETERS",
    "OUTCOME_NAMES",
    "RECORD_STATUS",
    "TERMINAL_STATUSES",
    "CallPlan",
    "CallRecord",
    "Dialect",
    "Faults",
    "Outcome",
    "RawAnswer",
    "Script",
    "SimulatorConfig",
    "WebhookRecord",
    "draw_plan",
    "iso_now",
]


class Dialect(StrEnum):
    """Which provider shape to speak: the published document, or the code actually deployed."""

    DOCUMENTED = "documented"
    DEPLOYED = "deployed"


class Outcome(StrEnum):
    """The terminal status a simulated call ends in."""

    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"

    @classmethod
    def parse(cls, text: str) -> Outcome:
        """The outcome named ``text`` in any case, ``_`` and ``-`` alike: ``no-answer`` (the
        provider's spelling) or ``no_answer`` (the lifecycle event's, ``call.no_answer``)."""
        key = text.strip().lower().replace("_", "-")
        for outcome in cls:
            if outcome.value.replace("_", "-") == key:
                return outcome
        raise ValueError(f"unknown outcome {text!r} (one of: {', '.join(OUTCOME_NAMES)})")


#: The outcomes' names as ``--script`` and the webhooks spell them.
OUTCOME_NAMES: tuple[str, ...] = tuple(o.value for o in Outcome)

TERMINAL_STATUSES: frozenset[str] = frozenset(o.value for o in Outcome)

DEFAULT_OUTCOME_MIX: Mapping[Outcome, float] = MappingProxyType(
    {
        Outcome.COMPLETED: 0.60,
        Outcome.BUSY: 0.15,
        Outcome.NO_ANSWER: 0.15,
        Outcome.FAILED: 0.07,
        Outcome.CANCELED: 0.03,
    }
)


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Probabilities of misbehaviour the real provider may show; all off by default.

    Each request or webhook draws against these independently, so tests can turn one on at 1.0
    and a demo can sprinkle several at low rates.
    """

    rate_limit: float = 0.0
    retry_after: int = 1
    server_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    drop_answer: float = 0.0
    duplicate_webhooks: float = 0.0
    out_of_order: float = 0.0
    early_webhook: float = 0.0
    lose_webhooks: float = 0.0
    # The deployed agent's call.completed names another call's record (the newest outbound one
    # of the last two minutes), while caller_number is still this call's number.
    misattribute: float = 0.0
    # A placement answered 500 "Failed to start PSTN leg" (or its kin): nobody is rung.
    carrier_error: float = 0.0
    # A placement that hangs without an answer, and whose call is never created.
    hang_placement: float = 0.0
    hang_seconds: float = 600.0
    # An answered call that stays live until it is hung up (terminate-call).
    stuck: float = 0.0
    # get-call, list-calls or terminate-call answered 500 server_error.
    records_error: float = 0.0

    def __post_init__(self) -> None:
        for name in FAULT_NAMES:
            _check_probability(name, getattr(self, name))
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if self.slow_seconds < 0 or self.hang_seconds < 0:
            raise ValueError("slow_seconds and hang_seconds must be >= 0")


#: Fault parameters that are not probabilities.
FAULT_PARAMETERS = ("retry_after", "slow_seconds", "hang_seconds")
# The probability fields of Faults, i.e. the names a Script or `--fault` may force.
FAULT_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Faults) if f.name not in FAULT_PARAMETERS
)

#: The provider's record statuses (get-call, list-calls) for the document's webhook statuses:
#: the database's spellings, where ``in-progress`` (hyphen) is a record not yet answered and
#: ``in_progress`` (underscore) an answered call.
RECORD_STATUS = {
    "queued": "in-progress",
    "initiated": "initiated",
    "ringing": "ringing",
    "in-progress": "in_progress",
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}


@dataclass(frozen=True, kw_only=True)
class RawAnswer:
    """An HTTP answer sent verbatim instead of processing a request, to fake any error shape."""

    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Script:
    """What happens when a given destination number is dialled, so tests need not rely on luck."""

    outcome: Outcome = Outcome.COMPLETED
    duration: float = 60.0
    ring: float = 5.0
    answer: RawAnswer | None = None
    fault: str | None = None
    # The outcomes of the 2nd, 3rd... dial of the number (the last one repeats), so a test
    # can say "busy, then answered".
    then: tuple[Outcome, ...] = ()
    # The fault strikes only the number's first ``fault_dials`` placements (0: every one).
    fault_dials: int = 0

    def fault_on(self, dial: int) -> str | None:
        """The fault forced on the number's ``dial``-th placement (0 is the first)."""
        if self.fault_dials and dial >= self.fault_dials:
            return None
        return self.fault

    def outcome_of(self, dial: int) -> Outcome:
        """The outcome of the number's ``dial``-th dial (0 is the first)."""
        sequence = (self.outcome, *self.then)
        return sequence[min(dial, len(sequence) - 1)]

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULT_NAMES:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {FAULT_NAMES}")
        if self.duration < 0 or self.ring < 0:
            raise ValueError("duration and ring must be >= 0")


def _default_mix() -> Mapping[Outcome, float]:
    return DEFAULT_OUTCOME_MIX


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """Everything that shapes a simulator run; `seed` makes every random draw reproducible."""

    # Well-known fake credentials: the simulator guards nothing real.
    token: str = "sim-token"  # noqa: S105
    numbers: tuple[str, ...] = ("+16045551234",)
    agents: tuple[str, ...] = ("c72ea2b8-1234-5678-9abc-def012345678",)
    balance: float = 100.0
    price_per_minute: float = 0.10
    max_concurrent: int = 10
    outcome_mix: Mapping[Outcome, float] = field(default_factory=_default_mix)
    ring_seconds: tuple[float, float] = (3.0, 20.0)
    talk_seconds: tuple[float, float] = (20.0, 240.0)
    scripts: Mapping[str, Script] = field(default_factory=dict)
    time_scale: float = 1.0
    seed: int | None = None
    dialect: Dialect = Dialect.DOCUMENTED
    webhook_url: str | None = None
    webhook_secret: str | None = "whsec_simulator"  # noqa: S105
    faults: Faults = field(default_factory=Faults)
    # Deployed: the agent's leg of an unanswered call stays up this long (seconds, scaled),
    # then the record is overwritten to ``completed`` and a misleading call.completed is sent.
    # 0 never ends it.
    conference_limit: float = 5400.0
    # Provider API requests per minute enforced (429 past it); None: unlimited, as deployed.
    rate_limit: int | None = None

    def __post_init__(self) -> None:
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError("rate_limit must be >= 1")
        if self.conference_limit < 0:
            raise ValueError("conference_limit must be >= 0")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        if self.price_per_minute < 0:
            raise ValueError("price_per_minute must be >= 0")
        weights = [self.outcome_mix.get(o, 0.0) for o in Outcome]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("outcome_mix needs non-negative weights with a positive sum")
        for name, (low, high) in (
            ("ring_seconds", self.ring_seconds),
            ("talk_seconds", self.talk_seconds),
        ):
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")


def iso_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a `Z`, as the provider writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class CallPlan:
    """Everything decided about a call when it is placed, so timing cannot perturb the draws."""

    outcome: Outcome
    dial_delay: float
    ring: float
    talk: float
    rng_seed: int


def draw_plan(config: SimulatorConfig, rng: random.Random, to: str, dial: int = 0) -> CallPlan:
    """Decide a call's outcome and timings (unscaled seconds) from its script or the mix.

    The call also gets its own generator seed for the webhook faults, drawn here, so concurrent
    lifecycles never interleave draws on the shared generator.
    """
    script = config.scripts.get(to)
    dial_delay = rng.uniform(0.5, 2.0)
    if script is not None:
        outcome, ring, talk = script.outcome_of(dial), script.ring, script.duration
    else:
        outcomes = list(Outcome)
        weights = [config.outcome_mix.get(o, 0.0) for o in outcomes]
        outcome = rng.choices(outcomes, weights=weights)[0]
        ring = rng.uniform(*config.ring_seconds)
        talk = rng.uniform(*config.talk_seconds)
    if outcome is not Outcome.COMPLETED:
        talk = 0.0
    return CallPlan(
        outcome=outcome, dial_delay=dial_delay, ring=ring, talk=talk, rng_seed=rng.getrandbits(64)
    )


@dataclass(kw_only=True)
class WebhookRecord:
    """One webhook the simulator meant to send, and what became of it."""

    status: str
    url: str | None
    payload: dict[str, Any]
    sent_at: str
    http_status: int | None = None
    error: str | None = None
    lost: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as shown by `GET /_simulator/calls`."""
        return {
            "status": self.status,
            "url": self.url,
            "payload": self.payload,
            "sent_at": self.sent_at,
            "http_status": self.http_status,
            "error": self.error,
            "lost": self.lost,
        }


@dataclass(kw_only=True)
class CallRecord:
    """A placed call as the simulator tracks it; mutated as its lifecycle advances."""

    id: str
    to: str
    from_: str
    agent_id: str | None
    metadata: dict[str, Any]
    purpose: str | None
    goal: str | None
    template_id: str | None
    dynamic_variables: dict[str, Any] | None
    webhook_url: str | None
    dialect: Dialect
    outcome: Outcome
    plan: CallPlan
    status: str = "queued"
    duration: int | None = None
    placed_at: str = field(default_factory=iso_now)
    ended_at: str | None = None
    call_sid: str | None = None
    agent_call_sid: str | None = None
    webhooks: list[WebhookRecord] = field(default_factory=list)
    dial: int = 0  # this number's how-manieth call (0 is the first)
    # The provider's record of the call (get-call, list-calls), in the database's spellings.
    record_status: str = "in-progress"
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Whether a phone of the person rang at all (a certain-failure 500 leaves a failed record).
    rang: bool = True
    answered: bool = False
    agent_leg_live: bool = False
    hung_up: bool = False
    overwritten: bool = False

    def set_status(self, status: str) -> None:
        """Move to a document status (``in-progress``, ``no-answer``...) and its record's."""
        self.status = status
        self.record_status = RECORD_STATUS.get(status, status)
        if status == "in-progress":
            self.answered = True

    @classmethod
    def new_id(cls) -> str:
        """A fresh call id in the provider's UUID form."""
        return str(uuid.uuid4())

    @staticmethod
    def new_sid() -> str:
        """A fresh Twilio-style call SID, as the deployed provider returns."""
        return "CA" + uuid.uuid4().hex

    @property
    def terminal(self) -> bool:
        """Whether the call has reached one of the terminal statuses."""
        return self.status in TERMINAL_STATUSES

    @property
    def recording_url(self) -> str | None:
        """Where the recording would be; only answered calls have one."""
        if self.answered and self.status == Outcome.COMPLETED and not self.overwritten:
            return f"https://storage.magpipe.ai/recordings/{self.id}.mp3"
        return None

    @property
    def transcript(self) -> str | None:
        """A canned transcript; only answered calls have one."""
        if self.answered and self.status == Outcome.COMPLETED and not self.overwritten:
            topic = self.purpose or "your account"
            return f"Agent: Hello! I'm calling about {topic}. Caller: Hi there, go ahead."
        return None

    def documented_webhook(self) -> dict[str, Any]:
        """The `call.status_changed` body the documented provider sends for the current status."""
        body: dict[str, Any] = {
            "event": "call.status_changed",
            "call_id": self.id,
            "status": self.status,
            "recording_url": self.recording_url,
            "transcript": self.transcript,
            "metadata": self.metadata,
            "timestamp": iso_now(),
        }
        if self.terminal:
            body["duration"] = self.duration or 0
        return body

    def deployed_webhook(self, default_agent: str | None) -> dict[str, Any]:
        """The single `call.completed` body the deployed provider sends after an answered call."""
        return {
            "event": "call.completed",
            "timestamp": iso_now(),
            "data": {
                "call_record_id": self.id,
                "direction": "outbound",
                "caller_number": self.to,
                "service_number": self.from_,
                "agent_id": self.agent_id or default_agent,
                "agent_name": "Simulated Agent",
                "duration_seconds": self.duration or 0,
                "transcript": self.transcript,
                "summary": f"Simulated call to {self.to} completed.",
                "extracted_data": {},
                "status": self.status,
            },
        }

    def record(self, *, with_metadata: bool) -> dict[str, Any]:
        """The provider's record as get-call (``with_metadata``) or list-calls shows it.

        get-call drops metadata keys starting with ``_``; list-calls sends no metadata."""
        body: dict[str, Any] = {
            "id": self.id,
            "agent_id": self.agent_id,
            "agent_name": "Simulated Agent",
            "from_number": self.from_,
            "to_number": self.to,
            "direction": "outbound",
            "status": self.record_status,
            "duration": self.duration,
            "sentiment": None,
            "call_summary": None,
            "started_at": self.placed_at,
            "ended_at": self.ended_at,
            "created_at": self.created.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        }
        if with_metadata:
            body["recording_url"] = self.recording_url
            body["transcript"] = self.transcript
            body["metadata"] = {k: v for k, v in self.metadata.items() if not k.startswith("_")}
        return body

    def to_json(self) -> dict[str, Any]:
        """The record as shown by `GET /_simulator/calls`."""
        return {
            "id": self.id,
            "record_status": self.record_status,
            "rang": self.rang,
            "hung_up": self.hung_up,
            "agent_leg_live": self.agent_leg_live,
            "overwritten": self.overwritten,
            "agent_call_sid": self.agent_call_sid,
            "call_sid": self.call_sid,
            "to": self.to,
            "from": self.from_,
            "agent_id": self.agent_id,
            "metadata": self.metadata,
            "purpose": self.purpose,
            "goal": self.goal,
            "template_id": self.template_id,
            "webhook_url": self.webhook_url,
            "dialect": self.dialect.value,
            "status": self.status,
            "outcome": self.outcome.value,
            "duration": self.duration,
            "placed_at": self.placed_at,
            "ended_at": self.ended_at,
            "webhooks": [w.to_json() for w in self.webhooks],
        }
