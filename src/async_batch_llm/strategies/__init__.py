"""Error classification and rate-limit strategies (spec §7, §8)."""

from async_batch_llm.strategies.errors import (
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    TokenTrackingError,
)
from async_batch_llm.strategies.rate_limit import (
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    RateLimitStrategy,
)

__all__ = [
    "DefaultErrorClassifier",
    "ErrorClassifier",
    "ErrorInfo",
    "ExponentialBackoffStrategy",
    "FixedDelayStrategy",
    "FrameworkTimeoutError",
    "RateLimitStrategy",
    "TokenTrackingError",
]
