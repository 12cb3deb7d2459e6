"""Configuration, model protocols and model prices."""

from async_batch_llm._internal.pricing import ModelPrice, PriceTable, UnknownModelPriceError
from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig, RetryConfig
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
    "LLMModel",
    "ManagedLLMModel",
    "ModelPrice",
    "PriceTable",
    "ProcessorConfig",
    "RateLimitConfig",
    "ResultLike",
    "RetryConfig",
    "TOutput",
    "UnknownModelPriceError",
    "UsageLike",
]
