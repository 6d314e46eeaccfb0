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
from orchestrator.daemon import dialer, reconciler, timers
from orchestrator.model import CallStatus, Event, new_id
from orchestrator.provider import client
from orchestrator.store import CheckTiming, Store

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
        lookups = cfg.magpipe.reconcile
        checks = (
            CheckTiming(
                after=lookups.after,
                every=lookups.every,
                ambiguous_grace=max(lookups.ambiguous_grace, cfg.magpipe.timeout),
                # The last look-up (and hang-up) before the watchdog ends a call regardless.
                final_grace=max(30.0, 4 * cfg.magpipe.timeout),
            )
            if lookups.enabled
            else None
        )
        self.store = Store(connectors.connect(cfg.store), router=self.bus.route, checks=checks)
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
        self._workers: list[bus.DeliveryWorker] = []
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
        """Run until SIGTERM/SIGINT (or :attr:`stopping` is set); return the exit status."""
        cfg = self.cfg
        await self.store.open()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        magpipe = client.MagpipeClient(
            token=cfg.magpipe.token,
            base_url=cfg.magpipe.base_url,
            timeout=cfg.magpipe.timeout,
            send_aliases=cfg.magpipe.send_aliases,
        )
        runners: list[web.AppRunner] = []
        tasks: list[asyncio.Task[None]] = []
        status = 0
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        if cfg.dialer.do_not_call:
            self._do_not_call = await asyncio.to_thread(dnc.DoNotCall.load, cfg.dialer.do_not_call)
        try:
            webhook_host, webhook_port = _address(cfg.webhooks.listen)
            secret = cfg.magpipe.webhook_secret
            intake_app = intake.Intake(
                self.store,
                publish=self.publish,
                secret=secret.get_secret_value() if secret else None,
                max_body=cfg.webhooks.max_body,
                metrics=self.metrics,
            ).app()
            self.urls["webhooks"] = await self._serve(
                intake_app, webhook_host, webhook_port, runners
            )
            public = (cfg.webhooks.public_url or self.urls["webhooks"]).rstrip("/")
            self._dialer = dialer.Dialer(
                self.store,
                magpipe,
                dialer.DialerSettings(
                    max_live_calls=cfg.dialer.max_live_calls,
                    calls_per_second=cfg.dialer.calls_per_second,
                    max_call_duration=cfg.dialer.max_call_duration,
                    webhook_base=public + intake.PATH,
                    agent_id=cfg.defaults.agent_id,
                    lease=self.lease,
                    max_live_per_caller_id=cfg.dialer.max_live_per_caller_id,
                    max_attempts_per_person_per_day=cfg.dialer.max_attempts_per_person_per_day,
                    window=cfg.dialer.window,
                    default_time_zone=cfg.dialer.default_time_zone,
                    do_not_call=self._do_not_call,
                    balance_probe=cfg.dialer.balance_probe,
                    unauthorized_probe=cfg.dialer.unauthorized_probe,
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
            )
            api_host, api_port = _address(cfg.api.listen)
            self.urls["api"] = await self._serve(control.app(), api_host, api_port, runners)
            await self.bus.start_handlers()
            self._workers = self.bus.workers(self.store, self.owner, http, self.metrics)
            if self.store.checks is not None:
                self._reconciler = reconciler.Reconciler(
                    self.store,
                    magpipe,
                    reconciler.ReconcileSettings(
                        max_per_minute=cfg.magpipe.reconcile.max_per_minute,
                        hangup_on_timeout=cfg.dialer.hangup_on_timeout,
                    ),
                    publish=self.publish,
                    metrics=self.metrics,
                )
            keeper = timers.Timekeeper(
                self.store,
                publish=self.publish,
                fired=self._reconciler.wake.set if self._reconciler else None,
            )
            heartbeat = timers.Heartbeat(
                self.store,
                owner=self.owner,
                lease=self.lease,
                inflight=lambda: (
                    list(self._dialer.placing) if self._dialer else [],
                    [d for w in self._workers for d in w.delivering],
                ),
            )
            tasks.append(self._task("dialer", self._dialer.run()))
            tasks.append(self._task("timers", keeper.run()))
            if self._reconciler is not None:
                tasks.append(self._task("reconciler", self._reconciler.run()))
            tasks.append(self._task("heartbeat", heartbeat.run()))
            if isinstance(self.store.connector, connector.Notifier):
                tasks.append(self._task("listener", self.store.connector.listen(self._notified)))
            if self._do_not_call is not None:
                tasks.append(self._task("do-not-call", self._refresh_do_not_call()))
            self._worker_tasks = [
                self._task(f"deliveries:{w.sub.name}", w.run()) for w in self._workers
            ]
            log.info(
                "daemon.started",
                owner=self.owner,
                store=connector.redact_url(cfg.store),
                handlers=[s.name for s in self.bus.subscriptions],
                **self.urls,
            )
            status = await self._watch(tasks, http)
            log.info("daemon.stopping", grace=self.shutdown_grace)
            deadline = time.monotonic() + self.shutdown_grace
            keeper.stop()
            if self._reconciler is not None:
                self._reconciler.stop()
            await asyncio.gather(
                self._dialer.stop(deadline),
                *(w.stop(deadline) for w in self._workers),
                return_exceptions=True,
            )
            heartbeat.stop()
            everything = [*tasks, *self._worker_tasks]
            await asyncio.wait(everything, timeout=max(0.1, deadline - time.monotonic()))
            await self.bus.stop_handlers()
        finally:
            tasks = [*tasks, *self._worker_tasks]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
            try:
                await self.store.release(self.owner)
            except exceptions.StoreError as exc:
                log.error("daemon.release_failed", error=str(exc))
            for runner in runners:
                await runner.cleanup()
            await magpipe.aclose()
            await http.aclose()
            await self.store.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("daemon.stopped", status=status)
        return status

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
        self._workers = self.bus.workers(self.store, self.owner, http, self.metrics)
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

    async def _serve(
        self, app: web.Application, host: str, port: int, runners: list[web.AppRunner]
    ) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise exceptions.ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        bound = runner.addresses[0]
        return f"http://{host}:{bound[1]}"
