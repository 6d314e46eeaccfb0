"""The daemon: intake, control API, dialer, delivery workers and timers as named, watched
tasks over one store.

A task that crashes stops the daemon loudly (exit status 1). SIGTERM or SIGINT stops it
gracefully: no new claims, in-flight work finishes until the deadline, leases are released,
exit status 0. A restart picks up from the store exactly where it stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import httpx
import structlog
from aiohttp import web

from orchestrator import (
    api,
    bus,
    config,
    connectors,
    dnc,
    exceptions,
    intake,
    metrics,
    plugin,
    rules,
)
from orchestrator.connectors import protocol as connector
from orchestrator.daemon import delivery, dialer, reconciler, settings, timers
from orchestrator.model import CallStatus, Event, new_id
from orchestrator.store import Store

log = structlog.get_logger(__name__)


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise exceptions.ConfigError(f"listen address {listen!r} is not HOST:PORT") from None


def _source(event: Event) -> str:
    """What told us a call's terminal status, for the settled-calls metric."""
    source = event.data.get("source")
    if isinstance(source, str):
        return source
    error = event.error or {}
    if event.type == "call.timed_out":
        return "watchdog"
    if event.type == "call.rejected":
        return "dialer"
    if error.get("code") == "CAMPAIGN_CANCELED":
        return "cancel"
    return "webhook"


def subscriptions_from(cfg: config.Config) -> list[bus.Subscription]:
    """The handler subscriptions the config's plugins and rules describe; ConfigError if any
    rule or plugin is invalid."""
    subs, problems = rules.subscriptions(cfg.plugins, cfg.rules, plugin.installed())
    if problems:
        raise exceptions.ConfigError(
            f"{len(problems)} problem(s) in rules and plugins:\n  " + "\n  ".join(problems)
        )
    return subs


