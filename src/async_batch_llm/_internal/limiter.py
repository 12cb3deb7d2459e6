"""Proactive request limiter: a leaky bucket of ``max_rate`` acquisitions per ``period`` seconds.

Same semantics as ``aiolimiter.AsyncLimiter(max_rate, period)`` (burst capacity ``max_rate``),
but reading time through the injected clock so tests are exact. Waiters are served in FIFO order
and each computes its exact wait; nothing polls.
"""

from __future__ import annotations

import asyncio
from collections import deque

from async_batch_llm._internal.clock import Clock

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """Allow ``max_rate`` acquisitions per ``period`` seconds with a burst of ``max_rate``."""

    def __init__(self, max_rate: float, period: float, clock: Clock) -> None:
        self.max_rate = float(max_rate)
        self.period = float(period)
        self._clock = clock
        self._rate_per_sec = self.max_rate / self.period
        # The bucket must hold at least one request: with max_rate < 1 (say 0.5 a minute) a
        # capacity of max_rate would never admit anything; one request per 1/rate s is meant.
        self._capacity = max(self.max_rate, 1.0)
        self._level = 0.0
        self._last = 0.0
        self._started = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.acquired = 0

    def _leak(self) -> None:
        now = self._clock.time()
        if self._started:
            self._level = max(0.0, self._level - (now - self._last) * self._rate_per_sec)
        self._started = True
        self._last = now

    def _has_capacity(self) -> bool:
        self._leak()
        return self._level + 1 <= self._capacity

    async def acquire(self) -> None:
        """Wait until one more request fits in the bucket, then take it."""
        if not self._waiters and self._has_capacity():
            self._level += 1
            self.acquired += 1
            return
        loop = asyncio.get_running_loop()
        ticket: asyncio.Future[None] = loop.create_future()
        self._waiters.append(ticket)
        try:
            while True:
                if self._waiters[0] is ticket and self._has_capacity():
                    break
                if self._waiters[0] is ticket:
                    needed = (self._level + 1 - self._capacity) / self._rate_per_sec
                    await self._clock.sleep(needed)
                else:
                    await asyncio.shield(ticket)
        finally:
            removed_head = self._waiters and self._waiters[0] is ticket
            self._waiters.remove(ticket)
            if removed_head and self._waiters and not self._waiters[0].done():
                self._waiters[0].set_result(None)
        self._level += 1
        self.acquired += 1

    def __repr__(self) -> str:
        return (
            f"RequestLimiter(max_rate={self.max_rate}, period={self.period}, "
            f"level={self._level:.2f}, waiting={len(self._waiters)})"
        )
