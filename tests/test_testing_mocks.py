"""MockUsage, MockResult, MockAgent and mock_strategy from async_batch_llm.testing."""

from __future__ import annotations

import asyncio
import random
from typing import assert_type

import pytest
from pydantic import BaseModel

import async_batch_llm.testing as testing_pkg
from async_batch_llm._strategies.pydantic_ai import PydanticAIStrategy
from async_batch_llm.testing import MockAgent, MockResult, mock_strategy
from async_batch_llm.testing import mocks as mocks_module
from async_batch_llm.testing import strategies as strategies_module
from async_batch_llm.testing.clock import FakeClock
from async_batch_llm.testing.mocks import ClientError, MockUsage


class Summary(BaseModel):
    title: str


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace asyncio.sleep with an instant recorder of the requested durations."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return recorded


def test_module_exports() -> None:
    assert testing_pkg.__all__ == ["MockAgent", "MockResult", "mock_strategy"]
    assert mocks_module.__all__ == ["ClientError", "MockAgent", "MockResult", "MockUsage"]
    assert strategies_module.__all__ == ["mock_strategy"]
    assert testing_pkg.MockAgent is mocks_module.MockAgent
    assert strategies_module.mock_strategy is mock_strategy


# --- MockUsage ----------------------------------------------------------------------------


def test_mock_usage_defaults_and_total() -> None:
    usage = MockUsage()
    assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (100, 50, 150)


def test_mock_usage_total_is_the_sum() -> None:
    usage = MockUsage(request_tokens=7, response_tokens=3)
    assert usage.total_tokens == 10
    assert MockUsage(request_tokens=7, response_tokens=3) == usage


def test_mock_usage_offers_current_pydantic_ai_names() -> None:
    usage = MockUsage(request_tokens=7, response_tokens=3)
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)


def test_mock_usage_total_is_not_a_constructor_argument() -> None:
    with pytest.raises(TypeError):
        MockUsage(1, 2, 3)  # type: ignore[call-arg]


# --- MockResult ---------------------------------------------------------------------------


def test_mock_result_default_usage_is_100_50_150() -> None:
    result = MockResult("out")
    assert result.output == "out"
    usage = result.usage()
    assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (100, 50, 150)


def test_mock_result_returns_given_usage() -> None:
    usage = MockUsage(request_tokens=1, response_tokens=2)
    result = MockResult({"a": 1}, usage)
    assert result.usage() is usage
    assert result.output == {"a": 1}


def test_mock_result_has_no_messages() -> None:
    assert MockResult("x").all_messages() == []


def test_mock_result_repr() -> None:
    assert repr(MockResult("x", MockUsage(1, 2))) == (
        "MockResult(output='x', usage_info=MockUsage(request_tokens=1, response_tokens=2, "
        "total_tokens=3))"
    )


# --- MockAgent construction ---------------------------------------------------------------