class Daemon:
    """One orchestrator process."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        subscriptions: Sequence[bus.Subscription] | None = None,
        shutdown_grace: float = 10.0,
        lease: float = 30.0,
        config_path: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self.bus = bus.EventBus(subscriptions_from(cfg) if subscriptions is None else subscriptions)
        self.store = Store(
            connectors.connect(cfg.store),
            router=self.bus.route,
            checks=settings.check_timing(cfg),
            budget=settings.request_budget(cfg),
        )
        self.shutdown_grace = shutdown_grace
        # Work this daemon holds is leased for this long and kept alive by the heartbeat.
        self.lease = lease
        self.stopping = asyncio.Event()
        self.urls: dict[str, str] = {}
        self.metrics = metrics.Metrics()
        self.config_path = config_path  # re-read on SIGHUP
        self._dialer: dialer.Dialer | None = None
        self._reconciler: reconciler.Reconciler | None = None
        self._reload = asyncio.Event()
        self._workers: list[delivery.DeliveryWorker] = []
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        self._magpipe = settings.magpipe_client(cfg)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._keeper: timers.Timekeeper | None = None
        self._heartbeat: timers.Heartbeat | None = None
        self._signals = False
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._do_not_call: dnc.DoNotCall | None = None

    def publish(self, events: Iterable[Event]) -> None:
        """Wake whoever the durable ``events`` concern."""
        events = list(events)
        for event in events:
            self.metrics.events.labels(event.type).inc()
            if event.status is not None and CallStatus(event.status).terminal:
                self.metrics.settled.labels(_source(event)).inc()
        self.bus.publish(events)
        if self._dialer is not None and any(
            e.status is not None and CallStatus(e.status).terminal for e in events
        ):
            self._dialer.wake.set()  # a slot was freed

    def _notified(self, topic: str) -> None:
        """Another daemon (or this one) committed work: wake whoever does it."""
        if topic == "dial" and self._dialer is not None:
            self._dialer.wake.set()
        elif topic == "deliver":
            self.bus.wake_all()

    async def _ready(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {}
        try:
            await self.store.ping()
            detail["store"] = "ok"
        except exceptions.StoreError as exc:
            detail["store"] = str(exc)
        usable = self._dialer is not None and self._dialer.usable
        try:  # the fleet's dialing state: one daemon's 401 stops every daemon's dialing
            state = await self.store.dialing_state()
            usable = usable and state["reason"] != "unauthorized"
            if state["reason"]:
                detail["dialing"] = f"paused ({state['reason']})"
        except exceptions.StoreError:
            pass
        detail["provider"] = "ok" if usable else "unauthorized"
        return detail["store"] == "ok" and usable, detail

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :attr:`stopping` is set); return the exit status.

        Once the store is open, three phases: :meth:`_start` starts every part as a named task,
        :meth:`_watch` waits for a signal or a crash, :meth:`_shut_down` drains in order. Each
        part :meth:`_start` managed to open is closed by :meth:`_tear_down`, whatever happened.
        """
        status = 0
        await self.store.open()
        try:
            await self._start()
            status = await self._watch(self._tasks, self._http)
            await self._shut_down()
        finally:
            await self._tear_down()
        log.info("daemon.stopped", status=status)
        return status

    async def _start(self) -> None:
        """Bind the intake and the control API, start every task (the store is open)."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        self._signals = True
        if cfg.dialer.do_not_call:
            self._do_not_call = await asyncio.to_thread(dnc.DoNotCall.load, cfg.dialer.do_not_call)
        webhook_host, webhook_port = _address(cfg.webhooks.listen)
        secret = cfg.magpipe.webhook_secret
        intake_app = intake.Intake(
            self.store,
            publish=self.publish,
            secret=secret.get_secret_value() if secret else None,
            max_body=cfg.webhooks.max_body,
            metrics=self.metrics,
        ).app()
        self.urls["webhooks"] = await self._serve(intake_app, webhook_host, webhook_port)
        public = (cfg.webhooks.public_url or self.urls["webhooks"]).rstrip("/")
        self._dialer = dialer.Dialer(
            self.store,
            self._magpipe,
            settings.dialer_params(
                cfg,
                webhook_base=public + intake.PATH,
                lease=self.lease,
                do_not_call=self._do_not_call,
            ),
            owner=self.owner,
            publish=self.publish,
            metrics=self.metrics,
        )
        api_token = cfg.api.token
        control = api.ControlApi(
            self.store,
            token=api_token.get_secret_value() if api_token else None,
            defaults=cfg.defaults,
            on_queued=self._dialer.wake.set,
            ready=self._ready,
            metrics=self.metrics,
            plan=settings.estimate_plan(cfg),
        )
        api_host, api_port = _address(cfg.api.listen)
        self.urls["api"] = await self._serve(control.app(), api_host, api_port)
        await self.bus.start_handlers()
        self._workers = delivery.workers(self.bus, self.store, self.owner, self._http, self.metrics)
        if self.store.checks is not None:
            self._reconciler = reconciler.Reconciler(
                self.store,
                self._magpipe,
                settings.reconciler_params(cfg),
                publish=self.publish,
                metrics=self.metrics,
            )
        self._keeper = timers.Timekeeper(
            self.store,
            publish=self.publish,
            fired=self._reconciler.wake.set if self._reconciler else None,
        )
        self._heartbeat = timers.Heartbeat(
            self.store,
            owner=self.owner,
            lease=self.lease,
            inflight=lambda: (
                list(self._dialer.placing) if self._dialer else [],
                [d for w in self._workers for d in w.delivering],
            ),
        )
        self._tasks.append(self._task("dialer", self._dialer.run()))
        self._tasks.append(self._task("timers", self._keeper.run()))
        if self._reconciler is not None:
            self._tasks.append(self._task("reconciler", self._reconciler.run()))
        self._tasks.append(self._task("heartbeat", self._heartbeat.run()))
        if isinstance(self.store.connector, connector.Notifier):
            self._tasks.append(self._task("listener", self.store.connector.listen(self._notified)))
        if self._do_not_call is not None:
            self._tasks.append(self._task("do-not-call", self._refresh_do_not_call()))
        self._worker_tasks = [
            self._task(f"deliveries:{w.sub.name}", w.run()) for w in self._workers
        ]
        for problem in config.limit_warnings(cfg):
            log.warning("config.over_documented_limit", problem=str(problem))
        log.info(
            "daemon.started",
            owner=self.owner,
            store=connector.redact_url(cfg.store),
            handlers=[s.name for s in self.bus.subscriptions],
            **self.urls,
        )

    async def _shut_down(self) -> None:
        """Drain, in order: stop the timers and look-ups (nothing new becomes due), stop the
        claim loops and let their work finish until the grace runs out, then stop the heartbeat
        (it kept that work's leases alive) and the handlers."""
        log.info("daemon.stopping", grace=self.shutdown_grace)
        deadline = time.monotonic() + self.shutdown_grace
        if self._keeper is not None:
            self._keeper.stop()
        if self._reconciler is not None:
            self._reconciler.stop()
        await asyncio.gather(
            *([self._dialer.stop(deadline)] if self._dialer is not None else []),
            *(w.stop(deadline) for w in self._workers),
            return_exceptions=True,
        )
        if self._heartbeat is not None:
            self._heartbeat.stop()
        everything = [*self._tasks, *self._worker_tasks]
        if everything:
            await asyncio.wait(everything, timeout=max(0.1, deadline - time.monotonic()))
        await self.bus.stop_handlers()

    async def _tear_down(self) -> None:
        """Cancel what is left, release this daemon's leases (another daemon takes its work
        over at once), close the servers, the clients and the store; then the signals."""
        tasks = [*self._tasks, *self._worker_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        try:
            await self.store.release(self.owner)
        except exceptions.StoreError as exc:
            log.error("daemon.release_failed", error=str(exc))
        for runner in self._runners:
            await runner.cleanup()
        await self._magpipe.aclose()
        await self._http.aclose()
        await self.store.close()
        if self._signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _watch(self, tasks: list[asyncio.Task[None]], http: httpx.AsyncClient) -> int:
        """Wait for SIGTERM/SIGINT (0), a crashed task (1), or SIGHUP (reload, go on)."""
        while True:
            stop = asyncio.ensure_future(self.stopping.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            watched = [stop, reload, *tasks, *self._worker_tasks]
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            crashed = [t for t in done if t is not stop and t is not reload]
            for task in crashed:
                # A background task must never end on its own: that is a crash.
                error = task.exception() if not task.cancelled() else None
                log.critical("daemon.task_crashed", task=task.get_name(), error=repr(error))
            if crashed:
                return 1
            if self.stopping.is_set():
                return 0
            self._reload.clear()
            await self.reload(http)

    async def reload(self, http: httpx.AsyncClient) -> bool:
        """SIGHUP: read the config file again and swap in its plugins and rules. An invalid
        file changes nothing and says why; deliveries in flight finish first."""
        if self.config_path is None:
            log.warning("daemon.reload_skipped", reason="the daemon was not started from a file")
            return False
        loaded = await asyncio.to_thread(rules.load, self.config_path)
        if not loaded.ok or loaded.config is None:
            log.error(
                "daemon.reload_refused",
                problems=[str(p) for p in loaded.problems],
                keeping="the running config",
            )
            return False
        deadline = time.monotonic() + self.shutdown_grace
        await asyncio.gather(*(w.stop(deadline) for w in self._workers), return_exceptions=True)
        if self._worker_tasks:
            await asyncio.wait(self._worker_tasks, timeout=max(0.1, deadline - time.monotonic()))
        for task in self._worker_tasks:
            task.cancel()
        await self.bus.stop_handlers()
        self.bus = bus.EventBus(loaded.subscriptions)
        self.store.router = self.bus.route
        await self.bus.start_handlers()
        self._workers = delivery.workers(self.bus, self.store, self.owner, http, self.metrics)
        self._worker_tasks = [
            self._task(f"deliveries:{w.sub.name}", w.run()) for w in self._workers
        ]
        self.bus.wake_all()
        if loaded.config.dialer != self.cfg.dialer or loaded.config.magpipe != self.cfg.magpipe:
            log.warning("daemon.reload_partial", restart_for="magpipe and dialer settings")
        log.info("daemon.reloaded", routes=[s.name for s in self.bus.subscriptions])
        return True

    async def _refresh_do_not_call(self) -> None:
        """Re-read the do-not-call file when it changes (a broken file keeps the old list)."""
        while self._do_not_call is not None:
            await asyncio.sleep(10.0)
            try:
                if await asyncio.to_thread(self._do_not_call.refresh):
                    log.info("daemon.do_not_call_reloaded", numbers=len(self._do_not_call))
            except exceptions.OrchestratorError as exc:
                log.error("daemon.do_not_call_invalid", error=str(exc))

    def _task(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.create_task(coro, name=name)

    async def _serve(self, app: web.Application, host: str, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise exceptions.ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        bound = runner.addresses[0]
        return f"http://{host}:{bound[1]}"
