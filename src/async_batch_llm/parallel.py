"""``ParallelBatchProcessor``: a queue, N async workers, retries, a shared cooldown, hooks."""

from async_batch_llm._internal.events import OBSERVER_CALLBACK_TIMEOUT
from async_batch_llm._internal.processor import (
    POST_PROCESSOR_EXECUTION_TIMEOUT,
    POST_PROCESSOR_TIMEOUT,
    PROGRESS_TASK_CANCELLATION_TIMEOUT,
    WORKER_CANCELLATION_TIMEOUT,
    WORKER_SHUTDOWN_TIMEOUT,
    ParallelBatchProcessor,
)

__all__ = [
    "OBSERVER_CALLBACK_TIMEOUT",
    "POST_PROCESSOR_EXECUTION_TIMEOUT",
    "POST_PROCESSOR_TIMEOUT",
    "PROGRESS_TASK_CANCELLATION_TIMEOUT",
    "WORKER_CANCELLATION_TIMEOUT",
    "WORKER_SHUTDOWN_TIMEOUT",
    "ParallelBatchProcessor",
]
