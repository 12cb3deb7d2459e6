"""Lifecycle events of a batch and the observer interface that receives them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

__all__ = ["BaseObserver", "ProcessingEvent", "ProcessorObserver"]


class ProcessingEvent(Enum):
    """What just happened in a batch; delivered to every observer with a payload dict.

    The payload keys of each event are listed in the processor documentation; for example
    ``ITEM_COMPLETED`` carries ``item_id``, ``duration`` (seconds) and ``tokens`` (an int).
    While quota admission is on, ``ITEM_COMPLETED`` and ``ITEM_FAILED`` of an admitted item
    also carry ``admission_wait``, ``quota_scope``, ``quota_limits``, ``quota_used`` and
    ``quota_window`` (see docs/quota.md). When a ``cost_function`` prices calls
    (``GuardrailConfig``), they also carry ``cost`` (dollars of the item's attempts in this
    run) and ``model`` (the model name the calls were priced under).
    """

    ITEM_STARTED = "item_started"
    ITEM_COMPLETED = "item_completed"
    ITEM_FAILED = "item_failed"
    RATE_LIMIT_HIT = "rate_limit_hit"
    COOLDOWN_STARTED = "cooldown_started"
    COOLDOWN_ENDED = "cooldown_ended"
    WORKER_STARTED = "worker_started"
    WORKER_STOPPED = "worker_stopped"
    BATCH_STARTED = "batch_started"
    BATCH_COMPLETED = "batch_completed"


class ProcessorObserver(ABC):
    """An event sink attached to a processor through its ``observers`` argument.

    The processor awaits :meth:`on_event` inline, in observer list order, with a time limit per
    call; exceptions and timeouts are logged and ignored, so an observer cannot break a batch but
    a slow one slows it down.
    """

    @abstractmethod
    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Handle one event.

        Args:
            event: which lifecycle event happened.
            data: the event's payload; observers must not rely on mutating it.
        """


class BaseObserver(ProcessorObserver):
    """An observer that ignores every event; subclass it and override :meth:`on_event`."""

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Ignore the event."""
