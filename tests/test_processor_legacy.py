"""Constructor (§4.2): defaults of the attributes, legacy parameters and their warnings, and the
in-place overwrite of a given config."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from async_batch_llm import (
    BaseObserver,
    BatchProcessor,
    DefaultErrorClassifier,
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    GeminiErrorClassifier,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.middleware import BaseMiddleware

Processor = ParallelBatchProcessor[str, str, Any]
DEPRECATED = r"deprecated.*ProcessorConfig"


def test_defaults_of_every_public_attribute() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning without legacy parameters
        processor: Processor = ParallelBatchProcessor()
    assert processor.config == ProcessorConfig()
    assert processor.max_workers == 5
    assert processor.post_processor is None
    assert processor.progress_callback is None
    assert processor.progress_callback_timeout == 5.0
    assert processor.max_queue_size == 0
    assert type(processor.error_classifier) is DefaultErrorClassifier
    assert processor.middlewares == []
    assert processor.observers == []
    strategy = processor.rate_limit_strategy
    assert type(strategy) is ExponentialBackoffStrategy
    assert vars(strategy) == vars(
        ExponentialBackoffStrategy(
            initial_cooldown=300.0,
            max_cooldown=600.0,
            backoff_multiplier=1.5,
            slow_start_items=50,
            slow_start_initial_delay=2.0,
            slow_start_final_delay=0.1,
        )
    )


def test_default_lists_are_not_shared_between_processors() -> None:
    one: Processor = ParallelBatchProcessor()
    two: Processor = ParallelBatchProcessor()
    assert one.middlewares is not two.middlewares
    assert one.observers is not two.observers


def test_attributes_come_from_the_config_and_arguments() -> None:
    config = ProcessorConfig(
        max_workers=7,
        progress_callback_timeout=None,
        max_queue_size=20,
        rate_limit=RateLimitConfig(
            cooldown_seconds=30.0,
            backoff_multiplier=3.0,
            slow_start_items=5,
            slow_start_initial_delay=1.0,
            slow_start_final_delay=0.5,
        ),
    )
    middlewares: list[Any] = [BaseMiddleware()]
    observers: list[Any] = [BaseObserver()]
    classifier = GeminiErrorClassifier()

    def post(result: Any) -> None:
        return None

    def progress(done: int, total: int, item_id: str) -> None:
        return None

    processor: Processor = ParallelBatchProcessor(
        config=config,
        post_processor=post,
        error_classifier=classifier,
        middlewares=middlewares,
        observers=observers,
        progress_callback=progress,
    )
    assert processor.config is config
    assert processor.max_workers == 7
    assert processor.progress_callback_timeout is None
    assert processor.max_queue_size == 20
    assert processor.post_processor is post
    assert processor.progress_callback is progress
    assert processor.error_classifier is classifier
    assert processor.middlewares is middlewares
    assert processor.observers is observers
    strategy = processor.rate_limit_strategy
    assert isinstance(strategy, ExponentialBackoffStrategy)
    assert (
        strategy.initial_cooldown,
        strategy.max_cooldown,
        strategy.backoff_multiplier,
        strategy.slow_start_items,
        strategy.slow_start_initial_delay,
        strategy.slow_start_final_delay,
    ) == (30.0, 600.0, 3.0, 5, 1.0, 0.5)


def test_positional_order_of_the_constructor() -> None:
    config = ProcessorConfig()
    classifier = DefaultErrorClassifier()
    limits = FixedDelayStrategy()
    middlewares: list[Any] = []
    observers: list[Any] = []

    def post(result: Any) -> None:
        return None

    def progress(done: int, total: int, item_id: str) -> None:
        return None

    processor: Processor = ParallelBatchProcessor(
        None, post, None, None, config, classifier, limits, middlewares, observers, progress
    )
    assert processor.post_processor is post
    assert processor.config is config
    assert processor.error_classifier is classifier
    assert processor.rate_limit_strategy is limits
    assert processor.middlewares is middlewares
    assert processor.observers is observers
    assert processor.progress_callback is progress


def test_custom_rate_limit_strategy_ignores_config_rate_limit() -> None:
    limits = FixedDelayStrategy(cooldown=1.0, delay_between_requests=0.0)
    config = ProcessorConfig(rate_limit=RateLimitConfig(cooldown_seconds=999.0))
    processor: Processor = ParallelBatchProcessor(config=config, rate_limit_strategy=limits)
    assert processor.rate_limit_strategy is limits


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"max_workers": 3}, "max_workers", id="max_workers"),
        pytest.param({"timeout_per_item": 30.0}, "timeout_per_item", id="timeout_per_item"),
        pytest.param({"rate_limit_cooldown": 60.0}, "cooldown_seconds", id="rate_limit_cooldown"),
    ],
)
def test_each_legacy_parameter_warns_once(kwargs: dict[str, Any], field: str) -> None:
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as caught:
        ParallelBatchProcessor(**kwargs)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert next(iter(kwargs)) in message
    assert "ProcessorConfig" in message
    assert field in message
    assert caught[0].filename == __file__  # points at the caller


def test_legacy_parameters_build_the_config() -> None:
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as caught:
        processor: Processor = ParallelBatchProcessor(
            max_workers=3, timeout_per_item=30.0, rate_limit_cooldown=60.0
        )
    assert len(caught) == 3
    assert processor.config == ProcessorConfig(
        max_workers=3,
        timeout_per_item=30.0,
        rate_limit=RateLimitConfig(cooldown_seconds=60.0),
    )
    assert processor.max_workers == 3
    strategy = processor.rate_limit_strategy
    assert isinstance(strategy, ExponentialBackoffStrategy)
    assert strategy.initial_cooldown == 60.0


def test_legacy_zero_silently_becomes_the_default() -> None:
    # Quirk (mirror): the legacy values are combined with `or`.
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        processor: Processor = ParallelBatchProcessor(
            max_workers=0, timeout_per_item=0.0, rate_limit_cooldown=0.0
        )
    assert processor.config.max_workers == 5
    assert processor.config.timeout_per_item == 120.0
    assert processor.config.rate_limit.cooldown_seconds == 300.0


def test_legacy_parameters_overwrite_a_given_config_in_place() -> None:
    retry = RetryConfig(max_attempts=5)
    config = ProcessorConfig(max_workers=2, timeout_per_item=10.0, retry=retry)
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        processor: Processor = ParallelBatchProcessor(
            max_workers=9, timeout_per_item=50.0, rate_limit_cooldown=12.0, config=config
        )
    assert processor.config is config
    assert (config.max_workers, config.timeout_per_item) == (9, 50.0)
    assert config.rate_limit.cooldown_seconds == 12.0
    assert config.retry is retry
    assert processor.max_workers == 9


def test_only_given_legacy_parameters_overwrite_the_config() -> None:
    config = ProcessorConfig(max_workers=2, timeout_per_item=10.0)
    with pytest.warns(DeprecationWarning, match=DEPRECATED):
        ParallelBatchProcessor(timeout_per_item=50.0, config=config)
    assert (config.max_workers, config.timeout_per_item) == (2, 50.0)
    assert config.rate_limit.cooldown_seconds == 300.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"timeout_per_item": -1.0}, "timeout_per_item must be > 0", id="no-config"),
        pytest.param(
            {"max_workers": -2, "config": ProcessorConfig()},
            "max_workers must be >= 1",
            id="with-config",
        ),
    ],
)
def test_invalid_legacy_values_fail_validation(kwargs: dict[str, Any], message: str) -> None:
    with (
        pytest.warns(DeprecationWarning, match=DEPRECATED),
        pytest.raises(ValueError, match=message),
    ):
        ParallelBatchProcessor(**kwargs)


def test_batch_processor_is_abstract() -> None:
    with pytest.raises(TypeError):
        BatchProcessor()  # type: ignore[abstract]  # the point of the test
