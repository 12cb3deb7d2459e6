"""One rate-limit cooldown shared by every worker, and the slow-start ramp after it.

Event-driven: a pause is an :class:`asyncio.Event` that is clear while a cooldown runs. The
worker that hits the first rate limit becomes the coordinator and sleeps the cooldown through the
injected clock; every other worker awaits the event. Nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.clock import Clock
from async_batch_llm.observers.base import ProcessingEvent

if TYPE_CHECKING:
    from async_batch_llm.strategies.rate_limit import RateLimitStrategy

__all__ = ["CooldownCoordinator"]

logger = logging.getLogger("async_batch_llm.parallel")

Emit = Callable[[ProcessingEvent, dict[str, Any]], Awaitable[None]]


class CooldownCoordinator:
    """Shared cooldown state of one processor run.

    Args:
        strategy: decides the cooldown length and the slow-start delays.
        clock: time source for the cooldown sleep and its measured duration.
        emit: coroutine that delivers ``COOLDOWN_STARTED`` / ``COOLDOWN_ENDED`` to observers.
    """

    def __init__(self, strategy: RateLimitStrategy, clock: Clock, emit: Emit) -> None:
        self._strategy = strategy
        self._clock = clock
        self._emit = emit
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.consecutive = 0
        self.slow_start_active = False
        self.items_since_resume = 0
        self.cooldowns = 0
        self.total_cooldown_seconds = 0.0

    @property
    def paused(self) -> bool:
        """True while a cooldown is running."""
        return not self._resumed.is_set()

    async def wait_resumed(self) -> None:
        """Return at once when no cooldown runs; otherwise when the running one ends."""
        if not self._resumed.is_set():
            await self._resumed.wait()

    def reset_consecutive(self) -> None:
        """A call succeeded: the next rate limit starts the backoff sequence again."""
        self.consecutive = 0

    async def on_rate_limit(self, worker_id: int, retry_after: float | None = None) -> None:
        """Take part in the shared cooldown; returns once it has ended.

        The first worker to arrive while no cooldown runs coordinates it: it asks the strategy for
        the length (at least ``retry_after`` when the provider sent one), pauses every worker,
        sleeps, resets slow start and resumes everyone. Later arrivals just wait.
        """
        if not self._resumed.is_set():
            await self._resumed.wait()
            return
        self.consecutive += 1
        self.slow_start_active = True
        self._resumed.clear()
        started = self._clock.time()
        error: BaseException | None = None
        try:
            duration, error = await self._begin(worker_id, retry_after)
            self.cooldowns += 1
            await self._emit(
                ProcessingEvent.COOLDOWN_STARTED,
                {"worker_id": worker_id, "duration": duration, "consecutive": self.consecutive},
            )
            if duration > 0:
                logger.warning(
                    "rate limit hit (consecutive %d): all workers paused for %.1fs",
                    self.consecutive,
                    duration,
                )
                await self._clock.sleep(duration)
        finally:
            # Resume even when cancelled mid-cooldown, so no worker stays parked.
            self.items_since_resume = 0
            self._resumed.set()
        elapsed = self._clock.time() - started
        self.total_cooldown_seconds += elapsed
        payload: dict[str, Any] = {"duration": elapsed}
        if error is not None:
            payload["error"] = str(error)[:200]
        await self._emit(ProcessingEvent.COOLDOWN_ENDED, payload)

    async def _begin(
        self, worker_id: int, retry_after: float | None
    ) -> tuple[float, Exception | None]:
        """The new cooldown's length (at least ``retry_after``), and the strategy's failure."""
        try:
            duration = float(await self._strategy.on_rate_limit(worker_id, self.consecutive))
        except Exception as exc:
            logger.warning("rate-limit strategy failed; resuming without cooldown: %r", exc)
            return 0.0, exc
        if retry_after is not None and retry_after > duration:
            duration = retry_after
        return duration, None

    async def slow_start_delay(self) -> None:
        """Before a new item: apply the strategy's slow-start delay while the ramp is active."""
        if not self.slow_start_active:
            return
        try:
            apply, delay = self._strategy.should_apply_slow_start(self.items_since_resume)
        except Exception as exc:
            # A faulty strategy must not fail the worker (and with it the whole batch): end
            # slow start, as if the strategy had said so.
            logger.warning("rate-limit strategy failed in slow start; ending it: %r", exc)
            apply, delay = False, 0.0
        if not apply:
            self.slow_start_active = False
            self.items_since_resume = 0
            return
        self.items_since_resume += 1
        if delay > 0:
            await self._clock.sleep(delay)

    async def drain(self) -> None:
        """Wait for pending work of the coordinator (none in process)."""

    def statistics(self) -> dict[str, Any]:
        """A snapshot of the live state."""
        return {
            "paused": self.paused,
            "consecutive": self.consecutive,
            "cooldowns": self.cooldowns,
            "total_cooldown_seconds": self.total_cooldown_seconds,
            "slow_start_active": self.slow_start_active,
            "items_since_resume": self.items_since_resume,
        }

    def __repr__(self) -> str:
        return (
            f"CooldownCoordinator(paused={self.paused}, consecutive={self.consecutive}, "
            f"slow_start_active={self.slow_start_active}, "
            f"items_since_resume={self.items_since_resume})"
        )
