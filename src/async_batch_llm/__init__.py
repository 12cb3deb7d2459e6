"""async-batch-llm: push thousands to millions of LLM requests through rate-limited APIs.

N async workers on one queue, retries with backoff and jitter, one rate-limit cooldown shared by
every worker, pluggable provider strategies, exact token accounting and observers.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import TypeVar

from async_batch_llm._strategies.anthropic import AnthropicStrategy
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._strategies.gemini import GeminiCachedStrategy as GeminiCachedStrategy
from async_batch_llm._strategies.gemini import GeminiStrategy
from async_batch_llm._strategies.openai import OpenAIStrategy
from async_batch_llm._strategies.pydantic_ai import PydanticAIStrategy
from async_batch_llm.artifacts import (
    ArtifactStore,
    JsonlArtifactStore,
    ResumePolicy,
    SqliteArtifactStore,
)
from async_batch_llm.backends import InMemoryQuotaBackend, QuotaBackend, RedisQuotaBackend
from async_batch_llm.base import (
    BatchProcessor,
    BatchResult,
    BatchTermination,
    LLMResponse,
    LLMWorkItem,
    PostProcessorFunc,
    ProcessingStats,
    ProgressCallbackFunc,
    RetryState,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.classifiers import GeminiErrorClassifier
from async_batch_llm.core import (
    GuardrailConfig,
    LLMModel,
    ManagedLLMModel,
    ModelPrice,
    PriceTable,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.middleware import BaseMiddleware, Middleware
from async_batch_llm.models import GeminiCachedModel, GeminiModel
from async_batch_llm.observers import (
    BaseObserver,
    ExtendedEvent,
    MetricsObserver,
    OpenTelemetryObserver,
    ProcessingEvent,
    ProcessorObserver,
    RichProgressObserver,
)
from async_batch_llm.parallel import ParallelBatchProcessor
from async_batch_llm.quota import (
    CharacterTokenEstimator,
    QuotaLimits,
    TokenEstimate,
    TokenEstimator,
)
from async_batch_llm.strategies import (
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    FrameworkTimeoutError,
    RateLimitStrategy,
    TokenTrackingError,
)
from async_batch_llm.streaming import process_prompts, process_stream

try:
    __version__: str = _dist_version("async-batch-llm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+dev"

_T = TypeVar("_T")

SimpleBatchProcessor = ParallelBatchProcessor[str, _T, None]
"""``ParallelBatchProcessor[str, T, None]``: string prompts, no context."""
SimpleWorkItem = LLMWorkItem[str, _T, None]
"""``LLMWorkItem[str, T, None]``."""
SimpleResult = WorkItemResult[_T, None]
"""``WorkItemResult[T, None]``."""

__all__ = [
    "BatchProcessor",
    "BatchResult",
    "LLMWorkItem",
    "PostProcessorFunc",
    "ProcessingStats",
    "ProgressCallbackFunc",
    "RetryState",
    "TokenUsage",
    "WorkItemResult",
    "ProcessorConfig",
    "RateLimitConfig",
    "RetryConfig",
    "GeminiStrategy",
    "LLMCallStrategy",
    "PydanticAIStrategy",
    "GeminiModel",
    "GeminiCachedModel",
    "LLMModel",
    "LLMResponse",
    "ManagedLLMModel",
    "ErrorClassifier",
    "ErrorInfo",
    "DefaultErrorClassifier",
    "FrameworkTimeoutError",
    "TokenTrackingError",
    "RateLimitStrategy",
    "ExponentialBackoffStrategy",
    "FixedDelayStrategy",
    "Middleware",
    "BaseMiddleware",
    "ProcessorObserver",
    "BaseObserver",
    "MetricsObserver",
    "ProcessingEvent",
    "GeminiErrorClassifier",
    "ParallelBatchProcessor",
    "SimpleBatchProcessor",
    "SimpleWorkItem",
    "SimpleResult",
    # Beyond 0.6.0 (spec BEYOND.md), after the 39 names of 0.6.0:
    "ArtifactStore",
    "SqliteArtifactStore",
    "JsonlArtifactStore",
    "ResumePolicy",
    "process_stream",
    "process_prompts",
    "TokenEstimate",
    "TokenEstimator",
    "CharacterTokenEstimator",
    "QuotaLimits",
    "OpenAIStrategy",
    "AnthropicStrategy",
    "PriceTable",
    "ModelPrice",
    "GuardrailConfig",
    "BatchTermination",
    "RichProgressObserver",
    "OpenTelemetryObserver",
    "ExtendedEvent",
    "QuotaBackend",
    "InMemoryQuotaBackend",
    "RedisQuotaBackend",
]
# GeminiCachedStrategy is importable from here (spec decision D1) but is not part of __all__:
# the first 39 names are exactly those of the published 0.6.0 API.
