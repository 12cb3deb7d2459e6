"""Public names and module paths (spec §2 module map, §15 checklist, decision D1)."""

from __future__ import annotations

import importlib
import typing
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

import async_batch_llm

TOP_LEVEL_ALL = [
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
]

BEYOND_ALL = {
    "ArtifactStore": "async_batch_llm.artifacts",
    "SqliteArtifactStore": "async_batch_llm.artifacts",
    "JsonlArtifactStore": "async_batch_llm.artifacts",
    "ResumePolicy": "async_batch_llm.artifacts",
    "process_stream": "async_batch_llm.streaming",
    "process_prompts": "async_batch_llm.streaming",
    "TokenEstimate": "async_batch_llm.quota",
    "TokenEstimator": "async_batch_llm.quota",
    "CharacterTokenEstimator": "async_batch_llm.quota",
    "QuotaLimits": "async_batch_llm.quota",
    "OpenAIStrategy": "async_batch_llm.llm_strategies",
    "AnthropicStrategy": "async_batch_llm.llm_strategies",
    "PriceTable": "async_batch_llm.core",
    "ModelPrice": "async_batch_llm.core",
    "GuardrailConfig": "async_batch_llm.core",
    "BatchTermination": "async_batch_llm.base",
    "RichProgressObserver": "async_batch_llm.observers",
    "OpenTelemetryObserver": "async_batch_llm.observers",
    "ExtendedEvent": "async_batch_llm.observers",
    "QuotaBackend": "async_batch_llm.backends",
    "InMemoryQuotaBackend": "async_batch_llm.backends",
    "RedisQuotaBackend": "async_batch_llm.backends.redis",
}
"""Names added after 0.6.0 (spec BEYOND.md), appended to ``__all__`` after the 39, and the
module each also lives in."""

BASE_TIMING = [
    "WORKER_CANCELLATION_TIMEOUT",
    "WORKER_SHUTDOWN_TIMEOUT",
    "POST_PROCESSOR_EXECUTION_TIMEOUT",
    "PROGRESS_TASK_CANCELLATION_TIMEOUT",
]
PARALLEL_TIMING = ["OBSERVER_CALLBACK_TIMEOUT", "POST_PROCESSOR_TIMEOUT"]
CORE_ALL = [
    "GuardrailConfig",
    "ProcessorConfig",
    "RateLimitConfig",
    "RetryConfig",
    "AgentLike",
    "LLMModel",
    "ManagedLLMModel",
    "ResultLike",
    "TOutput",
    "UsageLike",
    "PriceTable",
    "ModelPrice",
    "UnknownModelPriceError",
]
ERRORS = [
    "ErrorClassifier",
    "ErrorInfo",
    "DefaultErrorClassifier",
    "FrameworkTimeoutError",
    "TokenTrackingError",
]
RATE_LIMIT = ["RateLimitStrategy", "ExponentialBackoffStrategy", "FixedDelayStrategy"]

