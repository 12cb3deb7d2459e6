"""The processor's quota admission: every physical attempt reserves in its scope's gate.

Everything runs on a FakeClock, so call times are exact. Token buckets refill at the declared
limit: 60,000 tokens a minute admit 1,000 a second, and a one-second bucket holds 1,000. Every
admission leaves the gate's estimation margin (5% of the bucket, 50 tokens) in it, so an
estimate of a whole bucket waits for a full bucket, then takes it all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_batch_llm import ProcessingEvent, RetryState, TokenUsage
from async_batch_llm.observers import ExtendedEvent
from async_batch_llm.quota import QuotaLimits, TokenEstimate, report_rate_limit_headers
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import (
    EventRecorder,
    FullEventRecorder,
    RateLimitError,
    ScriptedStrategy,
    add_all,
    items,
    make_config,
    make_processor,
    run_batch,
)

TPM = 60_000
PER_SECOND = TPM / 60  # 1,000 tokens a second


def usage_of(total: int) -> TokenUsage:
    return {"input_tokens": total, "output_tokens": 0, "total_tokens": total}


def fixed(total: int) -> Any:
    """A token estimator that estimates ``total`` input tokens for every attempt."""

    def estimate(
        prompt: Any, *, strategy: object, attempt: int, state: RetryState | None
    ) -> TokenEstimate:
        return TokenEstimate(total)

    return estimate


def call_times(strategy: ScriptedStrategy) -> list[float]:
    return [call.at for call in strategy.calls]


class ScopeA(ScriptedStrategy):
    quota_scope = "a"


class ScopeB(ScriptedStrategy):
    @property
    def quota_scope(self) -> str:
        return "b"


async def test_token_limit_paces_a_batch_at_the_refill_rate(fake_clock: FakeClock) -> None:
    # One second's refill per item: the first goes at once (the bucket starts full, one second
    # of burst), then one every second. Usage equals the estimate, so nothing is reconciled.
    strategy = ScriptedStrategy(clock=fake_clock, usage=usage_of(1_000))
    recorder = EventRecorder()
    config = make_config(max_workers=4, max_tokens_per_minute=TPM, token_estimator=fixed(1_000))
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    result = await run_batch(processor, items(strategy, *"abcde"), fake_clock)
    assert result.succeeded == 5
    assert call_times(strategy) == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    waits = sorted(data["admission_wait"] for data in recorder.of(ProcessingEvent.ITEM_COMPLETED))
    assert waits == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])


async def test_each_quota_scope_has_its_own_limits(fake_clock: FakeClock) -> None:
    a, b = ScopeA(clock=fake_clock), ScopeB(clock=fake_clock)
    config = make_config(
        max_workers=8,
        quotas={
            "a": QuotaLimits(requests_per_minute=60),
            "b": QuotaLimits(requests_per_minute=120),
        },
    )
    processor = make_processor(fake_clock, config=config)
    work = [*items(a, "a1", "a2", "a3"), *items(b, "b1", "b2", "b3", "b4")]
    result = await run_batch(processor, work, fake_clock)
    assert result.succeeded == 7
    # "a": one a second, a burst of one. "b": two a second, a burst of two. Waiting "a" items
    # never hold up "b".
    assert call_times(a) == [0.0, 1.0, 2.0]
    assert call_times(b) == [0.0, 0.0, 0.5, 1.0]
    assert processor._quota is not None
    stats = processor._quota.registry.statistics()
    assert {scope: s.limits for scope, s in stats.items()} == {
        "a": {"requests": 60.0},
        "b": {"requests": 120.0},
    }


async def test_a_scope_in_quotas_that_no_item_used_is_warned_about(
    fake_clock: FakeClock,
) -> None:
    a = ScopeA(clock=fake_clock)
    config = make_config(
        quotas={
            "a": QuotaLimits(requests_per_minute=600),
            "openai:gpt-4o": QuotaLimits(tokens_per_minute=10_000),
        }
    )
    processor = make_processor(fake_clock, config=config)
    with pytest.warns(UserWarning, match=r"'openai:gpt-4o'.*no item.*scopes used: 'a'"):
        result = await run_batch(processor, items(a, "a1", "a2"), fake_clock)
    assert result.succeeded == 2  # a warning, not a failure


async def test_no_unused_scope_warning_when_every_declared_scope_was_used(
    fake_clock: FakeClock,
) -> None:
    a, b = ScopeA(clock=fake_clock), ScopeB(clock=fake_clock)
    config = make_config(
        quotas={
            "a": QuotaLimits(requests_per_minute=600),
            "b": QuotaLimits(requests_per_minute=600),
        }
    )
    processor = make_processor(fake_clock, config=config)
    result = await run_batch(processor, [*items(a, "a1"), *items(b, "b1")], fake_clock)
    assert result.succeeded == 2  # filterwarnings=error: any warning would have failed this


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        pytest.param("raises", "raised RuntimeError: no estimate", id="raising"),
        pytest.param("float", "must return a TokenEstimate, got float", id="wrong-type"),
        pytest.param("nan", "must return a TokenEstimate, got float: nan", id="nan"),
        pytest.param("tuple", "must return a TokenEstimate, got tuple", id="tuple"),
    ],
)
async def test_a_broken_estimator_fails_only_its_item(
    fake_clock: FakeClock, prompt: str, message: str
) -> None:
    def picky(prompt: Any, *, strategy: object, attempt: int, state: RetryState | None) -> Any:
        if prompt == "raises":
            raise RuntimeError("no estimate")
        return {"float": 12.5, "nan": float("nan"), "tuple": (1, 2)}.get(prompt, TokenEstimate(10))

    strategy = ScriptedStrategy(clock=fake_clock)
    config = make_config(max_workers=2, max_tokens_per_minute=TPM, token_estimator=picky)
    processor = make_processor(fake_clock, config=config)
    result = await run_batch(processor, items(strategy, "ok1", prompt, "ok2"), fake_clock)
    by_id = {r.item_id: r for r in result.results}
    assert by_id["ok1"].success
    assert by_id["ok2"].success
    failed = by_id[prompt]
    assert not failed.success
    assert failed.error is not None
    assert failed.error.startswith("TokenEstimatorError: the token estimator ")
    assert "picky" in failed.error
    assert "ProcessorConfig.token_estimator" in failed.error
    assert message in failed.error
    assert [call.prompt for call in strategy.calls] == ["ok1", "ok2"]  # never called, no retry


async def test_an_estimate_above_the_whole_limit_fails_at_once_without_a_call(
    fake_clock: FakeClock,
) -> None:
    class Estimating(ScriptedStrategy):
        def estimate_tokens(self, prompt: str) -> TokenEstimate:
            return TokenEstimate(70_000 if prompt == "huge" else 100)

    strategy = Estimating(clock=fake_clock)
    config = make_config(max_workers=2, max_tokens_per_minute=TPM)
    processor = make_processor(fake_clock, config=config)
    result = await run_batch(processor, items(strategy, "huge", "small"), fake_clock)
    by_id = {r.item_id: r for r in result.results}
    assert by_id["small"].success
    huge = by_id["huge"]
    assert not huge.success
    assert huge.error is not None
    assert huge.error.startswith("EstimateTooLargeError: ")
    assert "exceed the whole per-minute tokens limit (60000)" in huge.error
    assert [call.prompt for call in strategy.calls] == ["small"]
    assert fake_clock.time() == 0.0  # failed at once: nothing waited


async def test_a_strategy_estimate_error_names_the_strategy(fake_clock: FakeClock) -> None:
    class Broken(ScriptedStrategy):
        def estimate_tokens(self, prompt: str) -> TokenEstimate:
            raise ValueError("bad prompt")

    strategy = Broken(clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_tokens_per_minute=TPM))
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    error = result.results[0].error
    assert error is not None
    assert "Broken.estimate_tokens raised ValueError: bad prompt" in error
    assert strategy.calls == []


async def test_a_reservation_given_back_before_its_call_lets_the_next_item_go_sooner(
    fake_clock: FakeClock,
) -> None:
    # 10 s of burst: 10,000 tokens at most, 1,000 a second, a 500-token reserve. "rl" takes
    # 9,500 at t=0 and hits a 429 at t=1 (cooldown until t=9). "b" (3,800, needing 4,300) is
    # admitted at t=3.8 but must not call during the cooldown: it gives its reservation back
    # and reserves again at t=9. With the refund, "b" and "c" both fit at t=9 (level 9,500);
    # without it "c" would wait until t=11.9.
    class Slow(ScriptedStrategy):
        def latency_for(self, prompt: str, attempt: int) -> float:
            return 1.0 if prompt == "rl" else 0.0

    strategy = Slow({"rl": [RateLimitError()]}, clock=fake_clock, usage=usage_of(3_800))

    def estimate(
        prompt: Any, *, strategy: object, attempt: int, state: RetryState | None
    ) -> TokenEstimate:
        return TokenEstimate(9_500 if prompt == "rl" else 3_800)

    config = make_config(
        max_workers=2,
        max_tokens_per_minute=TPM,
        quota_burst_seconds=10.0,
        token_estimator=estimate,
        retry_max_attempts=1,
    )
    processor = make_processor(fake_clock, config=config)
    result = await run_batch(processor, items(strategy, "rl", "b", "c"), fake_clock)
    assert [(r.item_id, r.success) for r in result.results].count(("rl", False)) == 1
    starts = {call.prompt: call.at for call in strategy.calls}
    assert starts == pytest.approx({"rl": 0.0, "b": 9.0, "c": 9.0})


async def test_cancelling_the_batch_refunds_waiting_reservations(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock, usage=usage_of(1_000))
    config = make_config(max_workers=3, max_tokens_per_minute=TPM, token_estimator=fixed(1_000))
    processor = make_processor(fake_clock, config=config)
    await add_all(processor, items(strategy, "a", "b", "c"))
    task = asyncio.create_task(processor.process_all())
    await fake_clock.advance(0.5)
    assert [call.prompt for call in strategy.calls] == ["a"]
    assert processor._quota is not None
    gate = processor._quota.registry.gate("default")
    assert gate.waiting == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = gate.statistics()
    assert stats.waiting == 0
    assert stats.reservations == 1
    assert stats.used_last_minute["tokens"] == 1_000.0  # only "a", which ran
    assert stats.levels["tokens"] == pytest.approx(0.5 * PER_SECOND)


async def test_usage_above_the_estimate_is_a_debt_that_slows_the_next_item(
    fake_clock: FakeClock,
) -> None:
    # "a" reserved 1,000 but used 3,000: a 2,000-token debt, two more seconds of refill.
    strategy = ScriptedStrategy(
        {"a": [("big", usage_of(3_000))]}, clock=fake_clock, usage=usage_of(1_000)
    )
    config = make_config(max_tokens_per_minute=TPM, token_estimator=fixed(1_000))
    processor = make_processor(fake_clock, config=config)
    await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert call_times(strategy) == pytest.approx([0.0, 3.0, 4.0])


async def test_usage_below_the_estimate_is_refunded(fake_clock: FakeClock) -> None:
    # Each item reserves 1,000 but uses 500: the refund lets the next one go half a second later.
    strategy = ScriptedStrategy(clock=fake_clock, usage=usage_of(500))
    config = make_config(max_tokens_per_minute=TPM, token_estimator=fixed(1_000))
    processor = make_processor(fake_clock, config=config)
    await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert call_times(strategy) == pytest.approx([0.0, 0.5, 1.0])


async def test_headers_teach_a_limit_when_none_is_declared(fake_clock: FakeClock) -> None:
    class Reporting(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            report_rate_limit_headers({"X-RateLimit-Limit-Requests": "60"})
            return await super().execute(prompt, attempt, timeout, state)

    strategy = Reporting(clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_workers=2))
    result = await run_batch(processor, items(strategy, *"abcd"), fake_clock)
    assert result.succeeded == 4
    # "a" ran before anything was known (no admission); its headers made a learned 60/min
    # bucket (full: one request), which "b" took; then one a second.
    assert call_times(strategy) == pytest.approx([0.0, 0.0, 1.0, 2.0])
    assert processor._quota is not None
    stats = processor._quota.registry.statistics()["default"]
    assert stats.limits == {"requests": 60.0}
    assert stats.limit_sources == {"requests": "learned"}


async def test_headers_without_a_limit_keep_admission_off(fake_clock: FakeClock) -> None:
    class Reporting(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            report_rate_limit_headers({"content-type": "application/json", "retry-after": "1"})
            return await super().execute(prompt, attempt, timeout, state)

    strategy = Reporting(clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_workers=2))
    await run_batch(processor, items(strategy, *"abc"), fake_clock)
    assert processor._quota is None
    assert call_times(strategy) == [0.0, 0.0, 0.0]


async def test_requests_per_minute_go_through_the_gate(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock)
    processor = make_processor(
        fake_clock, config=make_config(max_workers=3, max_requests_per_minute=60)
    )
    await run_batch(processor, items(strategy, *"abcd"), fake_clock)
    assert call_times(strategy) == [0.0, 1.0, 2.0, 3.0]
    assert processor._quota is not None
    stats = processor._quota.registry.statistics()["default"]
    assert stats.reservations == 4
    assert stats.limits == {"requests": 60.0}


async def test_retries_reserve_again(fake_clock: FakeClock) -> None:
    class ParseError(Exception):
        """Validation-like: retried without a backoff wait."""

    strategy = ScriptedStrategy({"a": [ParseError("x")]}, clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(max_requests_per_minute=60))
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert call_times(strategy) == [0.0, 1.0]
    assert processor._quota is not None
    assert processor._quota.registry.statistics()["default"].reservations == 2


async def test_the_learning_estimator_learns_from_reported_usage(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock)  # reports 10 input and 5 output tokens
    processor = make_processor(fake_clock, config=make_config(max_tokens_per_minute=TPM))
    await run_batch(processor, items(strategy, "x" * 80), fake_clock)
    assert processor._quota is not None
    learner = processor._quota.learner
    assert learner.output_allowance("default") == 5
    assert learner.characters_per_token("default") == pytest.approx(8.0)  # 80 chars, 10 tokens


async def test_no_admission_without_limits(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy(clock=fake_clock)
    recorder = EventRecorder()
    processor = make_processor(fake_clock, config=make_config(), observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert processor._quota is None
    assert "admission_wait" not in recorder.of(ProcessingEvent.ITEM_COMPLETED)[0]


async def test_a_refused_attempt_ends_with_attempt_failed(fake_clock: FakeClock) -> None:
    def broken(prompt: Any, *, strategy: object, attempt: int, state: RetryState | None) -> Any:
        raise RuntimeError("no estimate")

    recorder = FullEventRecorder()
    config = make_config(max_tokens_per_minute=TPM, token_estimator=broken)
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    await run_batch(processor, items(ScriptedStrategy(clock=fake_clock), "a"), fake_clock)
    (refused,) = recorder.of(ExtendedEvent.ATTEMPT_FAILED)
    assert refused["error_type"] == "TokenEstimatorError"
    assert (refused["attempt"], refused["retryable"], refused["skipped"]) == (1, False, False)
    kinds = recorder.kinds()
    assert kinds.index(ExtendedEvent.ATTEMPT_FAILED) < kinds.index(ProcessingEvent.ITEM_FAILED)


class ReportsRemaining(ScriptedStrategy):
    """Reports that the provider has no tokens left (as a shared quota would) on item "a"."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if prompt.startswith("a"):
            report_rate_limit_headers(
                {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s"}
            )
        return await super().execute(prompt, attempt, timeout, state)


async def test_an_attempt_admitted_at_once_sends_its_headers_to_its_gate(
    fake_clock: FakeClock,
) -> None:
    # No estimator: the learning estimator. "w" prepares the strategy (the general path) and
    # teaches the learner 1 character per token and no output; "a" is then admitted at once on
    # the worker's fast path (400 tokens, leaving 200) and its headers say 0 tokens remain:
    # "b" waits for 400 + the 50-token reserve, 0.45 s. Without the correction the gate would
    # still hold 200 tokens and "b" would wait 0.25 s.
    strategy = ReportsRemaining(clock=fake_clock, usage=usage_of(400))
    recorder = EventRecorder()
    config = make_config(max_workers=1, max_tokens_per_minute=TPM)
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    work = items(strategy, "w" * 400, "a" * 400, "b" * 400)
    result = await run_batch(processor, work, fake_clock)
    assert result.succeeded == 3
    assert call_times(strategy) == pytest.approx([0.0, 0.0, 0.45])
    waits = [data["admission_wait"] for data in recorder.of(ProcessingEvent.ITEM_COMPLETED)]
    assert waits == pytest.approx([0.0, 0.0, 0.45])
    assert processor._quota is not None
    stats = processor._quota.registry.statistics()["default"]
    assert stats.reservations == 3
    assert stats.used_last_minute["tokens"] == 1_200.0  # each reconciled to its usage


async def test_an_attempt_admitted_at_once_and_failing_is_settled_before_its_retry(
    fake_clock: FakeClock,
) -> None:
    # "w" prepares the strategy; "a" is admitted at once on the worker's fast path and fails
    # with a retryable error reporting 30 tokens used: that reservation is reconciled to the
    # 30 before the retry (which uses 100), not left at its estimate.
    dropped = ConnectionError("reset by peer")
    dropped._failed_token_usage = usage_of(30)  # type: ignore[attr-defined]
    strategy = ScriptedStrategy({"a" * 400: [dropped]}, clock=fake_clock, usage=usage_of(100))
    config = make_config(max_workers=1, max_tokens_per_minute=TPM, retry_max_attempts=2)
    processor = make_processor(fake_clock, config=config)
    result = await run_batch(processor, items(strategy, "w" * 400, "a" * 400), fake_clock)
    assert result.succeeded == 2
    assert processor._quota is not None
    stats = processor._quota.registry.statistics()["default"]
    assert stats.reservations == 3
    assert stats.used_last_minute["tokens"] == 230.0  # "w" 100, "a" 30 then 100


async def test_admit_now_takes_only_estimates_it_can_make_and_reservations_that_fit(
    fake_clock: FakeClock,
) -> None:
    from async_batch_llm._internal.admission import GateRegistry
    from async_batch_llm._internal.quota_runtime import QuotaRuntime

    class Own(ScriptedStrategy):
        def estimate_tokens(self, prompt: str) -> TokenEstimate:
            return TokenEstimate(1)

    runtime = QuotaRuntime(GateRegistry({"tokens": TPM}, fake_clock), None)
    plain = ScriptedStrategy(clock=fake_clock)
    # The learning estimator's first guess: 400 characters / 4, plus 256 output tokens.
    admission = runtime.admit_now("p" * 400, plain)
    assert admission is not None
    assert admission.estimate == TokenEstimate(100, 256)
    assert admission.gate is runtime.registry.gate("default")
    # The strategy's own estimate_tokens may be a coroutine: left to admit().
    assert runtime.admit_now("p", Own(clock=fake_clock)) is None
    # 644 tokens left, 594 usable: 2,400 characters (600 + 256) must wait; nothing is taken.
    assert runtime.admit_now("p" * 2_400, plain) is None
    assert runtime.registry.gate("default").statistics().levels["tokens"] == 644.0
    with_estimator = QuotaRuntime(GateRegistry({"tokens": TPM}, fake_clock), fixed(10))
    assert with_estimator.admit_now("p", plain) is None
