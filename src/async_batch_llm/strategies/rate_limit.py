"""Rate-limit strategies: how long to cool down, how to ramp back up (spec §8, §4.8).

A strategy only answers questions; the processor does the pausing and the sleeping. When an
attempt hits a rate limit the processor pauses every worker for
``await strategy.on_rate_limit(worker_id, consecutive_count)`` seconds, then, for each new item
it starts, asks ``strategy.should_apply_slow_start(items_since_resume)`` whether to delay it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from async_batch_llm._internal.backoff import capped_exponential

__all__ = ["ExponentialBackoffStrategy", "FixedDelayStrategy", "RateLimitStrategy"]


class RateLimitStrategy(ABC):
    """Decides the cooldown length after a rate limit and the slow-start delays after it."""

    @abstractmethod
    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return the cooldown, in seconds, for this rate-limit event.

        Called once per cooldown, by the worker that starts it. If it raises, the processor
        uses a cooldown of 0 and resumes at once.

        Args:
            worker_id: the id (``0 .. max_workers-1``) of the worker that hit the limit.
            consecutive_limit_count: how many cooldowns in a row this is (1 for the first;
                reset whenever an attempt succeeds).

        Returns:
            Seconds every worker stays paused (``<= 0`` means no pause).
        """

    @abstractmethod
    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Whether to delay the next new item after a cooldown, and by how long.

        Synchronous, called on the event loop for every new item while slow start is active.
        Returning ``(False, _)`` ends slow start until the next cooldown.

        Args:
            items_since_resume: how many items have been delayed since the last cooldown
                ended (0 for the first item).

        Returns:
            ``(apply, delay_seconds)``.
        """


class ExponentialBackoffStrategy(RateLimitStrategy):
    """Cooldowns that grow geometrically, then a linear slow-start ramp.

    The n-th consecutive cooldown lasts
    ``min(initial_cooldown * backoff_multiplier ** (n - 1), max_cooldown)`` seconds (60, 120,
    240, 480, 600, 600, ... with the defaults). After a cooldown the k-th new item (k from 0)
    waits ``max(final, initial - (initial - final) * k / slow_start_items)`` seconds, until
    ``slow_start_items`` items have started; ``slow_start_items=0`` disables slow start.

    The arguments are stored as given, without validation (``ProcessorConfig`` validates the
    values it passes here).

    Args:
        initial_cooldown: seconds of the first cooldown.
        max_cooldown: upper bound of any cooldown, in seconds.
        backoff_multiplier: growth factor between consecutive cooldowns.
        slow_start_items: number of new items delayed after each cooldown.
        slow_start_initial_delay: delay of the first item after a cooldown, in seconds.
        slow_start_final_delay: lower bound of the slow-start delay, in seconds.
    """

    def __init__(
        self,
        initial_cooldown: float = 60.0,
        max_cooldown: float = 600.0,
        backoff_multiplier: float = 2.0,
        slow_start_items: int = 50,
        slow_start_initial_delay: float = 2.0,
        slow_start_final_delay: float = 0.1,
    ) -> None:
        self.initial_cooldown = initial_cooldown
        self.max_cooldown = max_cooldown
        self.backoff_multiplier = backoff_multiplier
        self.slow_start_items = slow_start_items
        self.slow_start_initial_delay = slow_start_initial_delay
        self.slow_start_final_delay = slow_start_final_delay

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return ``min(initial_cooldown * backoff_multiplier ** (n - 1), max_cooldown)``.

        Args:
            worker_id: unused.
            consecutive_limit_count: ``n``, starting at 1.

        Returns:
            The cooldown in seconds.
        """
        return capped_exponential(
            self.initial_cooldown,
            self.backoff_multiplier,
            consecutive_limit_count - 1,
            self.max_cooldown,
        )

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Linear ramp from ``slow_start_initial_delay`` down to ``slow_start_final_delay``.

        Args:
            items_since_resume: ``k``, the number of items delayed since the cooldown ended.

        Returns:
            ``(False, 0.0)`` once ``k >= slow_start_items``; otherwise ``(True, delay)`` with
            ``delay = max(final, initial - (initial - final) * k / slow_start_items)``.
        """
        if items_since_resume >= self.slow_start_items:
            return False, 0.0
        initial = self.slow_start_initial_delay
        final = self.slow_start_final_delay
        progress = items_since_resume / self.slow_start_items
        return True, max(final, initial - (initial - final) * progress)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}("
            f"initial_cooldown={self.initial_cooldown!r}, "
            f"max_cooldown={self.max_cooldown!r}, "
            f"backoff_multiplier={self.backoff_multiplier!r}, "
            f"slow_start_items={self.slow_start_items!r}, "
            f"slow_start_initial_delay={self.slow_start_initial_delay!r}, "
            f"slow_start_final_delay={self.slow_start_final_delay!r})"
        )


class FixedDelayStrategy(RateLimitStrategy):
    """The same cooldown every time, then the same delay before every new item.

    Once the first rate limit of a run has happened, every item started afterwards is delayed
    by ``delay`` seconds for the rest of the run: slow start never ends.

    Args:
        cooldown: seconds of every cooldown.
        delay_between_requests: seconds to wait before each new item after a cooldown; stored
            as the ``delay`` attribute.
    """

    def __init__(self, cooldown: float = 300.0, delay_between_requests: float = 1.0) -> None:
        self.cooldown = cooldown
        self.delay = delay_between_requests

    async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
        """Return ``cooldown``, whatever the worker and the count.

        Args:
            worker_id: unused.
            consecutive_limit_count: unused.

        Returns:
            The cooldown in seconds.
        """
        return self.cooldown

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        """Return ``(True, delay)``, whatever ``items_since_resume`` is.

        Args:
            items_since_resume: unused.

        Returns:
            ``(True, delay)``.
        """
        return True, self.delay

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cooldown={self.cooldown!r}, "
            f"delay_between_requests={self.delay!r})"
        )
