"""Helpers for testing rules and plugins: :func:`make_event` builds an event with sensible
defaults (:mod:`.events`); :class:`Harness` runs a plugin's handler as the daemon does, with
recording fakes (:mod:`.harness`); :func:`run_rule_tests` runs rule tests, as
``orchestrator rules test FILE`` does (:mod:`.rule_tests`)."""

from orchestrator.testing.events import DEFAULT_CALL, DEFAULT_TIME, make_event
from orchestrator.testing.harness import (
    CallAction,
    Canceled,
    Emitted,
    GaveUp,
    Harness,
    KvDeleted,
    KvSet,
    KvWrite,
    MemoryKeyValue,
    Outcome,
    Queued,
    RecordingCalls,
    RecordingEmitter,
    Result,
    Retried,
)
from orchestrator.testing.rule_tests import RuleTestResult, RuleTestRun, run_rule_tests

__all__ = [
    "DEFAULT_CALL",
    "DEFAULT_TIME",
    "CallAction",
    "Canceled",
    "Emitted",
    "GaveUp",
    "Harness",
    "KvDeleted",
    "KvSet",
    "KvWrite",
    "MemoryKeyValue",
    "Outcome",
    "Queued",
    "RecordingCalls",
    "RecordingEmitter",
    "Result",
    "Retried",
    "RuleTestResult",
    "RuleTestRun",
    "make_event",
    "run_rule_tests",
]
