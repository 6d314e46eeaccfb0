"""The provider's request budget per API key, enforced (``--rate-limit N``): at most N requests
of the provider API in any 60 seconds, the rest answered ``429`` with ``Retry-After``. Every
answer carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
(epoch seconds when a request is free again), as rate-limited APIs commonly send them.

The provider documents 100 a minute and 1,000 an hour but, as deployed, enforces nothing; the
simulator enforces only when asked, so a test can show the daemon never needs it to.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from orchestrator.provider.simulator.answers import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The provider API's paths start with this; the inspection routes are never limited.
API_PREFIX = "/functions/v1/"
WINDOW = 60.0


class KeyBudget:
    """A sliding window of the requests accepted in the last :data:`WINDOW` seconds."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.accepted: collections.deque[float] = collections.deque()
        #: Requests answered 429, and the most accepted in any window so far.
        self.limited = 0
        self.busiest = 0

    def take(self) -> float | None:
        """Accept one request (None), or the seconds until one would be (it is refused)."""
        now = self.clock()
        while self.accepted and self.accepted[0] <= now - WINDOW:
            self.accepted.popleft()
        if len(self.accepted) >= self.per_minute:
            self.limited += 1
            return self.accepted[0] + WINDOW - now
        self.accepted.append(now)
        self.busiest = max(self.busiest, len(self.accepted))
        return None

    def headers(self) -> dict[str, str]:
        """The X-RateLimit headers of an answer given now."""
        now = self.clock()
        reset = self.accepted[0] + WINDOW if self.accepted else now
        return {
            "X-RateLimit-Limit": str(self.per_minute),
            "X-RateLimit-Remaining": str(max(0, self.per_minute - len(self.accepted))),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }


def middleware(budget: KeyBudget) -> Middleware:
    """An aiohttp middleware that spends ``budget`` on every provider API request."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        wait = budget.take()
        if wait is not None:
            retry = str(max(1, math.ceil(wait)))
            headers = {"Retry-After": retry, **budget.headers()}
            return error_response(429, "RATE_LIMITED", "Too many requests", headers)
        response = await handler(request)
        if not response.prepared:
            response.headers.update(budget.headers())
        return response

    return limit
