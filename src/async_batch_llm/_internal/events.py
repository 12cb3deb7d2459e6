"""Deliver lifecycle events to observers: in order, each bounded in time, faults isolated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from async_batch_llm._internal.deadline import TaskDeadline
from async_batch_llm.observers.base import ExtendedEvent, ProcessingEvent, ProcessorObserver

__all__ = ["OBSERVER_CALLBACK_TIMEOUT", "Event", "dispatch", "wants_extended"]

logger = logging.getLogger("async_batch_llm.parallel")

OBSERVER_CALLBACK_TIMEOUT = 5.0
"""Seconds each observer gets to handle one event."""


Event = ProcessingEvent | ExtendedEvent


def _log_timeout(observer: ProcessorObserver, timeout: float, event: Event) -> None:
    logger.warning("observer %r timed out after %.1fs on %s", observer, timeout, event.name)


async def dispatch(
    observers: Sequence[ProcessorObserver],
    event: Event,
    data: dict[str, Any],
    timeout: float = OBSERVER_CALLBACK_TIMEOUT,
    deadline: TaskDeadline | None = None,
) -> None:
    """Await ``observer.on_event(event, data)`` for each observer in list order.

    An :class:`ExtendedEvent` goes only to the observers that set ``extended_events``.

    An observer that raises or overruns ``timeout`` is logged and skipped; the others still get
    the event. Cancellation of the caller propagates.

    ``deadline``, the calling task's idle :class:`TaskDeadline` (workers pass theirs), bounds
    each call the way ``asyncio.timeout`` would, without scheduling a timer per call.
    """
    if type(event) is ExtendedEvent:
        observers = [o for o in observers if getattr(o, "extended_events", False)]
    if deadline is not None:
        for observer in observers:
            deadline.start(timeout)
            try:
                await observer.on_event(event, data)  # type: ignore[arg-type]  # extended: opted in
            except asyncio.CancelledError:
                if not deadline.stop():
                    raise
                _log_timeout(observer, timeout, event)
            except TimeoutError:
                deadline.stop()
                _log_timeout(observer, timeout, event)
            except Exception:
                deadline.stop()
                logger.exception("observer %r failed on %s", observer, event.name)
            except BaseException:
                deadline.stop()
                raise
            else:
                deadline.stop()
        return
    for observer in observers:
        try:
            async with asyncio.timeout(timeout):
                await observer.on_event(event, data)  # type: ignore[arg-type]  # extended: opted in
        except TimeoutError:
            _log_timeout(observer, timeout, event)
        except Exception:
            logger.exception("observer %r failed on %s", observer, event.name)


def wants_extended(observers: Sequence[ProcessorObserver]) -> bool:
    """Whether any of ``observers`` receives :class:`ExtendedEvent` events."""
    return any(getattr(o, "extended_events", False) for o in observers)
