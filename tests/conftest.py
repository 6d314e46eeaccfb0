"""Shared fixtures: a real simulator on a loopback port, started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from orchestrator.simulation import SimulatorConfig
from orchestrator.simulator import Simulator

StartSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start a simulator (fast time scale, fixed seed unless overridden) on an ephemeral port."""
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        settings: dict[str, Any] = {"time_scale": 0.001, "seed": 7, **overrides}
        sim = Simulator(SimulatorConfig(**settings))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()
