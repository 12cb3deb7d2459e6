"""Fail-fast, termination and error categories through the processor (scripted strategies)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_batch_llm import (
    BatchResult,
    GuardrailConfig,
    LLMWorkItem,
    ProcessingEvent,
    RetryState,
    TokenUsage,
)
from async_batch_llm.core.guardrails import DEFAULT_ABORT_CATEGORIES
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import (
    USAGE,
    EventRecorder,
    RateLimitError,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)


class HTTPStatusError(Exception):
    """An SDK-like error carrying an HTTP status and a JSON body."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status_code = status
        self.body = body


def auth_error() -> HTTPStatusError:
    return HTTPStatusError(401, "Error code: 401 - invalid api key")


def out_of_credit() -> HTTPStatusError:
    return HTTPStatusError(
        429,
        "Error code: 429 - You exceeded your current quota",
        {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}},
    )


def by_id(batch: BatchResult[str, Any]) -> dict[str, Any]:
    return {result.item_id: result for result in batch.results}


def test_the_default_abort_categories_are_authentication_and_insufficient_quota() -> None:
    assert GuardrailConfig().abort_on_error_categories == DEFAULT_ABORT_CATEGORIES
    assert frozenset({"authentication", "insufficient_quota"}) == DEFAULT_ABORT_CATEGORIES
    assert make_config().guardrails.abort_on_error_categories == DEFAULT_ABORT_CATEGORIES


async def test_a_completed_batch_says_so() -> None:
    strategy = ScriptedStrategy()
    batch = await run_batch(make_processor(), items(strategy, "a", "b"))
    assert batch.termination.kind == "completed"
    assert batch.termination.error_category is None
    assert batch.termination.triggering_item_id is None
    assert [r.error_category for r in batch.results] == [None, None]
    assert batch.total_cost is None


async def test_first_authentication_answer_stops_the_batch_and_every_item_gets_a_result() -> None:
    prompts = [f"p{i}" for i in range(20)]
    strategy = ScriptedStrategy({"p2": [auth_error()]})
    processor = make_processor(config=make_config(max_workers=1))
    batch = await run_batch(processor, items(strategy, *prompts))

    assert batch.termination.kind == "fail_fast"
    assert batch.termination.error_category == "authentication"
    assert batch.termination.triggering_item_id == "p2"
    assert "p2" in batch.termination.reason
    assert len(batch.results) == 20
    assert sorted(r.item_id for r in batch.results) == sorted(prompts)
    results = by_id(batch)
    assert results["p0"].success
    assert results["p1"].success
    assert results["p2"].error_category == "authentication"
    assert "invalid api key" in (results["p2"].error or "")
    assert len(strategy.calls_for("p2")) == 1  # not retried
    for prompt in prompts[3:]:
        assert results[prompt].success is False
        assert results[prompt].error_category == "fail_fast"
        assert (results[prompt].error or "").startswith("FailFast: ")
        assert strategy.calls_for(prompt) == []  # never started
    assert batch.failed == 18


