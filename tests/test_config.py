"""RetryConfig, RateLimitConfig and ProcessorConfig (spec §12)."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import pytest

from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig, RetryConfig

ConfigClass = type[RetryConfig] | type[RateLimitConfig] | type[ProcessorConfig]

LOGGER_NAME = "async_batch_llm.core.config"


# --------------------------------------------------------------------------------------------
# Defaults and field order
# --------------------------------------------------------------------------------------------


def test_retry_config_defaults() -> None:
    config = RetryConfig()
    assert (
        config.max_attempts,
        config.initial_wait,
        config.max_wait,
        config.exponential_base,
        config.jitter,
    ) == (3, 1.0, 60.0, 2.0, True)


def test_rate_limit_config_defaults() -> None:
    config = RateLimitConfig()
    assert (
        config.cooldown_seconds,
        config.slow_start_items,
        config.slow_start_initial_delay,
        config.slow_start_final_delay,
        config.backoff_multiplier,
    ) == (300.0, 50, 2.0, 0.1, 1.5)


def test_processor_config_defaults() -> None:
    config = ProcessorConfig()
    assert config.max_workers == 5
    assert config.timeout_per_item == 120.0
    assert config.retry == RetryConfig()
    assert config.rate_limit == RateLimitConfig()
    assert config.max_requests_per_minute is None
    assert config.progress_interval == 10
    assert config.progress_callback_timeout == 5.0
    assert config.enable_detailed_logging is False
    assert config.max_queue_size == 0
    assert config.dry_run is False


def test_each_processor_config_gets_its_own_nested_configs() -> None:
    first, second = ProcessorConfig(), ProcessorConfig()
    assert first.retry is not second.retry
    assert first.rate_limit is not second.rate_limit


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (
            RetryConfig,
            ["max_attempts", "initial_wait", "max_wait", "exponential_base", "jitter"],
        ),
        (
            RateLimitConfig,
            [
                "cooldown_seconds",
                "slow_start_items",
                "slow_start_initial_delay",
                "slow_start_final_delay",
                "backoff_multiplier",
            ],
        ),
        (
            ProcessorConfig,
            [
                "max_workers",
                "timeout_per_item",
                "retry",
                "rate_limit",
                "max_requests_per_minute",
                "progress_interval",
                "progress_callback_timeout",
                "enable_detailed_logging",
                "max_queue_size",
                "dry_run",
                "max_tokens_per_minute",
                "max_input_tokens_per_minute",
                "max_output_tokens_per_minute",
                "token_estimator",
                "quota_burst_seconds",
                "quotas",
                "guardrails",
                "mode",
                "batch_fallback",
                "quota_backend",
            ],
        ),
    ],
    ids=["RetryConfig", "RateLimitConfig", "ProcessorConfig"],
)
def test_field_order_is_the_spec_order(cls: ConfigClass, names: list[str]) -> None:
    assert [f.name for f in dataclasses.fields(cls)] == names


def test_retry_config_positional_construction() -> None:
    config = RetryConfig(5, 0.5, 10.0, 3.0, False)
    assert config == RetryConfig(
        max_attempts=5, initial_wait=0.5, max_wait=10.0, exponential_base=3.0, jitter=False
    )


def test_rate_limit_config_positional_construction() -> None:
    config = RateLimitConfig(30.0, 7, 1.5, 0.2, 2.5)
    assert config.cooldown_seconds == 30.0
    assert config.slow_start_items == 7
    assert config.slow_start_initial_delay == 1.5
    assert config.slow_start_final_delay == 0.2
    assert config.backoff_multiplier == 2.5


def test_processor_config_positional_construction() -> None:
    retry = RetryConfig(max_attempts=2)
    rate_limit = RateLimitConfig(cooldown_seconds=10.0)
    config = ProcessorConfig(3, 30.0, retry, rate_limit, 600.0, 4, None, True, 12, True)
    assert config.max_workers == 3
    assert config.timeout_per_item == 30.0
    assert config.retry is retry
    assert config.rate_limit is rate_limit
    assert config.max_requests_per_minute == 600.0
    assert config.progress_interval == 4
    assert config.progress_callback_timeout is None
    assert config.enable_detailed_logging is True
    assert config.max_queue_size == 12
    assert config.dry_run is True


def test_processor_config_repr_lists_fields_in_order() -> None:
    text = repr(ProcessorConfig())
    assert text.startswith(
        "ProcessorConfig(max_workers=5, timeout_per_item=120.0, retry=RetryConfig("
    )
    assert text.index("rate_limit=") < text.index("max_requests_per_minute=")
    assert "max_queue_size=0, dry_run=False, max_tokens_per_minute=None, " in text
    assert "quota_burst_seconds=None, quotas=None, guardrails=GuardrailConfig(" in text
    assert text.endswith(")")


def test_spec_example_configuration_is_valid() -> None:
    config = ProcessorConfig(
        max_workers=5,
        timeout_per_item=120.0,
        retry=RetryConfig(
            max_attempts=3, initial_wait=1.0, max_wait=60.0, exponential_base=2.0, jitter=True
        ),
        rate_limit=RateLimitConfig(
            cooldown_seconds=300.0,
            backoff_multiplier=1.5,
            slow_start_items=50,
            slow_start_initial_delay=2.0,
            slow_start_final_delay=0.1,
        ),
        progress_interval=10,
        progress_callback_timeout=5.0,
        max_queue_size=0,
    )
    config.validate()


# --------------------------------------------------------------------------------------------
# Range checks (ValueError, message prefixes of §12)
# --------------------------------------------------------------------------------------------

# (class, kwargs, full expected message)
RANGE_ERRORS: list[tuple[ConfigClass, dict[str, Any], str]] = [
    (
        RetryConfig,
        {"max_attempts": 0},
        "max_attempts must be >= 1, got 0 "
        "(it counts every attempt, the first included; 1 means no retries)",
    ),
    (
        RetryConfig,
        {"max_attempts": -3},
        "max_attempts must be >= 1, got -3 "
        "(it counts every attempt, the first included; 1 means no retries)",
    ),
    (
        RetryConfig,
        {"initial_wait": 0.0},
        "initial_wait must be > 0, got 0.0 (seconds to wait before the first retry)",
    ),
    (
        RetryConfig,
        {"initial_wait": -1},
        "initial_wait must be > 0, got -1 (seconds to wait before the first retry)",
    ),
    (
        RetryConfig,
        {"initial_wait": 5.0, "max_wait": 4.0},
        "max_wait must be >= initial_wait, got max_wait=4.0 and initial_wait=5.0",
    ),
    (
        RetryConfig,
        {"exponential_base": 0.5},
        "exponential_base must be >= 1, got 0.5 (1 keeps every wait at initial_wait)",
    ),
    (
        RateLimitConfig,
        {"cooldown_seconds": -0.5},
        "cooldown_seconds must be >= 0, got -0.5",
    ),
    (
        RateLimitConfig,
        {"slow_start_items": -1},
        "slow_start_items must be >= 0, got -1 (0 disables slow start)",
    ),
    (
        RateLimitConfig,
        {"slow_start_initial_delay": 0.1, "slow_start_final_delay": 0.2},
        "slow_start_initial_delay must be >= slow_start_final_delay, got "
        "slow_start_initial_delay=0.1 and slow_start_final_delay=0.2",
    ),
    (
        RateLimitConfig,
        {"backoff_multiplier": 0.99},
        "backoff_multiplier must be >= 1.0, got 0.99 "
        "(1.0 keeps every cooldown at cooldown_seconds)",
    ),
    (ProcessorConfig, {"max_workers": 0}, "max_workers must be >= 1, got 0"),
    (ProcessorConfig, {"max_workers": -2}, "max_workers must be >= 1, got -2"),
    (
        ProcessorConfig,
        {"timeout_per_item": 0},
        "timeout_per_item must be > 0, got 0 (seconds allowed for each attempt)",
    ),
    (
        ProcessorConfig,
        {"timeout_per_item": -1.0},
        "timeout_per_item must be > 0, got -1.0 (seconds allowed for each attempt)",
    ),
    (ProcessorConfig, {"progress_interval": 0}, "progress_interval must be >= 1, got 0"),
    (
        ProcessorConfig,
        {"progress_callback_timeout": 0.0},
        "progress_callback_timeout must be > 0, got 0.0 (use None for no limit)",
    ),
    (
        ProcessorConfig,
        {"progress_callback_timeout": -5},
        "progress_callback_timeout must be > 0, got -5 (use None for no limit)",
    ),
    (
        ProcessorConfig,
        {"max_queue_size": -1},
        "max_queue_size must be >= 0, got -1 (0 means unbounded)",
    ),
    (
        ProcessorConfig,
        {"max_requests_per_minute": 0},
        "max_requests_per_minute must be > 0 or None, got 0 "
        "(None disables proactive rate limiting)",
    ),
    (
        ProcessorConfig,
        {"max_requests_per_minute": -60.0},
        "max_requests_per_minute must be > 0 or None, got -60.0 "
        "(None disables proactive rate limiting)",
    ),
]

RANGE_IDS = [
    "retry-max_attempts-0",
    "retry-max_attempts-negative",
    "retry-initial_wait-0",
    "retry-initial_wait-negative",
    "retry-max_wait-below-initial_wait",
    "retry-exponential_base-below-1",
    "rate-cooldown_seconds-negative",
    "rate-slow_start_items-negative",
    "rate-initial_delay-below-final_delay",
    "rate-backoff_multiplier-below-1",
    "proc-max_workers-0",
    "proc-max_workers-negative",
    "proc-timeout_per_item-0",
    "proc-timeout_per_item-negative",
    "proc-progress_interval-0",
    "proc-progress_callback_timeout-0",
    "proc-progress_callback_timeout-negative",
    "proc-max_queue_size-negative",
    "proc-max_requests_per_minute-0",
    "proc-max_requests_per_minute-negative",
]


def _prefix(message: str) -> str:
    """The §12 fragment: everything before ", got"."""
    return message.split(", got")[0]


@pytest.mark.parametrize(("cls", "kwargs", "message"), RANGE_ERRORS, ids=RANGE_IDS)
def test_out_of_range_value_is_rejected_at_construction(
    cls: ConfigClass, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{_prefix(message)}") as excinfo:
        cls(**kwargs)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(("cls", "kwargs", "message"), RANGE_ERRORS, ids=RANGE_IDS)
def test_out_of_range_value_is_rejected_by_validate_after_mutation(
    cls: ConfigClass, kwargs: dict[str, Any], message: str
) -> None:
    config = cls()
    for name, value in kwargs.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=rf"^{_prefix(message)}") as excinfo:
        config.validate()
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("kwargs", "prefix"),
    [
        ({"max_workers": 0, "timeout_per_item": 0}, "max_workers must be >= 1"),
        ({"timeout_per_item": 0, "progress_interval": 0}, "timeout_per_item must be > 0"),
        (
            {"progress_interval": 0, "progress_callback_timeout": 0},
            "progress_interval must be >= 1",
        ),
        (
            {"progress_callback_timeout": 0, "max_queue_size": -1},
            "progress_callback_timeout must be > 0",
        ),
        ({"max_queue_size": -1, "max_requests_per_minute": 0}, "max_queue_size must be >= 0"),
        (
            {"max_requests_per_minute": 0, "retry": RetryConfig()},
            "max_requests_per_minute must be > 0 or None",
        ),
    ],
    ids=[
        "max_workers-before-timeout",
        "timeout-before-progress_interval",
        "progress_interval-before-callback_timeout",
        "callback_timeout-before-queue_size",
        "queue_size-before-rpm",
        "rpm-before-nested",
    ],
)
def test_processor_config_checks_run_in_spec_order(kwargs: dict[str, Any], prefix: str) -> None:
    config = ProcessorConfig()
    for name, value in kwargs.items():
        setattr(config, name, value)
    config.retry.max_attempts = 0
    with pytest.raises(ValueError, match=rf"^{prefix}"):
        config.validate()


@pytest.mark.parametrize(
    ("cls", "kwargs", "prefix"),
    [
        (
            RetryConfig,
            {"max_attempts": 0, "initial_wait": 0, "exponential_base": 0},
            "max_attempts must be >= 1",
        ),
        (RetryConfig, {"initial_wait": 0, "exponential_base": 0}, "initial_wait must be > 0"),
        (
            RetryConfig,
            {"initial_wait": 2, "max_wait": 1, "exponential_base": 0},
            "max_wait must be >= initial_wait",
        ),
        (
            RateLimitConfig,
            {"cooldown_seconds": -1, "slow_start_items": -1, "backoff_multiplier": 0},
            "cooldown_seconds must be >= 0",
        ),
        (
            RateLimitConfig,
            {"slow_start_items": -1, "slow_start_final_delay": 9, "backoff_multiplier": 0},
            "slow_start_items must be >= 0",
        ),
        (
            RateLimitConfig,
            {"slow_start_final_delay": 9, "backoff_multiplier": 0},
            "slow_start_initial_delay must be >= slow_start_final_delay",
        ),
    ],
    ids=[
        "retry-max_attempts-first",
        "retry-initial_wait-second",
        "retry-max_wait-third",
        "rate-cooldown-first",
        "rate-slow_start_items-second",
        "rate-delays-third",
    ],
)
def test_nested_config_checks_run_in_spec_order(
    cls: ConfigClass, kwargs: dict[str, Any], prefix: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{prefix}"):
        cls(**kwargs)


def test_processor_config_validate_rechecks_nested_retry_config() -> None:
    config = ProcessorConfig()
    config.retry.max_attempts = 0
    with pytest.raises(ValueError, match=r"^max_attempts must be >= 1, got 0"):
        config.validate()


def test_processor_config_validate_rechecks_nested_rate_limit_config() -> None:
    config = ProcessorConfig()
    config.rate_limit.backoff_multiplier = 0.5
    with pytest.raises(ValueError, match=r"^backoff_multiplier must be >= 1.0, got 0.5"):
        config.validate()


def test_validate_passes_again_once_a_bad_mutation_is_undone() -> None:
    config = ProcessorConfig()
    config.max_workers = 0
    with pytest.raises(ValueError, match=r"^max_workers must be >= 1"):
        config.validate()
    config.max_workers = 2
    config.validate()


# --------------------------------------------------------------------------------------------
# Boundary values that are valid, and no coercion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (RetryConfig, {"max_attempts": 1}),
        (RetryConfig, {"initial_wait": 5.0, "max_wait": 5.0}),
        (RetryConfig, {"exponential_base": 1}),
        (RetryConfig, {"initial_wait": 1e-9}),
        (RetryConfig, {"max_wait": math.inf}),
        (RetryConfig, {"jitter": False}),
        (RateLimitConfig, {"cooldown_seconds": 0}),
        (RateLimitConfig, {"slow_start_items": 0}),
        (RateLimitConfig, {"slow_start_initial_delay": 0, "slow_start_final_delay": 0}),
        (RateLimitConfig, {"slow_start_initial_delay": 0.5, "slow_start_final_delay": 0.5}),
        (RateLimitConfig, {"backoff_multiplier": 1.0}),
        (RateLimitConfig, {"backoff_multiplier": 1}),
        (ProcessorConfig, {"max_workers": 1}),
        (ProcessorConfig, {"timeout_per_item": 1e-3}),
        (ProcessorConfig, {"timeout_per_item": math.inf}),
        (ProcessorConfig, {"progress_interval": 1}),
        (ProcessorConfig, {"progress_callback_timeout": None}),
        (ProcessorConfig, {"max_queue_size": 0}),
        (ProcessorConfig, {"max_requests_per_minute": None}),
        (ProcessorConfig, {"max_requests_per_minute": 0.5}),
        (ProcessorConfig, {"max_requests_per_minute": 6000}),
        (ProcessorConfig, {"enable_detailed_logging": True, "dry_run": True}),
    ],
    ids=[
        "retry-single-attempt",
        "retry-max_wait-equals-initial_wait",
        "retry-base-1",
        "retry-tiny-initial_wait",
        "retry-infinite-max_wait",
        "retry-no-jitter",
        "rate-zero-cooldown",
        "rate-zero-slow-start-items",
        "rate-zero-delays",
        "rate-equal-delays",
        "rate-multiplier-1.0",
        "rate-multiplier-int-1",
        "proc-one-worker",
        "proc-tiny-timeout",
        "proc-infinite-timeout",
        "proc-progress_interval-1",
        "proc-no-callback-timeout",
        "proc-unbounded-queue",
        "proc-no-rpm",
        "proc-fractional-rpm",
        "proc-int-rpm",
        "proc-flags-on",
    ],
)
def test_boundary_values_are_accepted(cls: ConfigClass, kwargs: dict[str, Any]) -> None:
    config = cls(**kwargs)
    config.validate()
    for name, value in kwargs.items():
        assert getattr(config, name) is value or getattr(config, name) == value


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (RetryConfig, "initial_wait", 2),
        (RetryConfig, "max_wait", 90),
        (RetryConfig, "exponential_base", 3),
        (RateLimitConfig, "cooldown_seconds", 10),
        (RateLimitConfig, "slow_start_initial_delay", 3),
        (RateLimitConfig, "slow_start_final_delay", 0),
        (ProcessorConfig, "timeout_per_item", 30),
        (ProcessorConfig, "max_requests_per_minute", 600),
        (ProcessorConfig, "progress_callback_timeout", 2),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_ints_are_accepted_for_float_fields_and_stored_unchanged(
    cls: ConfigClass, name: str, value: int
) -> None:
    kwargs: dict[str, Any] = {name: value}
    config = cls(**kwargs)
    stored = getattr(config, name)
    assert type(stored) is int
    assert stored == value


# --------------------------------------------------------------------------------------------
# Wrong types (TypeError) and NaN (ValueError), checked before the range checks
# --------------------------------------------------------------------------------------------

WRONG_TYPES: list[tuple[ConfigClass, str, object, str]] = [
    (RetryConfig, "max_attempts", "3", "max_attempts must be an int, got str '3'"),
    (RetryConfig, "max_attempts", 3.0, "max_attempts must be an int, got float 3.0"),
    (RetryConfig, "max_attempts", True, "max_attempts must be an int, got bool True"),
    (RetryConfig, "max_attempts", None, "max_attempts must be an int, got NoneType None"),
    (RetryConfig, "initial_wait", "1", "initial_wait must be an int or a float, got str '1'"),
    (RetryConfig, "initial_wait", True, "initial_wait must be an int or a float, got bool True"),
    (RetryConfig, "max_wait", None, "max_wait must be an int or a float, got NoneType None"),
    (
        RetryConfig,
        "exponential_base",
        [2],
        "exponential_base must be an int or a float, got list [2]",
    ),
    (RetryConfig, "jitter", 1, "jitter must be a bool, got int 1"),
    (RetryConfig, "jitter", "yes", "jitter must be a bool, got str 'yes'"),
    (RetryConfig, "jitter", None, "jitter must be a bool, got NoneType None"),
    (
        RateLimitConfig,
        "cooldown_seconds",
        "300",
        "cooldown_seconds must be an int or a float, got str '300'",
    ),
    (
        RateLimitConfig,
        "slow_start_items",
        50.0,
        "slow_start_items must be an int, got float 50.0",
    ),
    (
        RateLimitConfig,
        "slow_start_items",
        False,
        "slow_start_items must be an int, got bool False",
    ),
    (
        RateLimitConfig,
        "slow_start_initial_delay",
        None,
        "slow_start_initial_delay must be an int or a float, got NoneType None",
    ),
    (
        RateLimitConfig,
        "slow_start_final_delay",
        "0.1",
        "slow_start_final_delay must be an int or a float, got str '0.1'",
    ),
    (
        RateLimitConfig,
        "backoff_multiplier",
        True,
        "backoff_multiplier must be an int or a float, got bool True",
    ),
    (ProcessorConfig, "max_workers", "5", "max_workers must be an int, got str '5'"),
    (ProcessorConfig, "max_workers", True, "max_workers must be an int, got bool True"),
    (ProcessorConfig, "max_workers", 5.0, "max_workers must be an int, got float 5.0"),
    (ProcessorConfig, "max_workers", None, "max_workers must be an int, got NoneType None"),
    (
        ProcessorConfig,
        "timeout_per_item",
        "120",
        "timeout_per_item must be an int or a float, got str '120'",
    ),
    (
        ProcessorConfig,
        "timeout_per_item",
        None,
        "timeout_per_item must be an int or a float, got NoneType None",
    ),
    (
        ProcessorConfig,
        "retry",
        {"max_attempts": 3},
        "retry must be a RetryConfig, got dict {'max_attempts': 3}",
    ),
    (ProcessorConfig, "retry", None, "retry must be a RetryConfig, got NoneType None"),
    (
        ProcessorConfig,
        "rate_limit",
        RetryConfig(),
        # the repr is cut at 80 characters
        "rate_limit must be a RateLimitConfig, got RetryConfig RetryConfig(max_attempts=3, "
        "initial_wait=1.0, max_wait=60.0, exponential_base...",
    ),
    (
        ProcessorConfig,
        "max_requests_per_minute",
        "60",
        "max_requests_per_minute must be an int, a float or None, got str '60'",
    ),
    (
        ProcessorConfig,
        "max_requests_per_minute",
        True,
        "max_requests_per_minute must be an int, a float or None, got bool True",
    ),
    (
        ProcessorConfig,
        "progress_interval",
        10.0,
        "progress_interval must be an int, got float 10.0",
    ),
    (
        ProcessorConfig,
        "progress_callback_timeout",
        "5",
        "progress_callback_timeout must be an int, a float or None, got str '5'",
    ),
    (
        ProcessorConfig,
        "enable_detailed_logging",
        1,
        "enable_detailed_logging must be a bool, got int 1",
    ),
    (ProcessorConfig, "max_queue_size", "0", "max_queue_size must be an int, got str '0'"),
    (ProcessorConfig, "max_queue_size", None, "max_queue_size must be an int, got NoneType None"),
    (ProcessorConfig, "dry_run", "false", "dry_run must be a bool, got str 'false'"),
    (ProcessorConfig, "dry_run", 0, "dry_run must be a bool, got int 0"),
]


def _wrong_type_id(row: tuple[ConfigClass, str, object, str]) -> str:
    cls, name, value, _ = row
    return f"{cls.__name__}-{name}-{type(value).__name__}"


@pytest.mark.parametrize(
    ("cls", "name", "value", "message"),
    WRONG_TYPES,
    ids=[_wrong_type_id(row) for row in WRONG_TYPES],
)
def test_wrong_type_is_rejected_at_construction(
    cls: ConfigClass, name: str, value: object, message: str
) -> None:
    kwargs: dict[str, Any] = {name: value}
    with pytest.raises(TypeError) as excinfo:
        cls(**kwargs)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("cls", "name", "value", "message"),
    WRONG_TYPES,
    ids=[_wrong_type_id(row) for row in WRONG_TYPES],
)
def test_wrong_type_is_rejected_by_validate_after_mutation(
    cls: ConfigClass, name: str, value: object, message: str
) -> None:
    config = cls()
    setattr(config, name, value)
    with pytest.raises(TypeError) as excinfo:
        config.validate()
    assert str(excinfo.value) == message


def test_long_values_are_shortened_in_type_errors() -> None:
    with pytest.raises(TypeError) as excinfo:
        ProcessorConfig(max_workers="x" * 500)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert message.startswith("max_workers must be an int, got str 'xxx")
    assert message.endswith("...")
    assert len(message) < 150


NAN_FIELDS: list[tuple[ConfigClass, str]] = [
    (RetryConfig, "initial_wait"),
    (RetryConfig, "max_wait"),
    (RetryConfig, "exponential_base"),
    (RateLimitConfig, "cooldown_seconds"),
    (RateLimitConfig, "slow_start_initial_delay"),
    (RateLimitConfig, "slow_start_final_delay"),
    (RateLimitConfig, "backoff_multiplier"),
    (ProcessorConfig, "timeout_per_item"),
    (ProcessorConfig, "max_requests_per_minute"),
    (ProcessorConfig, "progress_callback_timeout"),
]


@pytest.mark.parametrize(
    ("cls", "name"), NAN_FIELDS, ids=[f"{cls.__name__}-{name}" for cls, name in NAN_FIELDS]
)
def test_nan_is_rejected_naming_the_field(cls: ConfigClass, name: str) -> None:
    kwargs: dict[str, Any] = {name: math.nan}
    with pytest.raises(ValueError, match=rf"^{name} must not be NaN, got nan$"):
        cls(**kwargs)
    config = cls()
    setattr(config, name, math.nan)
    with pytest.raises(ValueError, match=rf"^{name} must not be NaN, got nan$"):
        config.validate()


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc_type", "prefix"),
    [
        (
            ProcessorConfig,
            {"max_workers": 0, "dry_run": "yes"},
            TypeError,
            "dry_run must be a bool",
        ),
        (
            ProcessorConfig,
            {"timeout_per_item": -1, "max_queue_size": 1.5},
            TypeError,
            "max_queue_size must be an int",
        ),
        (
            ProcessorConfig,
            {"max_workers": 0, "progress_callback_timeout": math.nan},
            ValueError,
            "progress_callback_timeout must not be NaN",
        ),
        (RetryConfig, {"max_attempts": 0, "jitter": 1}, TypeError, "jitter must be a bool"),
        (
            RateLimitConfig,
            {"cooldown_seconds": -1, "backoff_multiplier": "2"},
            TypeError,
            "backoff_multiplier must be an int or a float",
        ),
    ],
    ids=[
        "proc-type-beats-range",
        "proc-later-type-beats-earlier-range",
        "proc-nan-beats-range",
        "retry-type-beats-range",
        "rate-type-beats-range",
    ],
)
def test_type_checks_run_before_range_checks(
    cls: ConfigClass, kwargs: dict[str, Any], exc_type: type[Exception], prefix: str
) -> None:
    with pytest.raises(exc_type, match=rf"^{prefix}"):
        cls(**kwargs)


def test_processor_range_checks_run_before_nested_type_checks() -> None:
    config = ProcessorConfig()
    config.max_workers = 0
    config.retry.jitter = "yes"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"^max_workers must be >= 1"):
        config.validate()


# --------------------------------------------------------------------------------------------
# Advisory warnings (§12.3): logged, never raised
# --------------------------------------------------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == LOGGER_NAME and record.levelno == logging.WARNING
    ]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, []),
        ({"max_queue_size": 2, "max_workers": 5}, ["max_queue_size=2 is smaller than"]),
        ({"max_queue_size": 5, "max_workers": 5}, []),
        ({"max_queue_size": 0, "max_workers": 50}, []),
        (
            {"timeout_per_item": 0.5, "retry": RetryConfig(max_attempts=1, initial_wait=1.0)},
            ["timeout_per_item=0.5 is shorter than retry.initial_wait=1.0"],
        ),
        ({"timeout_per_item": 1.0, "retry": RetryConfig(max_attempts=1, initial_wait=1.0)}, []),
        (
            # worst case 1 + 2 + 4 + 8 = 15 s; half of it is 7.5 s
            {"timeout_per_item": 7.4, "retry": RetryConfig(max_attempts=5)},
            ["timeout_per_item=7.4 is shorter than half of the worst-case total retry wait"],
        ),
        ({"timeout_per_item": 7.5, "retry": RetryConfig(max_attempts=5)}, []),
        (
            # worst case 1 + 2 + 4 + 4 + 4 = 15 s with max_wait=4
            {"timeout_per_item": 7.4, "retry": RetryConfig(max_attempts=6, max_wait=4.0)},
            ["timeout_per_item=7.4 is shorter than half of the worst-case total retry wait"],
        ),
        ({"timeout_per_item": 7.5, "retry": RetryConfig(max_attempts=6, max_wait=4.0)}, []),
        (
            {"max_requests_per_minute": 299, "max_workers": 5},
            ["max_requests_per_minute=299 allows fewer requests per second"],
        ),
        ({"max_requests_per_minute": 300, "max_workers": 5}, []),
        (
            {
                "max_workers": 10,
                "max_queue_size": 3,
                "timeout_per_item": 0.5,
                "max_requests_per_minute": 60,
            },
            [
                "max_queue_size=3 is smaller than",
                "timeout_per_item=0.5 is shorter than retry.initial_wait=1.0",
                "timeout_per_item=0.5 is shorter than half of the worst-case total retry wait",
                "max_requests_per_minute=60 allows fewer requests per second",
            ],
        ),
    ],
    ids=[
        "defaults-quiet",
        "queue-smaller-than-workers",
        "queue-equal-to-workers",
        "queue-unbounded",
        "timeout-below-initial-wait",
        "timeout-equal-to-initial-wait",
        "timeout-below-half-worst-case",
        "timeout-at-half-worst-case",
        "timeout-below-half-capped-worst-case",
        "timeout-at-half-capped-worst-case",
        "rpm-below-worker-rate",
        "rpm-at-worker-rate",
        "all-four",
    ],
)
def test_advisory_warnings_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture, kwargs: dict[str, Any], expected: list[str]
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    ProcessorConfig(**kwargs)
    messages = _warnings(caplog)
    assert len(messages) == len(expected)
    for message, start in zip(messages, expected, strict=True):
        assert message.startswith(start)


def test_validate_logs_advisory_warnings_again_after_mutation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    config = ProcessorConfig()
    assert _warnings(caplog) == []
    config.max_queue_size = 1
    config.validate()
    assert len(_warnings(caplog)) == 1


def test_huge_max_attempts_is_cheap_and_warns_without_overflow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    ProcessorConfig(retry=RetryConfig(max_attempts=10**12, exponential_base=1.0000001))
    ProcessorConfig(retry=RetryConfig(max_attempts=10**12, max_wait=math.inf))
    messages = _warnings(caplog)
    assert len(messages) == 2
    assert all("worst-case" in message for message in messages)
