"""Property-based tests of the token arithmetic (guarantee G4): totals, cache rate, billing.

Pure functions only: ``BatchResult``'s recomputed totals, ``cache_hit_rate``,
``effective_input_tokens``, and the per-attempt accumulation the processor uses (spec D9).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_batch_llm import BatchResult, TokenTrackingError, TokenUsage, WorkItemResult
from async_batch_llm._internal.tokens import add_usage, usage_from_exception

KEYS = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens")

# The autouse leak check is an async function-scoped fixture; it is harmless to share it
# across the examples of one test.
pytest_settings = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

counts = st.integers(min_value=0, max_value=10**12)


@st.composite
def usages(draw: st.DrawFn) -> dict[str, int]:
    """A token usage mapping; any key may be missing, as the spec allows."""
    present = draw(st.sets(st.sampled_from(KEYS)))
    return {key: draw(counts) for key in KEYS if key in present}


@st.composite
def results(draw: st.DrawFn) -> WorkItemResult[str, Any]:
    usage: Any = draw(usages())
    success = draw(st.booleans())
    return WorkItemResult(
        item_id=draw(st.text(min_size=1, max_size=8)),
        success=success,
        output="out" if success else None,
        error=None if success else "ConnectionError: reset",
        token_usage=usage,
    )


result_lists = st.lists(results(), max_size=60)


def _sum(results: list[WorkItemResult[str, Any]], key: str) -> int:
    return sum(r.token_usage.get(key, 0) for r in results)  # type: ignore[misc]  # TypedDict .get with a str key


@pytest_settings
@given(result_lists, st.integers(), st.integers(), st.integers())
def test_batch_totals_are_recomputed_from_the_results(
    items: list[WorkItemResult[str, Any]], bogus_total: int, bogus_ok: int, bogus_tokens: int
) -> None:
    batch = BatchResult(
        results=items,
        total_items=bogus_total,
        succeeded=bogus_ok,
        failed=bogus_ok,
        total_input_tokens=bogus_tokens,
        total_output_tokens=bogus_tokens,
        total_cached_tokens=bogus_tokens,
    )
    assert batch.total_items == len(items)
    assert batch.succeeded == sum(r.success for r in items)
    assert batch.succeeded + batch.failed == batch.total_items
    assert batch.total_input_tokens == _sum(items, "input_tokens")
    assert batch.total_output_tokens == _sum(items, "output_tokens")
    assert batch.total_cached_tokens == _sum(items, "cached_input_tokens")


@pytest_settings
@given(result_lists, result_lists)
def test_batch_totals_add_up_over_any_split(
    first: list[WorkItemResult[str, Any]], second: list[WorkItemResult[str, Any]]
) -> None:
    whole = BatchResult(results=first + second)
    a, b = BatchResult(results=first), BatchResult(results=second)
    assert whole.total_items == a.total_items + b.total_items
    assert whole.succeeded == a.succeeded + b.succeeded
    assert whole.failed == a.failed + b.failed
    assert whole.total_input_tokens == a.total_input_tokens + b.total_input_tokens
    assert whole.total_output_tokens == a.total_output_tokens + b.total_output_tokens
    assert whole.total_cached_tokens == a.total_cached_tokens + b.total_cached_tokens


def _batch(input_tokens: int, cached: int) -> BatchResult[str, Any]:
    usage: TokenUsage = {"input_tokens": input_tokens, "cached_input_tokens": cached}
    return BatchResult(results=[WorkItemResult(item_id="a", success=True, token_usage=usage)])


@pytest_settings
@given(counts, counts)
def test_cache_hit_rate_is_the_documented_percentage(input_tokens: int, cached: int) -> None:
    rate = _batch(input_tokens, cached).cache_hit_rate()
    if input_tokens == 0:
        assert rate == 0.0
    else:
        # Exactly this expression, in this order: callers compare with ==.
        assert rate == (cached / input_tokens) * 100.0
    assert isinstance(rate, float)


@pytest_settings
@given(
    st.integers(min_value=1, max_value=10**12).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n))
    )
)
def test_cache_hit_rate_is_within_0_and_100_when_cached_is_part_of_input(
    pair: tuple[int, int],
) -> None:
    input_tokens, cached = pair
    rate = _batch(input_tokens, cached).cache_hit_rate()
    assert 0.0 <= rate <= 100.0
    assert (rate == 0.0) == (cached == 0)
    assert (rate == 100.0) == (cached == input_tokens)


@pytest_settings
@given(counts, counts)
def test_effective_input_tokens_bills_cached_tokens_at_ten_percent(
    input_tokens: int, cached: int
) -> None:
    effective = _batch(input_tokens, cached).effective_input_tokens()
    assert effective == input_tokens - int(cached * 0.9)
    assert isinstance(effective, int)
    assert effective <= input_tokens
    if cached <= 10**15:  # below float rounding trouble, the discount never exceeds the cache
        assert effective >= input_tokens - cached


def test_effective_input_tokens_documented_examples() -> None:
    assert _batch(5000, 4500).effective_input_tokens() == 950
    assert _batch(5000, 4500).cache_hit_rate() == 90.0
    assert _batch(0, 0).cache_hit_rate() == 0.0
    assert _batch(0, 0).effective_input_tokens() == 0


@pytest_settings
@given(st.lists(usages(), max_size=10), st.randoms(use_true_random=False))
def test_attempt_usages_accumulate_to_their_exact_sum_in_any_order(
    attempts: list[dict[str, int]], rng: Any
) -> None:
    """Spec D9: an item's usage is the sum over its attempts, whatever their order."""
    expected: Counter[str] = Counter()
    for usage in attempts:
        expected.update(usage)
    shuffled = list(attempts)
    rng.shuffle(shuffled)
    for order in (attempts, shuffled):
        total: dict[str, int] = {}
        for usage in order:
            add_usage(total, usage)
        assert {k: total.get(k, 0) for k in KEYS} == {k: expected.get(k, 0) for k in KEYS}


@pytest_settings
@given(usages(), st.sampled_from(["attachment", "token_error"]))
def test_usage_reported_by_a_failed_attempt_is_read_back_exactly(
    usage: dict[str, int], via: str
) -> None:
    exc: Exception
    if via == "token_error":
        exc = TokenTrackingError("upstream 503", token_usage=usage)
    else:
        exc = ConnectionError("reset")
        exc.__dict__["_failed_token_usage"] = dict(usage)
    total: dict[str, int] = {}
    add_usage(total, usage_from_exception(exc))
    assert {k: total.get(k, 0) for k in KEYS} == {k: usage.get(k, 0) for k in KEYS}