def test_mock_agent_defaults() -> None:
    agent = MockAgent()
    assert agent.latency == 0.1
    assert agent.failure_rate == 0.0
    assert agent.rate_limit_on_call is None
    assert agent.timeout_on_call is None
    assert agent.tokens_per_call == {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
    assert agent.call_count == 0
    assert agent.response_factory("hi") == {"response": "Mock response to: hi"}


def test_mock_agent_output_type_is_inferred_for_type_checkers() -> None:
    # assert_type is checked by mypy; at runtime it returns its argument.
    assert_type(MockAgent(), MockAgent[dict[str, str]])
    summary_agent = MockAgent(response_factory=lambda p: Summary(title=p))
    assert_type(summary_agent, MockAgent[Summary])
    assert_type(mock_strategy(summary_agent), PydanticAIStrategy[Summary])


def test_mock_agent_default_tokens_are_not_shared_between_agents() -> None:
    first, second = MockAgent(), MockAgent()
    first.tokens_per_call["input_tokens"] = 1
    assert second.tokens_per_call["input_tokens"] == 10


def test_mock_agent_repr() -> None:
    agent = MockAgent(latency=0.0, rate_limit_on_call=2)
    assert repr(agent) == (
        "MockAgent(latency=0.0, failure_rate=0.0, rate_limit_on_call=2, "
        "timeout_on_call=None, call_count=0)"
    )


# --- MockAgent.run ------------------------------------------------------------------------


async def test_run_returns_default_response_and_usage(sleeps: list[float]) -> None:
    agent = MockAgent()
    result = await agent.run("What is 2+2?")
    assert result.output == {"response": "Mock response to: What is 2+2?"}
    usage = result.usage()
    assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (10, 20, 30)
    assert result.all_messages() == []


async def test_default_response_truncates_prompt_to_50_characters(sleeps: list[float]) -> None:
    prompt = "x" * 49 + "yz" + "tail"
    result = await MockAgent().run(prompt)
    assert result.output == {"response": "Mock response to: " + "x" * 49 + "y"}


async def test_run_uses_response_factory(sleeps: list[float]) -> None:
    agent = MockAgent(response_factory=lambda p: Summary(title=p.upper()))
    result = await agent.run("hello")
    assert result.output == Summary(title="HELLO")


async def test_response_factory_errors_propagate_unchanged(sleeps: list[float]) -> None:
    error = KeyError("missing")

    def factory(prompt: str) -> str:
        raise error

    agent = MockAgent(response_factory=factory)
    with pytest.raises(KeyError) as excinfo:
        await agent.run("p")
    assert excinfo.value is error
    assert agent.call_count == 1


async def test_run_ignores_extra_keyword_arguments(sleeps: list[float]) -> None:
    result = await MockAgent().run("p", message_history=[], model_settings={"temperature": 0})
    assert result.output == {"response": "Mock response to: p"}


async def test_call_count_increments_before_the_latency_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = MockAgent(latency=0.25)
    seen: list[tuple[float, int]] = []

    async def fake_sleep(seconds: float) -> None:
        seen.append((seconds, agent.call_count))

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    await agent.run("a")
    await agent.run("b")
    assert seen == [(0.25, 1), (0.25, 2)]
    assert agent.call_count == 2


async def test_latency_is_a_real_sleep() -> None:
    agent = MockAgent(latency=0.002)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await agent.run("p")
    assert loop.time() - started >= 0.002


async def test_tokens_per_call_sets_usage_and_total_is_recomputed(sleeps: list[float]) -> None:
    agent = MockAgent(tokens_per_call={"input_tokens": 7, "output_tokens": 3, "total_tokens": 999})
    usage = (await agent.run("p")).usage()
    assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == (7, 3, 10)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ({}, (10, 20, 30)),
        ({"input_tokens": 5}, (5, 20, 25)),
        ({"output_tokens": 5}, (10, 5, 15)),
        ({"total_tokens": 1}, (10, 20, 30)),
    ],
    ids=["empty", "input-only", "output-only", "total-only"],
)
async def test_tokens_per_call_missing_keys_use_defaults(
    sleeps: list[float], tokens: dict[str, int], expected: tuple[int, int, int]
) -> None:
    usage = (await MockAgent(tokens_per_call=tokens).run("p")).usage()
    assert (usage.request_tokens, usage.response_tokens, usage.total_tokens) == expected


async def test_rate_limit_fires_once_on_the_configured_call(sleeps: list[float]) -> None:
    agent = MockAgent(rate_limit_on_call=2)
    await agent.run("1")
    with pytest.raises(ClientError) as excinfo:
        await agent.run("2")
    assert type(excinfo.value).__name__ == "ClientError"
    assert str(excinfo.value) == "429 RESOURCE_EXHAUSTED"
    assert isinstance(excinfo.value, Exception)
    await agent.run("3")
    agent.call_count = 1  # even if the count comes round again, it fired already
    await agent.run("2 again")
    assert agent.call_count == 2


async def test_rate_limit_is_not_a_google_genai_class(sleeps: list[float]) -> None:
    agent = MockAgent(rate_limit_on_call=1)
    with pytest.raises(Exception) as excinfo:  # noqa: PT011 - checking the exact class below
        await agent.run("p")
    assert type(excinfo.value) is ClientError
    assert type(excinfo.value).__module__ == "async_batch_llm.testing.mocks"


