"""What a delivery's context can do, over the store: the durable side of the plugin API.

Every action is keyed by the delivery that takes it, so a redelivered event (the handler ran,
the daemon died before marking the delivery done) repeats none of its effects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from orchestrator import exceptions
from orchestrator.model import Event, NewCall
from orchestrator.store.facade import Store

# A custom event name: what follows plugin.<instance>. in its type.
_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


class StoreCallActions:
    """:class:`orchestrator.plugin.CallActions` for one delivery of ``event``."""

    def __init__(self, store: Store, event: Event, *, delivery_id: str, handler: str) -> None:
        self._store = store
        self._event = event
        self._delivery_id = delivery_id
        self._handler = handler

    async def queue(self, new: NewCall, *, key: str | None = None) -> str:
        """Queue a new call; the same ``key`` (default: this delivery) returns the same call."""
        idempotency = f"plugin:{self._handler}:{key or self._delivery_id}"
        call, _ = await self._store.create_call(new, idempotency_key=idempotency)
        return call.id

    async def retry(self, *, at: float, reason: str | None = None) -> Event | None:
        """Schedule this call's next attempt at epoch ``at``."""
        return await self._store.schedule_retry(self._event, at=at, reason=reason)

    async def give_up(self, reason: str) -> Event | None:
        """Emit ``call.retries_exhausted`` for this call (once)."""
        return await self._store.give_up(self._event, reason=reason)

    async def cancel(self, reason: str) -> bool:
        """Cancel this call's queued or scheduled attempt, if any."""
        return bool(await self._store.cancel(self._event.call.id, reason=reason))

    async def attempts(self) -> list[Mapping[str, Any]]:
        """This call's attempts so far."""
        rows = await self._store.attempts_of(self._event.call.id)
        keys = ("number", "status", "error_code", "created_at", "placed_at", "ended_at")
        return [{k: getattr(row, k) for k in keys} for row in rows]


class StoreKeyValue:
    """:class:`orchestrator.plugin.KeyValue` scoped to one plugin instance."""

    def __init__(self, store: Store, scope: str) -> None:
        self._store = store
        self._scope = scope

    async def get(self, key: str) -> Any:
        """The value under ``key``, or None."""
        return await self._store.kv_get(self._scope, key)

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``."""
        try:
            await self._store.kv_set(self._scope, key, value)
        except (TypeError, ValueError) as exc:
            raise exceptions.InputError(
                f"value for {key!r} is not JSON-serialisable: {exc}", plugin=self._scope
            ) from None

    async def delete(self, key: str) -> None:
        """Remove ``key``."""
        await self._store.kv_delete(self._scope, key)


class StoreEmitter:
    """:class:`orchestrator.plugin.Emitter`: ``plugin.<instance>.<name>`` about this call."""

    def __init__(self, store: Store, event: Event, *, delivery_id: str, handler: str) -> None:
        self._store = store
        self._event = event
        self._delivery_id = delivery_id
        self._handler = handler

    async def __call__(self, name: str, data: Mapping[str, Any] | None = None) -> Event | None:
        """Emit the event (once per delivery and name)."""
        if not _NAME.fullmatch(name):
            raise exceptions.InputError(
                f"custom event name {name!r}: lowercase words separated by dots",
                plugin=self._handler,
            )
        type_ = f"plugin.{self._handler}.{name}"
        return await self._store.emit(
            self._event, type_, key=f"{self._delivery_id}:{type_}", data=dict(data or {})
        )