MODULE_MAP: dict[str, list[str]] = {
    "async_batch_llm": [*TOP_LEVEL_ALL, *BEYOND_ALL, "__version__", "GeminiCachedStrategy"],
    "async_batch_llm.base": [
        "RetryState",
        "TokenUsage",
        "LLMResponse",
        "LLMWorkItem",
        "WorkItemResult",
        "BatchResult",
        "BatchTermination",
        "ProcessingStats",
        "PostProcessorFunc",
        "ProgressCallbackFunc",
        "BatchProcessor",
        "TInput",
        "TOutput",
        "TContext",
        *BASE_TIMING,
    ],
    "async_batch_llm.parallel": ["ParallelBatchProcessor", *BASE_TIMING, *PARALLEL_TIMING],
    "async_batch_llm.core": CORE_ALL,
    "async_batch_llm.core.config": ["RetryConfig", "RateLimitConfig", "ProcessorConfig"],
    "async_batch_llm.core.protocols": [
        "AgentLike",
        "ResultLike",
        "UsageLike",
        "LLMModel",
        "ManagedLLMModel",
        "TOutput",
    ],
    "async_batch_llm.llm_strategies": [
        "LLMCallStrategy",
        "GeminiStrategy",
        "PydanticAIStrategy",
        "GeminiCachedStrategy",
        "OpenAIStrategy",
        "AnthropicStrategy",
    ],
    "async_batch_llm.models": ["GeminiModel", "GeminiCachedModel"],
    "async_batch_llm.artifacts": [
        "ArtifactRecord",
        "ArtifactStore",
        "ArtifactStoreError",
        "JsonlArtifactStore",
        "ResumePolicy",
        "SqliteArtifactStore",
        "UnstorableOutputError",
    ],
    "async_batch_llm.streaming": [
        "PromptSource",
        "ResultStream",
        "process_prompts",
        "process_stream",
    ],
    "async_batch_llm.quota": [
        "CharacterTokenEstimator",
        "EstimateTooLargeError",
        "QuotaLimits",
        "TokenEstimate",
        "TokenEstimator",
        "report_rate_limit_headers",
    ],
    "async_batch_llm.backends": [
        "BucketSpec",
        "CooldownTurn",
        "InMemoryQuotaBackend",
        "QuotaBackend",
        "QuotaBackendError",
        "RedisQuotaBackend",
    ],
    "async_batch_llm.backends.redis": ["RedisQuotaBackend"],
    "async_batch_llm.strategies": [*ERRORS, *RATE_LIMIT],
    "async_batch_llm.strategies.errors": [
        *ERRORS,
        "RATE_LIMIT_PATTERNS",
        "DEFAULT_RATE_LIMIT_WAIT",
    ],
    "async_batch_llm.strategies.rate_limit": RATE_LIMIT,
    "async_batch_llm.classifiers": ["GeminiErrorClassifier"],
    "async_batch_llm.classifiers.gemini": [
        "GeminiErrorClassifier",
        "RATE_LIMIT_PATTERNS",
        "TIMEOUT_PATTERNS",
        "DEFAULT_RATE_LIMIT_WAIT",
    ],
    "async_batch_llm.observers": [
        "ProcessorObserver",
        "BaseObserver",
        "ProcessingEvent",
        "ExtendedEvent",
        "MetricsObserver",
        "OpenTelemetryObserver",
        "RichProgressObserver",
    ],
    "async_batch_llm.observers.base": [
        "ProcessingEvent",
        "ProcessorObserver",
        "BaseObserver",
        "ExtendedEvent",
    ],
    "async_batch_llm.observers.metrics": ["MetricsObserver"],
    "async_batch_llm.observers.otel": ["OpenTelemetryObserver"],
    "async_batch_llm.observers.progress": ["RichProgressObserver"],
    "async_batch_llm.middleware": ["Middleware", "BaseMiddleware"],
    "async_batch_llm.middleware.base": ["Middleware", "BaseMiddleware"],
    "async_batch_llm.testing": ["MockAgent", "MockResult", "mock_strategy"],
    "async_batch_llm.testing.mocks": ["MockAgent", "MockResult", "MockUsage"],
    "async_batch_llm.testing.strategies": ["mock_strategy"],
}

PAIRS = [(module, name) for module, names in MODULE_MAP.items() for name in names]


@pytest.mark.parametrize(("module", "name"), PAIRS, ids=[f"{m}:{n}" for m, n in PAIRS])
def test_name_is_importable_from_its_listed_path(module: str, name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module} import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(module), name)


# Where the same public object is reachable from several paths, it must be one object.
SAME_OBJECT = [
    (name, paths)
    for name, paths in {
        "BatchProcessor": ["async_batch_llm", "async_batch_llm.base"],
        "ParallelBatchProcessor": ["async_batch_llm", "async_batch_llm.parallel"],
        "ProcessorConfig": [
            "async_batch_llm",
            "async_batch_llm.core",
            "async_batch_llm.core.config",
        ],
        "LLMModel": ["async_batch_llm", "async_batch_llm.core", "async_batch_llm.core.protocols"],
        "LLMCallStrategy": ["async_batch_llm", "async_batch_llm.llm_strategies"],
        "GeminiCachedStrategy": ["async_batch_llm", "async_batch_llm.llm_strategies"],
        "OpenAIStrategy": ["async_batch_llm", "async_batch_llm.llm_strategies"],
        "AnthropicStrategy": ["async_batch_llm", "async_batch_llm.llm_strategies"],
        "GeminiCachedModel": ["async_batch_llm", "async_batch_llm.models"],
        "PriceTable": ["async_batch_llm", "async_batch_llm.core"],
        "FrameworkTimeoutError": [
            "async_batch_llm",
            "async_batch_llm.strategies",
            "async_batch_llm.strategies.errors",
        ],
        "FixedDelayStrategy": [
            "async_batch_llm",
            "async_batch_llm.strategies",
            "async_batch_llm.strategies.rate_limit",
        ],
        "GeminiErrorClassifier": [
            "async_batch_llm",
            "async_batch_llm.classifiers",
            "async_batch_llm.classifiers.gemini",
        ],
        "MetricsObserver": [
            "async_batch_llm",
            "async_batch_llm.observers",
            "async_batch_llm.observers.metrics",
        ],
        "BaseMiddleware": [
            "async_batch_llm",
            "async_batch_llm.middleware",
            "async_batch_llm.middleware.base",
        ],
        "MockAgent": ["async_batch_llm.testing", "async_batch_llm.testing.mocks"],
        "OBSERVER_CALLBACK_TIMEOUT": ["async_batch_llm.parallel"],
        "TOutput": ["async_batch_llm.core", "async_batch_llm.core.protocols"],
    }.items()
]


@pytest.mark.parametrize(("name", "paths"), SAME_OBJECT, ids=[n for n, _ in SAME_OBJECT])
def test_every_path_gives_the_same_object(name: str, paths: list[str]) -> None:
    objects = {id(getattr(importlib.import_module(path), name)) for path in paths}
    assert len(objects) == 1


