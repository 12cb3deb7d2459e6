"""Hard token and cost caps: reserve before each attempt, reconcile after, stop at the cap."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_batch_llm import (
    GuardrailConfig,
    LLMCallStrategy,
    LLMWorkItem,
    PriceTable,
    RetryState,
    TokenEstimate,
    TokenUsage,
)
from async_batch_llm._internal.guardrails import Budget, model_name
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import ScriptedStrategy, items, make_config, make_processor, run_batch


def estimate_15(prompt: Any, **_: Any) -> TokenEstimate:
    return TokenEstimate(10, 5)  # exactly what a ScriptedStrategy success reports


def per_token(model: str, usage: TokenUsage) -> float:
    return usage.get("total_tokens", 0) * 0.001


async def test_token_cap_admits_only_attempts_that_fit() -> None:
    strategy = ScriptedStrategy()
    config = make_config(
        token_estimator=estimate_15,
        guardrails=GuardrailConfig(max_total_tokens=100),
    )
    prompts = [f"p{i}" for i in range(10)]
    batch = await run_batch(make_processor(config=config), items(strategy, *prompts))

    assert len(strategy.calls) == 6  # 6 * 15 = 90 <= 100; a 7th would make 105
    assert batch.termination.kind == "budget_exceeded"
    assert batch.termination.error_category == "budget_exceeded"
    assert batch.termination.triggering_item_id == "p6"
    assert "max_total_tokens=100" in batch.termination.reason
    assert len(batch.results) == 10
    assert batch.succeeded == 6
    assert {r.error_category for r in batch.results if not r.success} == {"budget_exceeded"}
    assert batch.total_input_tokens + batch.total_output_tokens == 90


async def test_cost_cap_prices_every_attempt_and_totals_the_cost() -> None:
    strategy = ScriptedStrategy()
    config = make_config(
        token_estimator=estimate_15,
        guardrails=GuardrailConfig(max_total_cost=0.05, cost_function=per_token),
    )
    batch = await run_batch(make_processor(config=config), items(strategy, "a", "b", "c", "d"))
    assert len(strategy.calls) == 3  # 3 * $0.015 = $0.045; a 4th would make $0.06
    assert batch.termination.kind == "budget_exceeded"
    assert "max_total_cost=0.05" in batch.termination.reason
    costs = {r.item_id: r.cost for r in batch.results}
    assert costs["a"] == pytest.approx(0.015)
    assert costs["d"] == 0.0  # priced, but nothing ran
    assert batch.total_cost == pytest.approx(0.045)


async def test_a_cost_function_alone_prices_results_without_capping() -> None:
    strategy = ScriptedStrategy({"twice": [ConnectionError("flaky")]})
    config = make_config(
        retry_initial_wait=0.001,
        retry_max_wait=0.001,
        guardrails=GuardrailConfig(cost_function=per_token),
    )
    batch = await run_batch(make_processor(config=config), items(strategy, "once", "twice"))
    assert batch.termination.kind == "completed"
    costs = {r.item_id: r.cost for r in batch.results}
    assert costs == {"once": pytest.approx(0.015), "twice": pytest.approx(0.015)}
    assert batch.total_cost == pytest.approx(0.03)


async def test_a_raising_cost_function_fails_that_item_only_and_keeps_its_tokens() -> None:
    odd: TokenUsage = {"input_tokens": 4, "output_tokens": 3, "total_tokens": 7}
    strategy = ScriptedStrategy({"odd": [("out", odd)]})

    def picky(model: str, usage: TokenUsage) -> float:
        if usage.get("total_tokens") == 7:
            raise KeyError(f"no price for {model}")
        return 0.5

    config = make_config(guardrails=GuardrailConfig(cost_function=picky))
    batch = await run_batch(make_processor(config=config), items(strategy, "odd", "fine"))
    results = {r.item_id: r for r in batch.results}
    assert results["fine"].success
    assert results["fine"].cost == 0.5
    assert results["odd"].success is False
    assert "cost_function raised KeyError" in (results["odd"].error or "")
    assert results["odd"].token_usage["total_tokens"] == 7
    assert len(strategy.calls_for("odd")) == 1  # not retried
    assert batch.termination.kind == "completed"


def test_model_name_reads_the_strategy_its_model_or_its_agent() -> None:
    class WithModel:
        model = "gpt-x"

    class Inner:
        model_name = "gemini-y"

    class WithObject:
        model = Inner()

    class Agentic:
        class agent:
            model = "claude-z"

    assert model_name(WithModel()) == "gpt-x"
    assert model_name(WithObject()) == "gemini-y"
    assert model_name(Agentic()) == "claude-z"
    assert model_name(ScriptedStrategy()) == "ScriptedStrategy"


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(min_value=1, max_value=500),
    attempts=st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 90), st.booleans()), max_size=60
    ),
)
def test_budget_overspend_is_bounded_by_what_attempts_in_flight_used_above_their_estimate(
    cap: int, attempts: list[tuple[int, int, bool]]
) -> None:
    """Attempts (estimate, real, settle-before-next) against a token cap: spend past the cap
    never exceeds the overshoot of the attempts in flight at the last admission."""
    budget = Budget(cap, None)
    in_flight: list[tuple[int, int]] = []
    bound_at_last_admission = 0
    for estimate, real, settle_now in attempts:
        if budget.try_reserve(estimate, 0.0) is None:
            assert budget.spent_tokens + budget.held_tokens <= cap
            in_flight.append((estimate, real))
            bound_at_last_admission = sum(max(0, r - e) for e, r in in_flight)
        if settle_now and in_flight:
            done_estimate, done_real = in_flight.pop(0)
            budget.settle(done_estimate, 0.0, done_real, 0.0)
    for estimate, real in in_flight:
        budget.settle(estimate, 0.0, real, 0.0)
    assert budget.held_tokens == 0
    assert budget.spent_tokens <= cap + bound_at_last_admission


# --------------------------------------------------------------------- 100 workers, measured


PRICE_PER_TOKEN = 0.00001


class Priced(LLMCallStrategy[str]):
    """Calls that take 1 s of fake time and use a random number of output tokens.

    With ``spent``/``cap`` set it checks the cap before each call against what *finished*
    calls cost: the check-then-call cap of other runners, for comparison.
    """

    model = "priced-model"

    def __init__(self, clock: FakeClock, seed: int, check_after_call_cap: float | None) -> None:
        self.clock = clock
        self.random = random.Random(seed)
        self.cap = check_after_call_cap
        self.spent = 0.0
        self.calls = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if self.cap is not None and self.spent >= self.cap:
            raise RuntimeError("check-after-call cap reached")
        self.calls += 1
        await self.clock.sleep(1.0)
        output = self.random.randint(50, 150)  # the estimate below reserves 100
        usage: TokenUsage = {
            "input_tokens": 20,
            "output_tokens": output,
            "total_tokens": 20 + output,
        }
        self.spent += usage["total_tokens"] * PRICE_PER_TOKEN
        return "ok", usage


def estimate_mean(prompt: Any, **_: Any) -> TokenEstimate:
    return TokenEstimate(20, 100)


def price(model: str, usage: TokenUsage) -> float:
    assert model == "priced-model"
    return usage.get("total_tokens", 0) * PRICE_PER_TOKEN


async def run_priced(clock: FakeClock, *, reserve: bool, cap: float) -> tuple[float, int, Any]:
    strategy = Priced(clock, seed=7, check_after_call_cap=None if reserve else cap)
    guardrails = (
        GuardrailConfig(max_total_cost=cap, cost_function=price)
        if reserve
        else GuardrailConfig(cost_function=price)
    )
    config = make_config(
        max_workers=100,
        retry_max_attempts=1,
        token_estimator=estimate_mean,
        guardrails=guardrails,
    )
    processor = make_processor(clock, config=config)
    work: list[LLMWorkItem[str, str, Any]] = [
        LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt="p") for n in range(3000)
    ]
    batch = await run_batch(processor, work, clock)
    assert len(batch.results) == 3000
    return strategy.spent, strategy.calls, batch


async def test_100_workers_spend_within_the_documented_bound_of_a_cost_cap() -> None:
    cap = 1.0  # about 830 calls of 120 tokens on average
    spent, calls, batch = await run_priced(FakeClock(), reserve=True, cap=cap)
    assert batch.termination.kind == "budget_exceeded"
    assert batch.total_cost == pytest.approx(spent)
    # The bound: at most 100 calls in flight at the last admission, each at most
    # 150 - 100 = 50 output tokens above its estimate.
    bound = 100 * 50 * PRICE_PER_TOKEN
    assert spent <= cap + bound
    assert spent <= cap * 1.02  # random outputs above and below the estimate mostly cancel

    # The same run with a check-then-call cap overshoots by the calls in flight (~100 calls).
    naive_spent, naive_calls, _ = await run_priced(FakeClock(), reserve=False, cap=cap)
    one_call = 120 * PRICE_PER_TOKEN
    assert naive_spent - cap >= 50 * one_call
    assert naive_calls - calls >= 50
    print(  # shown with -s: the figures of the closing note
        f"reserve-before-call: spent ${spent:.4f} of ${cap} in {calls} calls; "
        f"check-after-call: spent ${naive_spent:.4f} in {naive_calls} calls"
    )


class Named(ScriptedStrategy):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model


async def test_a_cost_cap_without_cost_function_prices_with_the_default_price_table() -> None:
    known, unknown = Named("gpt-4o-mini"), Named("my-private-model")
    config = make_config(
        token_estimator=estimate_15,
        guardrails=GuardrailConfig(max_total_cost=10.0, abort_on_error_categories=frozenset()),
    )
    work: list[LLMWorkItem[str, str, Any]] = [
        LLMWorkItem(item_id="known", strategy=known, prompt="a"),
        LLMWorkItem(item_id="unknown", strategy=unknown, prompt="b"),
    ]
    batch = await run_batch(make_processor(config=config), work)
    results = {r.item_id: r for r in batch.results}
    expected = PriceTable.default().cost("gpt-4o-mini", {"input_tokens": 10, "output_tokens": 5})
    assert results["known"].success
    assert results["known"].cost == pytest.approx(expected)
    assert results["unknown"].success is False
    error = results["unknown"].error or ""
    assert "cannot price model 'my-private-model'" in error
    assert unknown.calls == []  # refused at its reservation: nothing was spent
