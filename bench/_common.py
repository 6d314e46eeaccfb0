"""Shared pieces of the benchmarks: quiet logs, a simulator in its own process, numbers,
percentiles and the one JSON line each bench prints."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator import log as orchestrator_log


def quiet() -> None:
    """Log only warnings and errors, to stderr: stdout is for the one JSON line."""
    orchestrator_log.configure(level="warning", json=True, stream=sys.stderr)


def number(n: int) -> str:
    """The ``n``-th of 8,000,000 distinct valid, dialable US numbers (+1 415 200-0000 on)."""
    return f"+1415{200 + n // 10000:03d}{n % 10000:04d}"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` (nearest rank); 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu() -> float:
    """CPU seconds used by this process so far (every thread: the SQLite connector's too)."""
    return time.process_time()


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    """Print the bench's one JSON line."""
    result.setdefault("date", datetime.now(UTC).strftime("%Y-%m-%d"))
    result.setdefault("cpus", os.cpu_count())
    print(json.dumps(result), flush=True)


# -- a simulator in a process of its own ------------------------------------------------------


def _serve_simulator(config: dict[str, Any], conn: Any) -> None:
    quiet()
    asyncio.run(_simulator_main(config, conn))


async def _simulator_main(config: dict[str, Any], conn: Any) -> None:
    from orchestrator.provider.simulator import Simulator
    from orchestrator.provider.simulator.model import Faults, SimulatorConfig

    faults = Faults(**config.pop("faults", {}))
    sim = Simulator(SimulatorConfig(faults=faults, **config))
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:  # a blocking pipe read, off the event loop
        while True:
            try:
                command = conn.recv()
            except EOFError:
                command = "stop"
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command == "stop":
                return

    url = await sim.start()
    threading.Thread(target=read, daemon=True).start()
    conn.send({"url": url, "cpu": cpu()})
    while True:
        command = await commands.get()
        if command == "stop":
            await sim.stop()
            conn.send({"stats": sim.stats(), "cpu": cpu()})
            return
        conn.send({"stats": sim.stats(), "cpu": cpu()})


class SimulatorProcess:
    """A :class:`~orchestrator.provider.simulator.Simulator` serving from a child process, so its CPU
    is not the orchestrator's. ``config`` holds SimulatorConfig's fields (``faults`` a dict).

    ``probe()`` returns ``{"stats": sim.stats(), "cpu": its CPU seconds so far}``.
    """

    def __init__(self, **config: Any) -> None:
        self.config = config
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_simulator, args=(config, child), daemon=True)
        self.url = ""
        self._lock = threading.Lock()

    def start(self) -> str:
        self._proc.start()
        hello = self._conn.recv()
        self.url = hello["url"]
        return self.url

    def probe(self) -> dict[str, Any]:
        with self._lock:
            self._conn.send("probe")
            answer: dict[str, Any] = self._conn.recv()
        return answer

    async def aprobe(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.probe)

    def stop(self) -> dict[str, Any]:
        with self._lock:
            self._conn.send("stop")
            final: dict[str, Any] = self._conn.recv()
        self._proc.join(10)
        return final

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            try:
                self.stop()
            except (OSError, EOFError):
                self._proc.kill()


class LoopLag:
    """Watches the event loop: the longest time a ``interval``-second sleep overshot, i.e. how
    long the loop was kept from running anything else (webhooks, API requests...)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.max = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.max = max(self.max, time.perf_counter() - began - self.interval)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def max_ms(self) -> float:
        return round(self.max * 1000, 1)
