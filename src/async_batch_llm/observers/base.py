"""Lifecycle events of a batch and the observer interface that receives them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any, ClassVar

__all__ = ["BaseObserver", "ExtendedEvent", "ProcessingEvent", "ProcessorObserver"]


class ProcessingEvent(Enum):
    """What just happened in a batch; delivered to every observer with a payload dict.

    The payload keys of each event are listed in the processor documentation; for example
    ``ITEM_COMPLETED`` carries ``item_id``, ``duration`` (seconds) and ``tokens`` (an int).
    While quota admission is on, ``ITEM_COMPLETED`` and ``ITEM_FAILED`` of an admitted item
    also carry ``admission_wait``, ``quota_scope``, ``quota_limits``, ``quota_used`` and
    ``quota_window`` (see docs/quota.md). With observers attached, ``ITEM_COMPLETED`` also
    carries the attempt's ``input_tokens`` and ``output_tokens`` and the strategy's ``model``
    (when it names one); ``ITEM_COMPLETED`` and ``ITEM_FAILED`` carry the item's ``cost``
    (dollars, every attempt) when a guardrails ``cost_function`` prices calls.

    The ten members are exactly those of async-batch-llm 0.6.0, in its order. Events added
    since are :class:`ExtendedEvent` members, sent only to observers that ask for them.
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


class ExtendedEvent(Enum):
    """Events added after async-batch-llm 0.6.0, so that every attempt and every run has an end
    an observer can see.

    They go only to observers whose class sets ``extended_events = True`` (as
    :class:`~async_batch_llm.observers.OpenTelemetryObserver` does), through the same
    ``on_event``; an observer written for 0.6.0 keeps receiving exactly the ten
    :class:`ProcessingEvent` events it knew.

    - ``ATTEMPT_FAILED``: an attempt ended without a result (its call raised, quota admission
      refused it, or middleware skipped it), emitted right away whether or not the item will be
      retried. Payload: ``item_id``, ``worker_id``, ``attempt`` (1-based), ``error_type`` (the
      exception's class name), ``retryable`` and ``rate_limit`` (the classifier's verdict),
      ``input_tokens``, ``output_tokens`` and ``tokens`` (what the failed call reported, else
      0), ``skipped`` (``True`` only for a middleware skip, which ends the item) and ``model``
      when the strategy names one. With it, every ``ITEM_STARTED`` is followed by exactly one
      ``ITEM_COMPLETED`` or ``ATTEMPT_FAILED`` of the same item, except an attempt a guardrail
      cut short (the item's ``ITEM_FAILED`` ends it) and when the batch is aborted.
    - ``BATCH_ABORTED``: ``process_all()`` (or a stream) is ending by an exception, usually its
      cancellation, instead of returning; ``BATCH_COMPLETED`` does not follow. Payload:
      ``processed``, ``total``, ``duration`` (seconds) and ``error_type``.
    - ``BATCH_JOB_SUBMITTED``, ``BATCH_JOB_PROGRESS``, ``BATCH_JOB_COMPLETED``: a provider batch
      job (``ProcessorConfig(mode="batch")``, docs/batch-mode.md) was submitted, reported new
      request counts while it ran, and ended. Payload: ``job_id``, ``provider``, ``requests``
      (lines in the job), ``state`` (OpenAI's vocabulary: ``validating``, ``in_progress``,
      ``finalizing``, ``completed``, ``expired``, ``cancelling``, ``cancelled``, ``failed``),
      ``completed`` and ``failed`` (request counts the provider reported).
    """

    ATTEMPT_FAILED = "attempt_failed"
    BATCH_ABORTED = "batch_aborted"
    BATCH_JOB_SUBMITTED = "batch_job_submitted"
    BATCH_JOB_PROGRESS = "batch_job_progress"
    BATCH_JOB_COMPLETED = "batch_job_completed"


class ProcessorObserver(ABC):
    """An event sink attached to a processor through its ``observers`` argument.

    The processor awaits :meth:`on_event` inline, in observer list order, with a time limit per
    call; exceptions and timeouts are logged and ignored, so an observer cannot break a batch but
    a slow one slows it down.

    Attributes:
        extended_events: ``True`` to also receive the :class:`ExtendedEvent` events (added after
            0.6.0); ``on_event`` then gets ``ProcessingEvent | ExtendedEvent``. Default
            ``False``: exactly the 0.6.0 events.
    """

    extended_events: ClassVar[bool] = False

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