async def test_rate_limit_call_number_is_read_after_the_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two simultaneous first calls both see call_count == 2 after sleeping, so call 1 is
    # skipped and the rate limit never fires (mirrors 0.6.0).
    clock = FakeClock()
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    agent = MockAgent(rate_limit_on_call=1, latency=1.0)
    runs = asyncio.gather(agent.run("a"), agent.run("b"))
    await clock.advance(1.0)
    results = await runs
    assert [r.output for r in results] == [
        {"response": "Mock response to: a"},
        {"response": "Mock response to: b"},
    ]
    assert agent.call_count == 2


async def test_rate_limit_fires_for_the_first_concurrent_call_to_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    agent = MockAgent(rate_limit_on_call=2, latency=1.0)
    runs = asyncio.gather(agent.run("a"), agent.run("b"), return_exceptions=True)
    await clock.advance(1.0)
    first, second = await runs
    # Both observe call_count == 2; the first to resume takes the one-shot rate limit.
    assert isinstance(first, ClientError)
    assert isinstance(second, MockResult)
    assert second.output == {"response": "Mock response to: b"}


async def test_timeout_on_call_sleeps_999_seconds_once(sleeps: list[float]) -> None:
    agent = MockAgent(latency=0.5, timeout_on_call=2)
    await agent.run("1")
    assert sleeps == [0.5]
    result = await agent.run("2")
    assert sleeps == [0.5, 0.5, 999]
    assert result.output == {"response": "Mock response to: 2"}
    agent.call_count = 1
    await agent.run("2 again")
    assert sleeps == [0.5, 0.5, 999, 0.5]


async def test_timeout_on_call_trips_a_caller_timeout() -> None:
    agent = MockAgent(latency=0.0, timeout_on_call=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.005):
            await agent.run("p")
    assert agent.call_count == 1


async def test_rate_limit_is_checked_before_timeout_on_the_same_call(sleeps: list[float]) -> None:
    agent = MockAgent(latency=0.0, rate_limit_on_call=1, timeout_on_call=1)
    with pytest.raises(ClientError):
        await agent.run("p")
    assert sleeps == [0.0]


async def test_failure_rate_one_always_fails_with_call_number(sleeps: list[float]) -> None:
    agent = MockAgent(failure_rate=1.0)
    for n in (1, 2, 3):
        with pytest.raises(Exception, match=rf"^Random failure on call {n}$") as excinfo:
            await agent.run("p")
        assert type(excinfo.value) is Exception


async def test_failure_rate_zero_never_fails_nor_draws(sleeps: list[float]) -> None:
    random.seed(1234)
    expected_next = random.Random(1234).random()
    agent = MockAgent(failure_rate=0.0)
    for _ in range(20):
        await agent.run("p")
    assert random.random() == expected_next


async def test_failure_rate_draws_from_the_module_random(sleeps: list[float]) -> None:
    draws = random.Random(42)
    expected = [draws.random() < 0.5 for _ in range(40)]
    assert any(expected)
    assert not all(expected)

    random.seed(42)
    agent = MockAgent(failure_rate=0.5)
    messages: list[str | None] = []
    for _ in range(40):
        try:
            await agent.run("p")
        except Exception as exc:
            messages.append(str(exc))
        else:
            messages.append(None)
    assert messages == [
        f"Random failure on call {n}" if fails else None
        for n, fails in enumerate(expected, start=1)
    ]


async def test_mock_agent_latency_runs_on_a_patched_fake_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    agent = MockAgent(latency=2.0)
    task = asyncio.create_task(agent.run("p"))
    await clock.advance(1.5)
    assert not task.done()
    await clock.advance(0.5)
    assert task.done()
    assert (await task).output == {"response": "Mock response to: p"}


# --- mock_strategy ------------------------------------------------------------------------


def test_mock_strategy_wraps_the_agent() -> None:
    agent = MockAgent(latency=0.0)
    strategy = mock_strategy(agent)
    assert isinstance(strategy, PydanticAIStrategy)
    assert strategy.agent is agent


async def test_mock_strategy_executes_through_the_agent(sleeps: list[float]) -> None:
    agent = MockAgent(
        response_factory=lambda p: Summary(title=p),
        tokens_per_call={"input_tokens": 4, "output_tokens": 6},
    )
    output, usage = await mock_strategy(agent).execute("hello", 1, 30.0)
    assert output == Summary(title="hello")
    assert usage == {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}
    assert agent.call_count == 1
