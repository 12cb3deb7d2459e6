"""The pure token-bucket arithmetic (no clock, no event loop)."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_batch_llm._internal.buckets import TIME_TOLERANCE, TokenBucket, snapshot_level

rates = st.floats(min_value=1e-2, max_value=1e5)
capacities = st.floats(min_value=1e-2, max_value=1e6)
starts = st.floats(min_value=0.0, max_value=1e6)


@st.composite
def buckets(draw: st.DrawFn) -> tuple[TokenBucket, float]:
    """A bucket at any level from a full debt of one capacity up to full, and its time."""
    rate, capacity, now = draw(rates), draw(capacities), draw(starts)
    level = draw(st.floats(min_value=-capacity, max_value=capacity))
    return TokenBucket(rate, capacity, now=now, level=level), now


def _max_window_sum(admitted: list[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """(start, end, total) of every window that begins and ends at an admission."""
    windows = []
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, amount in admitted[i:]:
            total += amount
            windows.append((start, end, total))
    return windows


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    capacity=capacities,
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=5.0), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=40,
    ),
)
def test_greedy_admission_never_exceeds_capacity_plus_refill(
    rate: float, capacity: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, capacity, now=0.0)
    now = 0.0
    admitted: list[tuple[float, float]] = []
    for dt, fraction in steps:
        now += dt
        amount = fraction * capacity
        if bucket.can_take(amount, now):
            bucket.take(amount, now)
            admitted.append((now, amount))
    for start, end, total in _max_window_sum(admitted):
        count = sum(1 for t, _ in admitted if start <= t <= end)
        slack = count * rate * TIME_TOLERANCE + 1e-9 * (capacity + total)
        assert total <= capacity + rate * (end - start) + slack


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    capacity=capacities,
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=5.0), st.floats(0.0, 3.0)),
        min_size=1,
        max_size=40,
    ),
)
def test_oversize_rule_exceeds_the_bound_by_at_most_one_reservations_excess(
    rate: float, capacity: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, capacity, now=0.0)
    now = 0.0
    admitted: list[tuple[float, float]] = []
    for dt, fraction in steps:
        now += dt
        amount = fraction * capacity
        if bucket.time_until_admissible(amount, now) == 0.0:
            bucket.take(amount, now)
            admitted.append((now, amount))
    excess = max((amount - capacity for _, amount in admitted), default=0.0)
    for start, end, total in _max_window_sum(admitted):
        count = sum(1 for t, _ in admitted if start <= t <= end)
        slack = count * rate * TIME_TOLERANCE + 1e-9 * (capacity + total)
        assert total <= capacity + rate * (end - start) + max(0.0, excess) + slack


@settings(max_examples=300, deadline=None)
@given(
    state=buckets(),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["take", "give_back", "refill"]),
            st.floats(min_value=0.0, max_value=1e7),
            st.floats(min_value=0.0, max_value=100.0),
        ),
        max_size=30,
    ),
)
def test_level_never_exceeds_capacity_whatever_is_refunded(
    state: tuple[TokenBucket, float], ops: list[tuple[str, float, float]]
) -> None:
    bucket, now = state
    for op, amount, dt in ops:
        now += dt
        if op == "take":
            bucket.take(amount, now)
        elif op == "give_back":
            bucket.give_back(amount, now)
        else:
            bucket.refill(now)
        assert bucket.level <= bucket.capacity


@settings(max_examples=500, deadline=None)
@given(state=buckets(), fraction=st.floats(min_value=0.0, max_value=1.0))
def test_time_until_is_exact(state: tuple[TokenBucket, float], fraction: float) -> None:
    bucket, now = state
    amount = fraction * bucket.capacity
    wait = bucket.time_until(amount, now)
    assert math.isfinite(wait)
    assert wait >= 0.0
    at_deadline = copy.copy(bucket)
    assert at_deadline.can_take(amount, now + wait)
    if wait > 4 * TIME_TOLERANCE:
        early = copy.copy(bucket)
        assert not early.can_take(amount, now + wait - 2 * TIME_TOLERANCE)


@given(state=buckets(), extra=st.floats(min_value=1e-3, max_value=1e6))
def test_amount_above_capacity_never_fits_but_is_admissible_when_full(
    state: tuple[TokenBucket, float], extra: float
) -> None:
    bucket, now = state
    amount = bucket.capacity * (1 + extra)
    assert bucket.time_until(amount, now) == math.inf
    assert not bucket.can_take(amount, now + 1e9)
    wait = bucket.time_until_admissible(amount, now)
    assert wait == bucket.time_until(bucket.capacity, now)


def test_bucket_starts_full_and_refills_linearly_up_to_capacity() -> None:
    bucket = TokenBucket(rate=10.0, capacity=20.0, now=100.0)
    assert bucket.level == 20.0
    assert bucket.take(20.0, 100.0) == 0.0
    assert bucket.refill(100.5) == 5.0
    assert bucket.refill(101.0) == 10.0
    assert bucket.refill(110.0) == 20.0


def test_time_running_backwards_is_ignored() -> None:
    bucket = TokenBucket(rate=10.0, capacity=20.0, now=5.0, level=0.0)
    assert bucket.refill(4.0) == 0.0
    assert bucket.refill(6.0) == 10.0


def test_debt_delays_the_next_take_by_its_repayment() -> None:
    bucket = TokenBucket(rate=100.0, capacity=100.0, now=0.0)
    bucket.take(100.0, 0.0)
    assert bucket.take(250.0, 0.0) == -250.0
    # 250 of debt plus 50 wanted: 300 units of refill at 100/s.
    assert bucket.time_until(50.0, 0.0) == 3.0
    assert not bucket.can_take(50.0, 2.5)
    assert bucket.can_take(50.0, 3.0)


def test_oversize_reservation_waits_for_a_full_bucket_then_leaves_a_debt() -> None:
    bucket = TokenBucket(rate=1000.0, capacity=1000.0, now=0.0, level=0.0)
    assert bucket.admission_need(5000.0) == 1000.0
    assert bucket.time_until_admissible(5000.0, 0.0) == 1.0
    assert bucket.take(5000.0, 1.0) == -4000.0
    assert bucket.time_until(1000.0, 1.0) == 5.0


def test_give_back_is_capped_at_capacity() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=0.0, level=8.0)
    assert bucket.give_back(5.0, 0.0) == 10.0
    assert bucket.give_back(3.0, 0.0) == 10.0


def test_lower_to_never_raises_the_level() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=0.0, level=4.0)
    assert bucket.lower_to(7.0, 0.0) == 4.0
    assert bucket.lower_to(-2.0, 0.0) == -2.0


def test_resize_keeps_the_level_below_the_new_capacity_and_keeps_debt() -> None:
    bucket = TokenBucket(rate=10.0, capacity=100.0, now=0.0)
    bucket.resize(rate=1.0, capacity=5.0, now=0.0)
    assert (bucket.rate, bucket.capacity, bucket.level) == (1.0, 5.0, 5.0)
    bucket.take(20.0, 0.0)
    bucket.resize(rate=2.0, capacity=50.0, now=1.0)
    assert bucket.level == -14.0
    assert bucket.refill(2.0) == -12.0


def test_an_admission_leaves_the_reserve_in_the_bucket() -> None:
    bucket = TokenBucket(rate=100.0, capacity=100.0, now=0.0, reserve=5.0)
    assert bucket.reserve == 5.0
    assert bucket.admission_need(30.0) == 35.0
    bucket.take(70.0, 0.0)
    assert bucket.time_until_admissible(30.0, 0.0) == pytest.approx(0.05)
    assert bucket.time_until_admissible(25.0, 0.0) == 0.0
    # What does not fit with its reserve waits for a full bucket (the oversize rule).
    assert bucket.admission_need(98.0) == 100.0
    assert bucket.time_until_admissible(98.0, 0.0) == pytest.approx(0.7)
    # The reserve never slows the refill.
    assert bucket.refill(0.5) == 80.0


def test_resize_replaces_the_reserve() -> None:
    bucket = TokenBucket(rate=10.0, capacity=100.0, now=0.0, reserve=5.0)
    bucket.resize(rate=20.0, capacity=200.0, now=0.0, reserve=10.0)
    assert bucket.reserve == 10.0
    bucket.resize(rate=20.0, capacity=200.0, now=0.0)
    assert bucket.reserve == 0.0
    assert "reserve" not in repr(bucket)


@pytest.mark.parametrize("reserve", [-1.0, 10.0, 11.0, math.nan, math.inf])
def test_the_reserve_must_be_below_the_capacity(reserve: float) -> None:
    with pytest.raises(ValueError, match=r"reserve must be >= 0 and < capacity \(10.0\)"):
        TokenBucket(1.0, 10.0, now=0.0, reserve=reserve)
    bucket = TokenBucket(1.0, 10.0, now=0.0)
    with pytest.raises(ValueError, match="reserve must be"):
        bucket.resize(1.0, 10.0, 0.0, reserve=reserve)


@pytest.mark.parametrize(
    ("rate", "capacity"),
    [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (math.nan, 1.0), (1.0, 0.0), (1.0, math.inf)],
)
def test_rate_and_capacity_must_be_positive_and_finite(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match=r"must be a finite number > 0"):
        TokenBucket(rate, capacity, now=0.0)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.floats(min_value=1.0, max_value=1e7),
    remaining_fraction=st.floats(min_value=0.0, max_value=0.999),
    reset=st.floats(min_value=1e-3, max_value=1e5),
    rate=st.floats(min_value=1e-2, max_value=1e6),
    t_fraction=st.floats(min_value=0.0, max_value=1.0),
)
def test_snapshot_level_never_admits_more_than_the_provider_until_reset(
    limit: float, remaining_fraction: float, reset: float, rate: float, t_fraction: float
) -> None:
    # A provider that is not full replenishes linearly to `limit` by the reset (the model).
    remaining = limit * remaining_fraction
    level = snapshot_level(remaining, reset, limit, rate)
    assert level <= remaining
    t = reset * t_fraction
    provider = remaining + (limit - remaining) * t / reset
    assert level + rate * t <= provider + 1e-9 * (limit + rate * reset)


def test_snapshot_level_is_remaining_when_the_provider_refills_at_least_as_fast() -> None:
    # 60,000/min: 1,000 missing tokens come back in 1 s, exactly the bucket's rate.
    assert snapshot_level(59_000, 1.0, 60_000, 1000.0) == 59_000
    assert snapshot_level(500, None, 60_000, 1000.0) == 500
    assert snapshot_level(500, 10.0, None, 1000.0) == 500


def test_snapshot_level_is_a_debt_when_the_provider_refills_slowly() -> None:
    # 0 left, full again in 360 s: the provider refills 60000/360 = 166.67/s, the bucket
    # 1000/s; the debt makes both reach 60,000 admitted at the reset.
    level = snapshot_level(0, 360.0, 60_000, 1000.0)
    assert level == pytest.approx(-300_000.0)
    assert level + 1000.0 * 360.0 == pytest.approx(60_000.0)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.floats(min_value=1.0, max_value=1e6),
    rate=st.floats(min_value=0.1, max_value=1e6),
    level_share=st.floats(min_value=-2.0, max_value=1.0),
    reserve_share=st.floats(min_value=0.0, max_value=0.5),
    amount_share=st.floats(min_value=0.0, max_value=3.0),
    elapsed=st.floats(min_value=0.0, max_value=10.0),
)
def test_admits_agrees_with_time_until_admissible(
    capacity: float,
    rate: float,
    level_share: float,
    reserve_share: float,
    amount_share: float,
    elapsed: float,
) -> None:
    def bucket() -> TokenBucket:
        return TokenBucket(
            rate,
            capacity,
            now=0.0,
            level=capacity * level_share,
            reserve=capacity * reserve_share,
        )

    amount = capacity * amount_share
    expected = bucket().time_until_admissible(amount, elapsed) == 0.0
    checked = bucket()
    assert checked.admits(amount, elapsed) is expected
    assert checked.level == pytest.approx(bucket().refill(elapsed))


@given(
    st.floats(min_value=-500, max_value=100),
    st.floats(min_value=0, max_value=10),
    st.floats(min_value=-300, max_value=300),
)
def test_settle_is_take_for_a_debt_and_give_back_for_a_refund(
    level: float, elapsed: float, delta: float
) -> None:
    # One step for what reconcile() used to do in two: same level, same time of last update.
    def bucket() -> TokenBucket:
        b = TokenBucket(rate=10.0, capacity=100.0, now=0.0)
        b.take(100.0 - level, 0.0)
        return b

    settled, reference = bucket(), bucket()
    settled.settle(delta, elapsed)
    if delta > 0:
        reference.take(delta, elapsed)
    elif delta < 0:
        reference.give_back(-delta, elapsed)
    else:
        reference.refill(elapsed)
    assert settled.level == pytest.approx(reference.level, abs=1e-9)