def test_top_level_all_is_the_39_names_in_spec_order_then_the_new_ones() -> None:
    assert len(TOP_LEVEL_ALL) == 39
    assert async_batch_llm.__all__[:39] == TOP_LEVEL_ALL
    assert async_batch_llm.__all__[39:] == list(BEYOND_ALL)


@pytest.mark.parametrize(("name", "module"), BEYOND_ALL.items(), ids=list(BEYOND_ALL))
def test_new_names_live_at_the_top_level_and_in_their_module(name: str, module: str) -> None:
    mod = importlib.import_module(module)
    assert getattr(async_batch_llm, name) is getattr(mod, name)
    assert name in MODULE_MAP[module]


def test_gemini_cached_strategy_is_importable_but_not_in_all() -> None:
    # D1: importable from the top level and llm_strategies; __all__ keeps the 0.6.0 names.
    from async_batch_llm import GeminiCachedStrategy, GeminiStrategy
    from async_batch_llm.llm_strategies import GeminiCachedStrategy as FromStrategies

    assert GeminiCachedStrategy is FromStrategies
    assert issubclass(GeminiCachedStrategy, GeminiStrategy)
    assert "GeminiCachedStrategy" not in async_batch_llm.__all__


def test_version_is_a_string() -> None:
    assert isinstance(async_batch_llm.__version__, str)
    assert async_batch_llm.__version__
    assert "__version__" not in async_batch_llm.__all__


def test_testing_all() -> None:
    import async_batch_llm.testing

    assert async_batch_llm.testing.__all__ == ["MockAgent", "MockResult", "mock_strategy"]


def test_core_all() -> None:
    # The spec lists the names, not an order that callers could observe through imports.
    import async_batch_llm.core

    assert sorted(async_batch_llm.core.__all__) == sorted(CORE_ALL)
    assert len(async_batch_llm.core.__all__) == len(CORE_ALL)


def test_timing_constants() -> None:
    import async_batch_llm.base as base
    import async_batch_llm.parallel as parallel

    assert (
        base.WORKER_CANCELLATION_TIMEOUT,
        base.WORKER_SHUTDOWN_TIMEOUT,
        base.POST_PROCESSOR_EXECUTION_TIMEOUT,
        base.PROGRESS_TASK_CANCELLATION_TIMEOUT,
    ) == (2.0, 30.0, 75.0, 2.0)
    assert (parallel.OBSERVER_CALLBACK_TIMEOUT, parallel.POST_PROCESSOR_TIMEOUT) == (5.0, 90.0)


def test_type_variables() -> None:
    import async_batch_llm.base as base
    import async_batch_llm.core as core

    for tv in (base.TInput, base.TOutput, base.TContext):
        assert isinstance(tv, TypeVar)
        assert tv.__bound__ is None
    assert isinstance(core.TOutput, TypeVar)
    assert core.TOutput is not base.TOutput
    assert core.TOutput.__bound__ is BaseModel
    assert core.TOutput.__covariant__


def test_simple_aliases_are_parametrised_generic_aliases() -> None:
    from async_batch_llm import (
        LLMWorkItem,
        ParallelBatchProcessor,
        SimpleBatchProcessor,
        SimpleResult,
        SimpleWorkItem,
        WorkItemResult,
    )

    assert typing.get_origin(SimpleBatchProcessor[int]) is ParallelBatchProcessor
    assert typing.get_args(SimpleBatchProcessor[int]) == (str, int, type(None))
    assert typing.get_origin(SimpleWorkItem[int]) is LLMWorkItem
    assert typing.get_args(SimpleWorkItem[int]) == (str, int, type(None))
    assert typing.get_origin(SimpleResult[int]) is WorkItemResult
    assert typing.get_args(SimpleResult[int]) == (int, type(None))


def test_simple_aliases_construct_real_instances() -> None:
    from async_batch_llm import (
        LLMWorkItem,
        ParallelBatchProcessor,
        ProcessorConfig,
        SimpleBatchProcessor,
        SimpleResult,
        SimpleWorkItem,
        WorkItemResult,
    )
    from tests.conftest import ScriptedStrategy

    processor = SimpleBatchProcessor[str](config=ProcessorConfig(max_workers=2))
    assert type(processor) is ParallelBatchProcessor
    assert processor.max_workers == 2
    item = SimpleWorkItem[str](item_id="x", strategy=ScriptedStrategy(), prompt="p")
    assert type(item) is LLMWorkItem
    result = SimpleResult[str](item_id="x", success=True, output="o")
    assert type(result) is WorkItemResult


def test_callback_aliases_are_subscriptable() -> None:
    from async_batch_llm import PostProcessorFunc, ProgressCallbackFunc, WorkItemResult

    post_alias: Any = PostProcessorFunc  # subscripted at runtime, as user code does
    assert typing.get_args(post_alias[int, None])[0] == [WorkItemResult[int, None]]
    assert typing.get_args(ProgressCallbackFunc)[0] == [int, int, str]
