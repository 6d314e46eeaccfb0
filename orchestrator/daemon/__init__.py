"""The daemon: the long-running loops over one store, started, watched and shut down together.

- :mod:`orchestrator.daemon.supervisor`: :class:`Daemon`, which starts every part as a named
  task, watches them (a crash stops the daemon) and shuts them down in order;
- :mod:`orchestrator.daemon.dialer`: claims queued attempts and places them;
- :mod:`orchestrator.daemon.reconciler`: looks calls up at the provider and hangs up the
  overdue ones;
- :mod:`orchestrator.daemon.timers`: the watchdog's timers, lease sweeps and the heartbeat.
"""

from __future__ import annotations

from orchestrator.daemon.supervisor import Daemon, subscriptions_from

__all__ = ["Daemon", "subscriptions_from"]
