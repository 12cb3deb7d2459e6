"""RateLimitStrategy, ExponentialBackoffStrategy and FixedDelayStrategy (spec §8)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from async_batch_llm.strategies import rate_limit as rate_limit_module
from async_batch_llm.strategies.rate_limit import (
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    RateLimitStrategy,
)


def test_rate_limit_module_all() -> None:
    assert sorted(rate_limit_module.__all__) == [
        "ExponentialBackoffStrategy",
        "FixedDelayStrategy",
        "RateLimitStrategy",
    ]


# --------------------------------------------------------------------------------------------
# RateLimitStrategy
# --------------------------------------------------------------------------------------------


def test_rate_limit_strategy_is_abstract() -> None:
    with pytest.raises(TypeError):
        RateLimitStrategy()  # type: ignore[abstract]


def test_subclass_must_implement_both_methods() -> None:
    class CooldownOnly(RateLimitStrategy):
        async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
            return 1.0

    with pytest.raises(TypeError):
        CooldownOnly()  # type: ignore[abstract]


def test_on_rate_limit_is_async_and_slow_start_is_sync() -> None:
    assert inspect.iscoroutinefunction(RateLimitStrategy.on_rate_limit)
    assert not inspect.iscoroutinefunction(RateLimitStrategy.should_apply_slow_start)
    for cls in (ExponentialBackoffStrategy, FixedDelayStrategy):
        assert inspect.iscoroutinefunction(cls.on_rate_limit)
        assert not inspect.iscoroutinefunction(cls.should_apply_slow_start)


async def test_minimal_custom_strategy_works() -> None:
    class Constant(RateLimitStrategy):
        async def on_rate_limit(self, worker_id: int, consecutive_limit_count: int) -> float:
            return 5.0

        def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
            return False, 0.0

    strategy = Constant()
    assert await strategy.on_rate_limit(0, 1) == 5.0
    assert strategy.should_apply_slow_start(0) == (False, 0.0)


# --------------------------------------------------------------------------------------------
# ExponentialBackoffStrategy
# --------------------------------------------------------------------------------------------


def test_exponential_defaults() -> None:
    strategy = ExponentialBackoffStrategy()
    assert strategy.initial_cooldown == 60.0
    assert strategy.max_cooldown == 600.0
    assert strategy.backoff_multiplier == 2.0
    assert strategy.slow_start_items == 50
    assert strategy.slow_start_initial_delay == 2.0
    assert strategy.slow_start_final_delay == 0.1


def test_exponential_positional_construction() -> None:
    strategy = ExponentialBackoffStrategy(10.0, 100.0, 3.0, 4, 1.0, 0.5)
    assert (
        strategy.initial_cooldown,
        strategy.max_cooldown,
        strategy.backoff_multiplier,
        strategy.slow_start_items,
        strategy.slow_start_initial_delay,
        strategy.slow_start_final_delay,
    ) == (10.0, 100.0, 3.0, 4, 1.0, 0.5)


async def test_exponential_default_cooldowns_double_up_to_the_cap() -> None:
    strategy = ExponentialBackoffStrategy()
    cooldowns = [await strategy.on_rate_limit(0, n) for n in range(1, 7)]
    assert cooldowns == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]


@pytest.mark.parametrize(
    ("kwargs", "counts", "expected"),
    [
        ({"initial_cooldown": 10.0, "backoff_multiplier": 3.0, "max_cooldown": 100.0},
         [1, 2, 3, 4], [10.0, 30.0, 90.0, 100.0]),
        ({"initial_cooldown": 300.0, "backoff_multiplier": 1.5},
         [1, 2, 3], [300.0, 450.0, 600.0]),
        ({"initial_cooldown": 1000.0}, [1, 2], [600.0, 600.0]),
        ({"initial_cooldown": 0.0}, [1, 5, 50_000], [0.0, 0.0, 0.0]),
        ({"backoff_multiplier": 1.0}, [1, 10, 1000], [60.0, 60.0, 60.0]),
        ({}, [10_000, 10**9], [600.0, 600.0]),
        ({"backoff_multiplier": 2, "initial_cooldown": 60}, [10_000], [600.0]),
    ],
    ids=[
        "custom-growth",
        "processor-default-multiplier",
        "cap-applies-even-to-first-cooldown",
        "zero-initial-never-grows",
        "multiplier-one-is-constant",
        "huge-count-does-not-overflow",
        "int-arguments-huge-count",
    ],
)  # fmt: skip
async def test_exponential_cooldown_values(
    kwargs: dict[str, Any], counts: list[int], expected: list[float]
) -> None:
    strategy = ExponentialBackoffStrategy(**kwargs)
    assert [await strategy.on_rate_limit(0, n) for n in counts] == expected


async def test_exponential_cooldown_ignores_the_worker_id() -> None:
    strategy = ExponentialBackoffStrategy()
    assert {await strategy.on_rate_limit(worker, 2) for worker in range(5)} == {120.0}


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (0, (True, 2.0)),
        (1, (True, pytest.approx(1.962))),
        (25, (True, pytest.approx(1.05))),
        (45, (True, pytest.approx(0.29))),
        (49, (True, pytest.approx(0.138))),
        (50, (False, 0.0)),
        (51, (False, 0.0)),
        (10_000, (False, 0.0)),
    ],
    ids=["k0", "k1", "k25", "k45", "k49", "k50-ends", "k51", "k-huge"],
)
def test_exponential_slow_start_defaults(k: int, expected: tuple[bool, object]) -> None:
    assert ExponentialBackoffStrategy().should_apply_slow_start(k) == expected


@pytest.mark.parametrize("k", [0, 1, 5, 1000], ids=lambda k: f"k{k}")
def test_zero_slow_start_items_never_delays(k: int) -> None:
    strategy = ExponentialBackoffStrategy(slow_start_items=0)
    assert strategy.should_apply_slow_start(k) == (False, 0.0)


def test_slow_start_delay_never_drops_below_the_final_delay() -> None:
    strategy = ExponentialBackoffStrategy(
        slow_start_items=4, slow_start_initial_delay=1.0, slow_start_final_delay=0.5
    )
    delays = [strategy.should_apply_slow_start(k) for k in range(6)]
    assert delays == [
        (True, 1.0),
        (True, 0.875),
        (True, 0.75),
        (True, 0.625),
        (False, 0.0),
        (False, 0.0),
    ]


def test_exponential_strategy_is_not_validated() -> None:
    strategy = ExponentialBackoffStrategy(
        initial_cooldown=-1.0,
        max_cooldown=-5.0,
        backoff_multiplier=0.5,
        slow_start_items=-3,
        slow_start_initial_delay=0.0,
        slow_start_final_delay=9.0,
    )
    assert strategy.initial_cooldown == -1.0
    assert strategy.should_apply_slow_start(0) == (False, 0.0)


def test_exponential_repr_shows_every_parameter() -> None:
    assert repr(ExponentialBackoffStrategy()) == (
        "ExponentialBackoffStrategy(initial_cooldown=60.0, max_cooldown=600.0, "
        "backoff_multiplier=2.0, slow_start_items=50, slow_start_initial_delay=2.0, "
        "slow_start_final_delay=0.1)"
    )


def test_exponential_repr_reflects_mutation() -> None:
    strategy = ExponentialBackoffStrategy()
    strategy.max_cooldown = 90.0
    assert "max_cooldown=90.0" in repr(strategy)


# --------------------------------------------------------------------------------------------
# FixedDelayStrategy
# --------------------------------------------------------------------------------------------


def test_fixed_delay_defaults() -> None:
    strategy = FixedDelayStrategy()
    assert strategy.cooldown == 300.0
    assert strategy.delay == 1.0


def test_fixed_delay_stores_delay_between_requests_as_delay() -> None:
    strategy = FixedDelayStrategy(cooldown=30.0, delay_between_requests=0.25)
    assert (strategy.cooldown, strategy.delay) == (30.0, 0.25)
    assert FixedDelayStrategy(12.0, 3.0).delay == 3.0


@pytest.mark.parametrize(
    ("worker_id", "count"), [(0, 1), (3, 2), (7, 100)], ids=["first", "second", "hundredth"]
)
async def test_fixed_delay_cooldown_is_constant(worker_id: int, count: int) -> None:
    assert await FixedDelayStrategy(cooldown=45.0).on_rate_limit(worker_id, count) == 45.0


@pytest.mark.parametrize("k", [0, 1, 50, 10_000], ids=lambda k: f"k{k}")
def test_fixed_delay_slow_start_never_ends(k: int) -> None:
    assert FixedDelayStrategy(delay_between_requests=0.5).should_apply_slow_start(k) == (
        True,
        0.5,
    )


def test_fixed_delay_repr() -> None:
    assert repr(FixedDelayStrategy()) == (
        "FixedDelayStrategy(cooldown=300.0, delay_between_requests=1.0)"
    )
