"""Thousands of scripted items mixing every provider fault, checked against an exact oracle.

Every item's script says what the provider does on each attempt; the oracle derives from it the
item's outcome, the exact number of calls and the exact tokens spent. The batch must match the
oracle item by item (guarantees G1-G3 of docs/guarantees.md) and the totals must match to
the token (G4). Seeded: the same seed gives the same scripts and the same jitter.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from async_batch_llm import ErrorClassifier, ErrorInfo, TokenTrackingError

from ._support import (
    BatchRun,
    ItemPlan,
    ProviderConnectionError,
    ProviderRateLimitError,
    Step,
    assert_batch_matches_oracle,
    expected_outcome,
    make_plans,
    normalised,
    run_scripted_batch,
    scripted_config,
)


def outcome_mix(plans: list[ItemPlan], max_attempts: int) -> Counter[str]:
    mix: Counter[str] = Counter()
    for plan in plans:
        want = expected_outcome(plan, max_attempts)
        if want.success:
            mix["success" if want.calls == 1 else "success_after_retries"] += 1
        else:
            mix[f"failed_{want.last_step.value}"] += 1
    return mix


CASES = [
    pytest.param(11, 300, 1, 3, None, id="1-worker-300-items"),
    pytest.param(12, 2000, 8, 3, None, id="8-workers-2000-items"),
    pytest.param(13, 3000, 32, 4, None, id="32-workers-3000-items"),
    pytest.param(14, 1000, 16, 1, None, id="no-retries-1000-items"),
    pytest.param(15, 1000, 8, 3, 600.0, id="rpm-limited-1000-items"),
]


@pytest.mark.parametrize(("seed", "n", "workers", "max_attempts", "rpm"), CASES)
async def test_mixed_faults_match_the_oracle_item_by_item(
    seed: int, n: int, workers: int, max_attempts: int, rpm: float | None
) -> None:
    plans = make_plans(n, seed=seed, max_attempts=max_attempts)
    mix = outcome_mix(plans, max_attempts)
    # The scripts really do mix every kind of outcome.
    expected_kinds = {"success", "failed_fatal", "failed_bad_return"}
    if max_attempts > 1:
        expected_kinds |= {"success_after_retries", "failed_rate_limit", "failed_timeout"}
        if n >= 1000:
            expected_kinds.add("failed_hang")
    assert expected_kinds <= set(mix), mix

    config = scripted_config(workers=workers, max_attempts=max_attempts, rpm=rpm)
    run = await run_scripted_batch(plans, config, seed=seed)
    assert_batch_matches_oracle(run)
    assert run.log.max_in_flight <= workers
    assert run.strategy.prepared == 1
    assert run.strategy.cleaned_up == 1


async def test_same_seed_gives_the_same_batch() -> None:
    def summary(run: BatchRun) -> list[tuple[str, bool, str | None, dict[str, int]]]:
        return sorted(
            (r.item_id, r.success, r.error, normalised(r.token_usage)) for r in run.result.results
        )

    plans = make_plans(300, seed=21, max_attempts=3, weights={**_NO_HANG})
    config = scripted_config(workers=4, max_attempts=3)
    first = await run_scripted_batch(plans, config, seed=21)
    second = await run_scripted_batch(plans, scripted_config(workers=4, max_attempts=3), seed=21)
    assert summary(first) == summary(second)
    assert first.log.calls == second.log.calls


_NO_HANG: dict[Step, float] = {
    Step.OK: 0.5,
    Step.RETRYABLE: 0.2,
    Step.RATE_LIMIT: 0.1,
    Step.TIMEOUT: 0.1,
    Step.FATAL: 0.05,
    Step.BAD_RETURN: 0.05,
}


async def test_a_call_that_never_returns_fails_its_item_with_a_timeout_error() -> None:
    plans = make_plans(20, seed=31, max_attempts=2, weights={Step.HANG: 1.0})
    started = time.monotonic()
    run = await run_scripted_batch(plans, scripted_config(workers=10, max_attempts=2, timeout=0.1))
    elapsed = time.monotonic() - started
    assert_batch_matches_oracle(run)
    assert run.result.failed == 20
    for r in run.result.results:
        assert r.error is not None
        assert r.error.startswith("FrameworkTimeoutError: Framework timeout after")
        assert "timeout" in r.error.lower()
    assert run.log.cancelled == 40  # both attempts of every item were cut, none left running
    # 20 items x 2 attempts x 0.1 s over 10 workers: about 0.4 s; far from hanging.
    assert elapsed < 10.0


async def test_success_after_failures_reports_the_cost_of_every_attempt() -> None:
    """Spec D9: the 0.6.0 behaviour dropped the failed attempts' tokens of retried items."""
    plans = make_plans(200, seed=41, max_attempts=4, weights={Step.RETRYABLE: 0.5, Step.OK: 0.5})
    run = await run_scripted_batch(plans, scripted_config(workers=8, max_attempts=4))
    assert_batch_matches_oracle(run)
    retried = [r for r in run.result.results if r.success and run.log.calls[r.item_id] > 1]
    assert len(retried) > 50
    for r in retried:
        plan = next(p for p in plans if p.item_id == r.item_id)
        want = expected_outcome(plan, 4)
        assert r.token_usage.get("input_tokens", 0) == want.usage.get("input_tokens", 0)


