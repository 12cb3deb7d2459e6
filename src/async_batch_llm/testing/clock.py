"""Virtual time for tests: a clock whose time only moves when the test says so.

Pass a :class:`FakeClock` wherever the library accepts a clock (anything with ``time()`` and
``async sleep(seconds)``); sleeps then park until the test advances the clock, so cooldowns,
backoffs and slow starts run instantly and exactly::

    clock = FakeClock()
    task = asyncio.create_task(worker(clock))   # worker awaits clock.sleep(60)
    await clock.advance(59.0)
    assert not task.done()
    await clock.advance(1.0)
    assert task.done()
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import types
from collections.abc import Generator, Sized

__all__ = ["FakeClock", "wait_all_tasks_blocked"]

# How many times wait_all_tasks_blocked() yields on an event loop whose ready queue it cannot see.
_FALLBACK_YIELDS = 100


@types.coroutine
def _yield_once() -> Generator[None, None, None]:
    # A bare yield hands control back to the event loop for one iteration, exactly what
    # asyncio.sleep(0) does, but immune to tests that monkeypatch asyncio.sleep (for example with
    # FakeClock.sleep, which would otherwise recurse).
    yield


def _ready_queue(loop: asyncio.AbstractEventLoop) -> Sized | None:
    # Private asyncio detail: BaseEventLoop keeps its runnable callbacks in a deque `_ready`.
    # Other loops (uvloop) do not expose it; the caller then falls back to a fixed yield count.
    ready = getattr(loop, "_ready", None)
    return ready if isinstance(ready, Sized) else None


async def wait_all_tasks_blocked() -> None:
    """Return once every other task of the running loop is blocked.

    "Blocked" means waiting on something that is not ready yet: a future, an event, a lock, a
    :class:`FakeClock` sleep, real time or I/O. Callbacks already scheduled, including tasks woken
    by other tasks, run before this returns. It never sleeps in real time: it yields to the loop
    until the loop has nothing else to run.

    On event loops without asyncio's ready queue (such as uvloop) it yields a fixed number of
    times instead, which suffices for short wake-up chains.

    A task that yields forever (``while True: await asyncio.sleep(0)``) keeps it from returning.
    """
    ready = _ready_queue(asyncio.get_running_loop())
    if ready is None:
        for _ in range(_FALLBACK_YIELDS):
            await _yield_once()
        return
    # When this task resumes with nothing else queued, every other task is waiting.
    await _yield_once()
    while len(ready):
        await _yield_once()


class FakeClock:
    """Virtual time: ``time()`` only moves when the test calls :meth:`advance` or
    :meth:`run_until_idle`.

    It satisfies the processor's clock protocol (``time() -> float`` and
    ``async sleep(seconds) -> None``). A sleeper parks until virtual time reaches its deadline;
    advancing wakes sleepers in deadline order (ties in the order they started sleeping), lets the
    woken tasks run until every task is blocked again, and wakes any new sleeper whose deadline
    still falls within the advanced span. A test can therefore advance and assert exactly which
    tasks woke.

    Deadlines are ``time() + seconds`` in floating point: ``sleep(0.1)`` three times ends at
    ``0.30000000000000004``, after ``advance(0.3)``. Prefer binary-exact values such as 0.25.

    Args:
        start: the initial virtual time in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        # Heap of (deadline, sequence number, future); the sequence keeps ties in FIFO order and
        # means the futures themselves are never compared.
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()

    def __repr__(self) -> str:
        return f"FakeClock(time={self._now!r}, pending_sleepers={self.pending_sleepers})"

    @property
    def pending_sleepers(self) -> int:
        """How many tasks are parked in :meth:`sleep`."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    def time(self) -> float:
        """Return the current virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Park until virtual time reaches ``time() + seconds``.

        Zero or a negative duration does not park; it yields to the event loop once, like
        ``asyncio.sleep(0)``. Cancelling the sleeping task removes it from the clock.

        Args:
            seconds: how long to sleep in virtual seconds.
        """
        if seconds <= 0:
            await _yield_once()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + seconds, next(self._sequence), future)
        heapq.heappush(self._sleepers, entry)
        try:
            await future
        finally:
            # Still queued only if the sleep ended by cancellation before its deadline.
            for index, queued in enumerate(self._sleepers):
                if queued is entry:
                    del self._sleepers[index]
                    heapq.heapify(self._sleepers)
                    break

    async def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds``, letting every task run as it passes.

        First lets all tasks run until blocked (so tasks just created reach their sleeps), then
        wakes the sleepers whose deadline falls within the span, earliest first; time stands at
        each deadline while the tasks woken at it run until blocked. Ends at exactly
        ``time() + seconds`` with every task blocked.

        Args:
            seconds: how far to move, >= 0.

        Raises:
            ValueError: if ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        await self._advance_to(self._now + seconds)

    async def run_until_idle(self) -> None:
        """Let tasks run, jumping time to each next sleeper's deadline, until nobody sleeps.

        Returns when every task is blocked and none is parked in :meth:`sleep` (tasks may still be
        waiting on events, locks or other tasks). Virtual time then stands at the last deadline
        reached. A task that sleeps in an endless loop keeps it from returning.
        """
        await wait_all_tasks_blocked()
        # Each _advance_to() returns with every task blocked again.
        while (deadline := self._next_deadline()) is not None:
            await self._advance_to(deadline)

    def _next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def _advance_to(self, target: float) -> None:
        await wait_all_tasks_blocked()
        while (deadline := self._next_deadline()) is not None and deadline <= target:
            self._now = deadline
            # Wake everyone due at this instant together, as the event loop does for timers.
            while self._sleepers and self._sleepers[0][0] == deadline:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await wait_all_tasks_blocked()
        self._now = target
