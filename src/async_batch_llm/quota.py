"""Quota admission: token estimates, per-scope limits and provider rate-limit headers.

Set ``ProcessorConfig.max_tokens_per_minute`` (and its input/output and request siblings) or
``ProcessorConfig.quotas`` to pace attempts below a provider's limits. Before each attempt the
processor reserves one request and the attempt's estimated tokens in the gate of the strategy's
``quota_scope``; afterwards it reconciles the reservation with the usage the provider reported.
"""

from __future__ import annotations

from async_batch_llm._internal.estimators import CharacterTokenEstimator
from async_batch_llm._internal.quota_types import (
    EstimateTooLargeError,
    QuotaLimits,
    TokenEstimate,
    TokenEstimator,
)
from async_batch_llm._internal.rate_limit_headers import report_rate_limit_headers

__all__ = [
    "CharacterTokenEstimator",
    "EstimateTooLargeError",
    "QuotaLimits",
    "TokenEstimate",
    "TokenEstimator",
    "report_rate_limit_headers",
]