def summarise(run: BatchRun) -> dict[str, Any]:
    verdict = run.verdict()
    return {
        "items": len(run.plans),
        "results": len(run.result.results),
        "lost": len(verdict.lost),
        "duplicated": len(verdict.duplicated),
        "unknown": len(verdict.unknown),
        "succeeded": run.result.succeeded,
        "failed": run.result.failed,
        "calls": sum(run.log.calls.values()),
        "expected_tokens": verdict.expected_tokens,
        "reported_tokens": verdict.reported_tokens,
    }


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_soak_100k_items_nothing_lost_nothing_duplicated_tokens_exact(
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = 100_000
    plans = make_plans(n, seed=2024, max_attempts=3)
    started = time.monotonic()
    run = await run_scripted_batch(
        plans,
        scripted_config(workers=64, max_attempts=3, timeout=0.5),
        seed=2024,
        real_timeout=840.0,
    )
    wall = time.monotonic() - started
    report = summarise(run)
    report["wall_seconds"] = round(wall, 1)
    report["outcomes"] = dict(outcome_mix(plans, 3))
    with capsys.disabled():
        print("\nSOAK REPORT")
        for key, value in report.items():
            print(f"  {key}: {value}")
    assert report["lost"] == report["duplicated"] == report["unknown"] == 0
    assert report["reported_tokens"] == report["expected_tokens"]
    assert_batch_matches_oracle(run)


class StrictClassifier(ErrorClassifier):
    """Retries only transport failures; a 429 cools everyone down but fails its item (like
    ``GeminiErrorClassifier``); timeouts are final."""

    def classify(self, exception: Exception) -> ErrorInfo:
        retryable = isinstance(exception, ProviderConnectionError | TokenTrackingError)
        rate_limit = isinstance(exception, ProviderRateLimitError)
        return ErrorInfo(
            is_retryable=retryable,
            is_rate_limit=rate_limit,
            is_timeout=isinstance(exception, TimeoutError),
            error_category="strict",
        )


async def test_retries_follow_the_classifier_in_use() -> None:
    """A custom classifier changes which failures retry; the oracle follows it exactly."""
    plans = make_plans(1500, seed=51, max_attempts=3)
    retryable = frozenset({Step.RETRYABLE})
    run = await run_scripted_batch(
        plans,
        scripted_config(workers=16, max_attempts=3),
        seed=51,
        error_classifier=StrictClassifier(),
        retryable=retryable,
    )
    assert_batch_matches_oracle(run)
    # The same scripts under the default classifier make strictly more calls.
    default_calls = sum(expected_outcome(p, 3).calls for p in plans)
    assert sum(run.log.calls.values()) < default_calls
