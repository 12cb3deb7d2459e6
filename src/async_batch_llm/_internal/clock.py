"""The one place timing components read time and sleep.

Production code uses :class:`LoopClock` (the running event loop's monotonic clock). Tests pass a
:class:`async_batch_llm.testing.clock.FakeClock`, which only moves when the test advances it, so
cooldowns, slow start, backoff and quota admission are tested exactly and instantly.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "LoopClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds plus a matching sleep."""

    def time(self) -> float:
        """Current monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time (at least one loop turn)."""
        ...


class LoopClock:
    """The running event loop's clock (``loop.time()``) and :func:`asyncio.sleep`."""

    __slots__ = ()

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "LoopClock()"
