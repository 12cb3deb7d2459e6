"""Deliver lifecycle events to observers: in order, each bounded in time, faults isolated."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from async_batch_llm._internal.deadline import TaskDeadline
from async_batch_llm.observers.base import ProcessingEvent, ProcessorObserver

__all__ = ["OBSERVER_CALLBACK_TIMEOUT", "dispatch"]

logger = logging.getLogger("async_batch_llm.parallel")

OBSERVER_CALLBACK_TIMEOUT = 5.0
"""Seconds each observer gets to handle one event."""


def _log_timeout(observer: ProcessorObserver, timeout: float, event: ProcessingEvent) -> None:
    logger.warning("observer %r timed out after %.1fs on %s", observer, timeout, event.name)


async def dispatch(
    observers: Sequence[ProcessorObserver],
    event: ProcessingEvent,
    data: dict[str, Any],
    timeout: float = OBSERVER_CALLBACK_TIMEOUT,
    deadline: TaskDeadline | None = None,
) -> None:
    """Await ``observer.on_event(event, data)`` for each observer in list order.

    An observer that raises or overruns ``timeout`` is logged and skipped; the others still get
    the event. Cancellation of the caller propagates.

    ``deadline``, the calling task's idle :class:`TaskDeadline` (workers pass theirs), bounds
    each call the way ``asyncio.timeout`` would, without scheduling a timer per call.
    """
    if deadline is not None:
        for observer in observers:
            deadline.start(timeout)
            try:
                await observer.on_event(event, data)
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
                await observer.on_event(event, data)
        except TimeoutError:
            _log_timeout(observer, timeout, event)
        except Exception:
            logger.exception("observer %r failed on %s", observer, event.name)
