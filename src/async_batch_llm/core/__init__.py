"""Configuration and model protocols."""

from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig, RetryConfig
from async_batch_llm.core.guardrails import GuardrailConfig
from async_batch_llm.core.protocols import (
    AgentLike,
    LLMModel,
    ManagedLLMModel,
    ResultLike,
    TOutput,
    UsageLike,
)

__all__ = [
    "AgentLike",
    "GuardrailConfig",
    "LLMModel",
    "ManagedLLMModel",
    "ProcessorConfig",
    "RateLimitConfig",
    "ResultLike",
    "RetryConfig",
    "TOutput",
    "UsageLike",
]
