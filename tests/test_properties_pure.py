"""Property-based tests of the pure timing arithmetic: retry waits, cooldowns, slow start."""

from __future__ import annotations

import math
from collections.abc import Coroutine
from fractions import Fraction
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_batch_llm._internal.backoff import retry_wait
from async_batch_llm.core.config import RetryConfig, _worst_case_total_retry_wait
from async_batch_llm.strategies.rate_limit import ExponentialBackoffStrategy

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise AssertionError("the coroutine suspended")


def _never_called() -> float:
    raise AssertionError("rand must not be called")


@st.composite
def retry_configs(draw: st.DrawFn, *, jitter: bool, max_attempts: int = 1000) -> RetryConfig:
    initial = draw(st.floats(min_value=1e-6, max_value=1e6))
    spread = draw(st.floats(min_value=1.0, max_value=1e6))
    return RetryConfig(
        max_attempts=draw(st.integers(min_value=1, max_value=max_attempts)),
        initial_wait=initial,
        max_wait=initial * spread,
        exponential_base=draw(st.floats(min_value=1.0, max_value=10.0)),
        jitter=jitter,
    )


unit_interval = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


# --------------------------------------------------------------------------------------------
# Retry waits (§4.5)
# --------------------------------------------------------------------------------------------


@given(retry=retry_configs(jitter=False), attempt=st.integers(min_value=1, max_value=300))
def test_retry_wait_without_jitter_matches_the_formula(retry: RetryConfig, attempt: int) -> None:
    wait = retry_wait(attempt, retry, validation_like=False, rand=_never_called)
    exact = min(
        Fraction(retry.initial_wait) * Fraction(retry.exponential_base) ** (attempt - 1),
        Fraction(retry.max_wait),
    )
    assert wait == pytest.approx(float(exact), rel=1e-12)
    assert retry.initial_wait <= wait <= retry.max_wait


@given(retry=retry_configs(jitter=False), attempt=st.integers(min_value=1, max_value=10**9))
def test_retry_wait_without_jitter_stays_within_bounds(retry: RetryConfig, attempt: int) -> None:
    wait = retry_wait(attempt, retry, validation_like=False, rand=_never_called)
    assert retry.initial_wait <= wait <= retry.max_wait


@given(
    retry=retry_configs(jitter=True),
    attempt=st.integers(min_value=1, max_value=10**9),
    r=unit_interval,
)
def test_jitter_scales_the_wait_into_half_open_range(
    retry: RetryConfig, attempt: int, r: float
) -> None:
    nominal = retry_wait(
        attempt,
        RetryConfig(
            max_attempts=retry.max_attempts,
            initial_wait=retry.initial_wait,
            max_wait=retry.max_wait,
            exponential_base=retry.exponential_base,
            jitter=False,
        ),
        validation_like=False,
        rand=_never_called,
    )
    wait = retry_wait(attempt, retry, validation_like=False, rand=lambda: r)
    assert 0.5 * nominal <= wait < nominal
    assert 0.5 * retry.initial_wait <= wait < retry.max_wait


@given(
    retry=st.one_of(retry_configs(jitter=True), retry_configs(jitter=False)),
    attempt=st.integers(min_value=1, max_value=10**9),
)
def test_validation_like_wait_is_always_zero(retry: RetryConfig, attempt: int) -> None:
    assert retry_wait(attempt, retry, validation_like=True, rand=_never_called) == 0.0


@given(retry=retry_configs(jitter=False, max_attempts=200))
def test_worst_case_retry_wait_matches_the_spec_sum(retry: RetryConfig) -> None:
    naive = sum(
        min(retry.initial_wait * retry.exponential_base**i, retry.max_wait)
        for i in range(retry.max_attempts - 1)
    )
    assert _worst_case_total_retry_wait(retry) == pytest.approx(naive, rel=1e-12)


