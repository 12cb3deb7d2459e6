"""Core data types and the processor base class."""

from async_batch_llm._internal.batch import (
    POST_PROCESSOR_EXECUTION_TIMEOUT,
    PROGRESS_TASK_CANCELLATION_TIMEOUT,
    WORKER_CANCELLATION_TIMEOUT,
    WORKER_SHUTDOWN_TIMEOUT,
    BatchProcessor,
)
from async_batch_llm._types import (
    BatchResult,
    BatchTermination,
    LLMResponse,
    LLMWorkItem,
    PostProcessorFunc,
    ProcessingStats,
    ProgressCallbackFunc,
    RetryState,
    TContext,
    TInput,
    TokenUsage,
    TOutput,
    WorkItemResult,
)

__all__ = [
    "POST_PROCESSOR_EXECUTION_TIMEOUT",
    "PROGRESS_TASK_CANCELLATION_TIMEOUT",
    "WORKER_CANCELLATION_TIMEOUT",
    "WORKER_SHUTDOWN_TIMEOUT",
    "BatchProcessor",
    "BatchResult",
    "BatchTermination",
    "LLMResponse",
    "LLMWorkItem",
    "PostProcessorFunc",
    "ProcessingStats",
    "ProgressCallbackFunc",
    "RetryState",
    "TContext",
    "TInput",
    "TOutput",
    "TokenUsage",
    "WorkItemResult",
]
