"""A reusable per-task deadline: what ``asyncio.timeout`` does, without a timer per use.

``asyncio.timeout()`` schedules a timer handle when entered and cancels it on exit, which costs a
few microseconds per use: the dominant per-item cost of a batch whose calls return quickly.
A worker runs its calls one after another, so it keeps one :class:`TaskDeadline` and re-arms it
for every call. The timer behind it is rescheduled lazily: when it fires before the current
deadline it moves itself to that deadline, so a worker whose calls finish well inside the limit
touches the event loop's timer heap about once per ``timeout`` seconds instead of once per call.

On expiry it cancels the task exactly like ``asyncio.timeout`` does, and :meth:`TaskDeadline.stop`
applies the same rule to tell its own cancellation from an outer one (``Task.uncancel()``
compared with the cancel count seen at :meth:`TaskDeadline.start`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

__all__ = ["TaskDeadline", "loop_time_function"]


def loop_time_function(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or the C function it wraps when the loop is asyncio's own and unpatched.

    ``BaseEventLoop.time()`` is a Python method returning ``time.monotonic()``; calling the
    latter directly saves a Python frame on every reading.
    """
    method = loop.time
    if getattr(method, "__func__", None) is asyncio.BaseEventLoop.time:
        return time.monotonic
    return method


_EARLY_FIRE_TOLERANCE = 1e-6
"""Seconds: the loop may run a timer up to its clock resolution early; treat that as on time."""


class TaskDeadline:
    """A deadline for one guarded region at a time in one task.

    Usage (the region must not be entered twice at once)::

        deadline.start(timeout)
        try:
            value = await call()
        except asyncio.CancelledError:
            if deadline.stop():      # our deadline cancelled the call
                raise TimeoutError from None
            raise
        except BaseException:
            deadline.stop()
            raise
        deadline.stop()              # a call that swallowed our cancellation still uncancels

    Args:
        task: the task whose awaits are guarded (normally ``asyncio.current_task()``).
        loop: that task's event loop.
    """

    __slots__ = (
        "_cancelling",
        "_handle",
        "_loop",
        "_time",
        "_timer_at",
        "deadline",
        "expired",
        "running",
        "task",
    )

    def __init__(self, task: asyncio.Task[object], loop: asyncio.AbstractEventLoop) -> None:
        self.task = task
        self._loop = loop
        self._time = loop_time_function(loop)
        self._handle: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._cancelling = 0
        self.deadline = math.inf
        self.running = False
        self.expired = False

    def start(self, timeout: float) -> None:
        """Guard from now on: cancel the task if the region is still running ``timeout`` s later."""
        deadline = self._time() + timeout
        self.deadline = deadline
        self.expired = False
        self._cancelling = self.task.cancelling()
        self.running = True
        if deadline < self._timer_at:  # no timer yet, or it would fire too late for this one
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def stop(self) -> bool:
        """Leave the region. True when this deadline cancelled it and no other cancel is pending.

        When the deadline fired, the task's cancel request is withdrawn (``uncancel``) whatever
        the region did with it, as ``asyncio.timeout`` does.
        """
        self.running = False
        if not self.expired:
            return False
        self.expired = False
        return self.task.uncancel() <= self._cancelling

    def close(self) -> None:
        """Drop the timer; the object may not be used afterwards."""
        self.running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._timer_at = math.inf

    def _on_timer(self) -> None:
        self._handle = None
        self._timer_at = math.inf
        if not self.running:
            return  # idle: the next start() schedules a new timer
        deadline = self.deadline
        if self._time() + _EARLY_FIRE_TOLERANCE < deadline:
            # Armed for an earlier region that finished in time; follow the current deadline.
            self._handle = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
            return
        self.expired = True
        self.task.cancel()

    def __repr__(self) -> str:
        state = "expired" if self.expired else "running" if self.running else "idle"
        remaining = self.deadline - self._loop.time() if self.running else None
        return f"<TaskDeadline {state} remaining={remaining!r} timer_at={self._timer_at!r}>"