async def test_fail_fast_cancels_calls_in_flight() -> None:
    gate = asyncio.Event()  # never set: the other calls hang until cancelled
    strategy = ScriptedStrategy({"bad": [auth_error()]})

    class Hanging(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            if prompt == "bad":
                await asyncio.sleep(0)  # let the others start first
                return await strategy.execute(prompt, attempt, timeout, state)
            return await super().execute(prompt, attempt, timeout, state)

    hanging = Hanging(gate=gate)
    recorder = EventRecorder()
    processor = make_processor(config=make_config(max_workers=4), observers=[recorder])
    batch = await asyncio.wait_for(
        run_batch(processor, items(hanging, "h1", "h2", "h3", "bad", "later")), 5
    )
    assert batch.termination.kind == "fail_fast"
    results = by_id(batch)
    assert sorted(results) == ["bad", "h1", "h2", "h3", "later"]
    for prompt in ("h1", "h2", "h3"):
        assert f"cancelled:{prompt}" in hanging.log
        assert results[prompt].error_category == "fail_fast"
    assert results["later"].error_category == "fail_fast"
    assert hanging.calls_for("later") == []
    # Spec D3: every failed item is observable, exactly once.
    failed = [data["item_id"] for data in recorder.of(ProcessingEvent.ITEM_FAILED)]
    assert sorted(failed) == ["bad", "h1", "h2", "h3", "later"]


async def test_insufficient_quota_is_neither_a_rate_limit_nor_retried(
    fake_clock: FakeClock,
) -> None:
    # The default classifier sees "quota" and "429" in the text and calls it a rate limit; the
    # error category says otherwise, and wins.
    strategy = ScriptedStrategy({"a": [out_of_credit()]})
    recorder = EventRecorder()
    config = make_config(guardrails=GuardrailConfig(abort_on_error_categories=frozenset()))
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    batch = await run_batch(processor, items(strategy, "a", "b"), fake_clock)

    assert batch.termination.kind == "completed"  # nothing to abort on
    results = by_id(batch)
    assert results["a"].error_category == "insufficient_quota"
    assert len(strategy.calls_for("a")) == 1
    assert results["b"].success
    assert recorder.of(ProcessingEvent.COOLDOWN_STARTED) == []
    assert recorder.of(ProcessingEvent.RATE_LIMIT_HIT) == []
    assert fake_clock.time() == 0.0  # no cooldown, no backoff


async def test_insufficient_quota_stops_the_batch_by_default() -> None:
    strategy = ScriptedStrategy({"a": [out_of_credit()]})
    batch = await run_batch(make_processor(), items(strategy, "a", "b", "c"))
    assert batch.termination.kind == "fail_fast"
    assert batch.termination.error_category == "insufficient_quota"
    assert [r.error_category for r in batch.results] == [
        "insufficient_quota",
        "fail_fast",
        "fail_fast",
    ]


async def test_an_empty_abort_set_lets_every_item_fail_on_its_own() -> None:
    strategy = ScriptedStrategy({p: [auth_error()] for p in ("a", "b", "c")})
    config = make_config(
        retry_max_attempts=1,
        guardrails=GuardrailConfig(abort_on_error_categories=frozenset()),
    )
    batch = await run_batch(make_processor(config=config), items(strategy, "a", "b", "c"))
    assert batch.termination.kind == "completed"
    assert [r.error_category for r in batch.results] == ["authentication"] * 3
    assert len(strategy.calls) == 3


async def test_custom_abort_categories_stop_on_server_errors() -> None:
    strategy = ScriptedStrategy({"a": [HTTPStatusError(503, "overloaded")] * 3})
    config = make_config(
        retry_max_attempts=1,
        guardrails=GuardrailConfig(abort_on_error_categories=frozenset({"server_error"})),
    )
    batch = await run_batch(make_processor(config=config), items(strategy, "a", "b"))
    assert batch.termination.kind == "fail_fast"
    assert batch.termination.error_category == "server_error"
    assert [r.error_category for r in batch.results] == ["server_error", "fail_fast"]


@pytest.mark.parametrize(
    ("outcome", "category"),
    [
        (RateLimitError(), "rate_limit"),
        (TimeoutError("read timed out"), "timeout"),
        (ConnectionError("reset by peer"), "connection"),
        (ValueError("bad parse"), "logic_error"),
        (RuntimeError("boom"), "unknown"),
        (HTTPStatusError(404, "no such model"), "model_not_found"),
        (HTTPStatusError(400, "bad field"), "bad_request"),
        (HTTPStatusError(500, "oops"), "server_error"),
    ],
    ids=["rate-limit", "timeout", "connection", "logic", "unknown", "404", "400", "500"],
)
async def test_failed_results_carry_their_category(
    fake_clock: FakeClock, outcome: Exception, category: str
) -> None:
    strategy = ScriptedStrategy({"a": [outcome] * 3})
    config = make_config(retry_max_attempts=1, rate_cooldown_seconds=0.0)
    batch = await run_batch(
        make_processor(fake_clock, config=config), items(strategy, "a"), fake_clock
    )
    assert batch.results[0].success is False
    assert batch.results[0].error_category == category


async def test_prepare_failure_has_a_category_and_can_fail_fast() -> None:
    class BadKeyOnPrepare(ScriptedStrategy):
        async def prepare(self) -> None:
            raise auth_error()

    strategy = BadKeyOnPrepare()
    batch = await run_batch(make_processor(), items(strategy, "a", "b"))
    assert batch.termination.kind == "fail_fast"
    assert [r.error_category for r in batch.results] == ["authentication", "fail_fast"]


async def test_stopped_items_keep_the_tokens_of_attempts_that_ran(fake_clock: FakeClock) -> None:
    # Item "slow" fails once (5 tokens spent), then sits in its backoff wait when "bad" stops
    # the batch: its result keeps the tokens of the attempt that ran.
    failing = RuntimeError("flaky")
    failing.__dict__["_failed_token_usage"] = {
        "input_tokens": 3,
        "output_tokens": 2,
        "total_tokens": 5,
    }

    class Later(ScriptedStrategy):
        def latency_for(self, prompt: str, attempt: int) -> float:
            return 2.0 if prompt == "bad" else 0.0

    strategy = Later({"slow": [failing], "bad": [auth_error()]}, clock=fake_clock)
    config = make_config(max_workers=2, retry_initial_wait=10.0)
    processor = make_processor(fake_clock, config=config)
    batch = await run_batch(processor, items(strategy, "slow", "bad"), fake_clock)
    results = by_id(batch)
    assert results["slow"].error_category == "fail_fast"
    assert results["slow"].token_usage["total_tokens"] == 5
    assert len(strategy.calls_for("slow")) == 1


async def test_keyword_only_state_is_passed_by_keyword() -> None:
    seen: list[RetryState | None] = []

    class KeywordState(ScriptedStrategy):
        async def execute(  # type: ignore[override]  # state is keyword-only on purpose
            self, prompt: str, attempt: int, timeout: float, *, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            seen.append(state)
            if attempt == 1 and prompt == "retry":
                raise ConnectionError("once")
            return "ok", dict(USAGE)  # type: ignore[return-value]

        async def on_error(  # type: ignore[override]
            self, exception: Exception, attempt: int, *, state: RetryState | None = None
        ) -> None:
            seen.append(state)

    config = make_config(retry_initial_wait=0.001, retry_max_wait=0.001)
    strategy = KeywordState()
    processor = make_processor(config=config)
    batch = await run_batch(
        processor,
        [
            LLMWorkItem(item_id="a", strategy=strategy, prompt="a"),
            LLMWorkItem(item_id="retry", strategy=strategy, prompt="retry"),
        ],
    )
    assert [r.success for r in batch.results] == [True, True]
    assert len(seen) == 4
    assert all(isinstance(state, RetryState) for state in seen)
    assert seen[1] is seen[2] is seen[3]  # one RetryState per item, across its attempts