@settings(max_examples=25)
@given(
    max_attempts=st.integers(min_value=10_002, max_value=12_000),
    base=st.floats(min_value=1.0, max_value=1.0 + 1e-3),
    spread=st.floats(min_value=1.0, max_value=1e9),
)
def test_worst_case_retry_wait_closed_form_is_accurate(
    max_attempts: int, base: float, spread: float
) -> None:
    retry = RetryConfig(max_attempts=max_attempts, max_wait=spread, exponential_base=base)
    naive = math.fsum(
        min(retry.initial_wait * retry.exponential_base**i, retry.max_wait)
        for i in range(retry.max_attempts - 1)
    )
    assert _worst_case_total_retry_wait(retry) == pytest.approx(naive, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Cooldown growth (§4.8.2)
# --------------------------------------------------------------------------------------------

cooldown_strategies = st.builds(
    ExponentialBackoffStrategy,
    initial_cooldown=st.floats(min_value=0.0, max_value=1e4),
    max_cooldown=st.floats(min_value=0.0, max_value=1e5),
    backoff_multiplier=st.floats(min_value=1.0, max_value=10.0),
)


@given(strategy=cooldown_strategies, n=st.integers(min_value=1, max_value=300))
def test_cooldown_matches_the_formula(strategy: ExponentialBackoffStrategy, n: int) -> None:
    cooldown = _run(strategy.on_rate_limit(0, n))
    exact = min(
        Fraction(strategy.initial_cooldown) * Fraction(strategy.backoff_multiplier) ** (n - 1),
        Fraction(strategy.max_cooldown),
    )
    assert cooldown == pytest.approx(float(exact), rel=1e-12)


@given(strategy=cooldown_strategies, n=st.integers(min_value=1, max_value=10**9))
def test_cooldown_grows_and_never_exceeds_the_cap(
    strategy: ExponentialBackoffStrategy, n: int
) -> None:
    current = _run(strategy.on_rate_limit(0, n))
    following = _run(strategy.on_rate_limit(0, n + 1))
    assert 0.0 <= current <= following <= strategy.max_cooldown
    assert current >= min(strategy.initial_cooldown, strategy.max_cooldown)


@given(
    strategy=st.builds(
        ExponentialBackoffStrategy,
        initial_cooldown=st.floats(min_value=1e-3, max_value=1e4),
        max_cooldown=st.floats(min_value=0.0, max_value=1e5),
        backoff_multiplier=st.floats(min_value=1.001, max_value=10.0),
    )
)
def test_cooldown_reaches_the_cap_eventually(strategy: ExponentialBackoffStrategy) -> None:
    assert _run(strategy.on_rate_limit(0, 10**6)) == strategy.max_cooldown


# --------------------------------------------------------------------------------------------
# Slow start (§4.8.3)
# --------------------------------------------------------------------------------------------


@st.composite
def slow_start_strategies(draw: st.DrawFn) -> ExponentialBackoffStrategy:
    final = draw(st.floats(min_value=0.0, max_value=10.0))
    extra = draw(st.floats(min_value=0.0, max_value=10.0))
    return ExponentialBackoffStrategy(
        slow_start_items=draw(st.integers(min_value=0, max_value=300)),
        slow_start_initial_delay=final + extra,
        slow_start_final_delay=final,
    )


@given(strategy=slow_start_strategies())
def test_slow_start_delay_is_non_increasing_within_bounds(
    strategy: ExponentialBackoffStrategy,
) -> None:
    initial = strategy.slow_start_initial_delay
    final = strategy.slow_start_final_delay
    previous = math.inf
    for k in range(strategy.slow_start_items):
        apply, delay = strategy.should_apply_slow_start(k)
        assert apply is True
        assert final <= delay <= initial
        assert delay <= previous
        previous = delay
    if strategy.slow_start_items > 0:
        assert strategy.should_apply_slow_start(0) == (True, initial)


@given(strategy=slow_start_strategies(), extra=st.integers(min_value=0, max_value=10**9))
def test_slow_start_ends_after_the_configured_items(
    strategy: ExponentialBackoffStrategy, extra: int
) -> None:
    assert strategy.should_apply_slow_start(strategy.slow_start_items + extra) == (False, 0.0)
