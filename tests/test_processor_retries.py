"""The retry loop (§4.4, §4.5), error strings (§4.6), per-attempt timeouts (§4.4.1) and
strategies without a ``state`` parameter (D2)."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    DefaultErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    LLMCallStrategy,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked
from tests.conftest import (
    Call,
    RateLimitError,
    ScriptedStrategy,
    add_all,
    items,
    make_config,
    make_processor,
    run_batch,
)


def call_times(strategy: ScriptedStrategy) -> list[float]:
    return [call.at for call in strategy.calls]


# --------------------------------------------------------------------------- attempts


async def test_retryable_errors_use_all_attempts_then_fail_with_a_200_char_error(
    fake_clock: FakeClock,
) -> None:
    message = "connection reset " + "x" * 300
    strategy = ScriptedStrategy({"a": [ConnectionError(message) for _ in range(4)]})
    processor = make_processor(fake_clock, config=make_config(retry_max_attempts=4))
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    (only,) = result.results
    assert only.success is False
    assert only.error == "ConnectionError: " + message[:200]
    assert [call.attempt for call in strategy.calls] == [1, 2, 3, 4]
    assert [attempt for _, attempt, _ in strategy.errors] == [1, 2, 3, 4]


async def test_max_attempts_one_means_no_retry() -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("reset")]})
    processor = make_processor(config=make_config(retry_max_attempts=1))
    result = await run_batch(processor, items(strategy, "a"))
    assert len(strategy.calls) == 1
    assert result.results[0].error == "ConnectionError: reset"


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad value"),
        TypeError("bad type"),
        AttributeError("no attr"),
        KeyError("key"),
        IndexError("index"),
        NameError("name"),
        ZeroDivisionError("zero"),
        AssertionError("assert"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_logic_errors_fail_after_one_attempt(error: Exception) -> None:
    strategy = ScriptedStrategy({"a": [error]})
    result = await run_batch(make_processor(), items(strategy, "a"))
    assert len(strategy.calls) == 1
    assert result.results[0].error == f"{type(error).__name__}: {error}"


async def test_non_retryable_error_keeps_500_characters() -> None:
    message = "y" * 700
    strategy = ScriptedStrategy({"a": [ValueError(message)]})
    result = await run_batch(make_processor(), items(strategy, "a"))
    assert result.results[0].error == "ValueError: " + message[:500]


async def test_success_after_retries_shares_one_retry_state(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("1"), OSError("2"), "third time"]})
    processor = make_processor(fake_clock, config=make_config(retry_max_attempts=3))
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.results[0].output == "third time"
    states = [call.state for call in strategy.calls]
    assert isinstance(states[0], RetryState)
    assert all(state is states[0] for state in states)
    assert [(type(e).__name__, n) for e, n, _ in strategy.errors] == [
        ("ConnectionError", 1),
        ("OSError", 2),
    ]
    assert all(state is states[0] for _, _, state in strategy.errors)


async def test_each_item_gets_its_own_retry_state() -> None:
    strategy = ScriptedStrategy()
    await run_batch(make_processor(), items(strategy, "a", "b"))
    a, b = (call.state for call in strategy.calls)
    assert a is not None
    assert b is not None
    assert a is not b


async def test_retry_state_carries_data_between_attempts(fake_clock: FakeClock) -> None:
    class Partial(LLMCallStrategy[str]):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            assert state is not None
            if attempt == 1:
                state.set("draft", "half")
                raise ConnectionError("incomplete")
            return f"{state.get('draft')}+rest", {}

    processor = make_processor(fake_clock)
    result = await run_batch(processor, items(Partial(), "a"), fake_clock)
    assert result.results[0].output == "half+rest"


async def test_timeout_argument_is_the_per_item_timeout() -> None:
    strategy = ScriptedStrategy()
    await run_batch(make_processor(config=make_config(timeout_per_item=42.5)), items(strategy, "a"))
    assert strategy.calls[0].timeout == 42.5


async def test_custom_duck_typed_classifier_decides_retries() -> None:
    class RetryEverything:
        def __init__(self) -> None:
            self.seen: list[Exception] = []

        def classify(self, exception: Exception) -> ErrorInfo:
            self.seen.append(exception)
            return ErrorInfo(
                is_retryable=True, is_rate_limit=False, is_timeout=False, error_category="x"
            )

    classifier = RetryEverything()
    strategy = ScriptedStrategy({"a": [ValueError("v1"), ValueError("v2")]})
    processor = make_processor(
        config=make_config(retry_initial_wait=0.001),
        error_classifier=classifier,  # duck-typed on purpose: no ErrorClassifier base
    )
    result = await run_batch(processor, items(strategy, "a"))
    assert result.results[0].success is True
    assert [str(e) for e in classifier.seen] == ["v1", "v2"]


async def test_bad_return_value_fails_the_item_with_a_clear_error() -> None:
    class Broken(LLMCallStrategy[str]):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            return "just a string"  # type: ignore[return-value]  # the bug under test

    result = await run_batch(make_processor(), items(Broken(), "a"))
    error = result.results[0].error
    assert error is not None
    assert error.startswith("TypeError: ")
    assert "(output, token_usage)" in error


# --------------------------------------------------------------------------- retry waits


async def test_backoff_waits_are_exact_without_jitter(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("c")] * 3}, clock=fake_clock)
    config = make_config(retry_max_attempts=4, retry_initial_wait=1.0, retry_exponential_base=2.0)
    processor = make_processor(fake_clock, config=config)
    await add_all(processor, items(strategy, "a"))
    task = asyncio.create_task(processor.process_all())
    await fake_clock.advance(0.0)
    assert call_times(strategy) == [0.0]
    await fake_clock.advance(0.875)
    assert call_times(strategy) == [0.0]
    await fake_clock.advance(0.125)
    assert call_times(strategy) == [0.0, 1.0]
    await fake_clock.advance(1.875)
    assert len(strategy.calls) == 2
    await fake_clock.advance(0.125)
    assert call_times(strategy) == [0.0, 1.0, 3.0]
    await fake_clock.advance(4.0)
    assert call_times(strategy) == [0.0, 1.0, 3.0, 7.0]
    assert (await task).succeeded == 1


@pytest.mark.parametrize(
    ("r", "expected"),
    [
        pytest.param(0.0, [0.0, 0.5, 1.5, 3.5], id="r=0-factor-0.5"),
        pytest.param(0.5, [0.0, 0.75, 2.25, 5.25], id="r=0.5-factor-0.75"),
    ],
)
async def test_jitter_factor_is_half_plus_half_r(
    fake_clock: FakeClock, r: float, expected: list[float]
) -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("c")] * 3}, clock=fake_clock)
    config = make_config(retry_max_attempts=4, retry_jitter=True)
    processor = make_processor(fake_clock, config=config)
    draws: list[float] = []

    def pinned() -> float:
        draws.append(r)
        return r

    processor._random = pinned
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert call_times(strategy) == expected
    assert len(draws) == 3  # one draw per retry wait


async def test_jitter_never_reaches_the_full_wait(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("c")]}, clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(retry_jitter=True))
    processor._random = lambda: math.nextafter(1.0, 0.0)  # the largest random.random() value
    await run_batch(processor, items(strategy, "a"), fake_clock)
    second = strategy.calls[1].at
    assert 0.999 < second < 1.0


async def test_random_source_is_not_consulted_without_jitter(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("c")]}, clock=fake_clock)
    processor = make_processor(fake_clock)

    def forbidden() -> float:
        raise AssertionError("jitter is off")

    processor._random = forbidden
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.succeeded == 1


async def test_max_wait_caps_the_backoff(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"a": [ConnectionError("c")] * 4}, clock=fake_clock)
    config = make_config(
        retry_max_attempts=5,
        retry_initial_wait=1.0,
        retry_exponential_base=10.0,
        retry_max_wait=5.0,
    )
    processor = make_processor(fake_clock, config=config)
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert call_times(strategy) == [0.0, 1.0, 6.0, 11.0, 16.0]


class ParseFailure(Exception):
    """Validation-like by class name ("parse")."""


class Output(BaseModel):
    value: int


def pydantic_validation_error() -> ValidationError:
    try:
        Output.model_validate({"value": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ParseFailure("bad json"), id="class-name-parse"),
        pytest.param(type("SchemaValidationError", (Exception,), {})("x"), id="class-validation"),
        pytest.param(RuntimeError("Result validation failed"), id="message"),
        pytest.param(pydantic_validation_error(), id="pydantic-validation-error"),
        pytest.param(
            type("UnexpectedModelBehavior", (RuntimeError,), {})("x"), id="unexpected-behavior"
        ),
    ],
)
async def test_validation_like_failures_retry_without_waiting(
    fake_clock: FakeClock, error: Exception
) -> None:
    strategy = ScriptedStrategy({"a": [error]}, clock=fake_clock)
    processor = make_processor(fake_clock, config=make_config(retry_initial_wait=30.0))
    await add_all(processor, items(strategy, "a"))
    task = asyncio.create_task(processor.process_all())
    await wait_all_tasks_blocked()
    assert task.done()  # no virtual time had to pass
    assert (await task).succeeded == 1
    assert call_times(strategy) == [0.0, 0.0]


async def test_validation_category_from_the_classifier_retries_without_waiting(
    fake_clock: FakeClock,
) -> None:
    class Validating(DefaultErrorClassifier):
        def classify(self, exception: Exception) -> ErrorInfo:
            return ErrorInfo(
                is_retryable=True,
                is_rate_limit=False,
                is_timeout=False,
                error_category="validation_error",
            )

    strategy = ScriptedStrategy({"a": [OSError("schema mismatch")]}, clock=fake_clock)
    processor = make_processor(fake_clock, error_classifier=Validating())
    await run_batch(processor, items(strategy, "a"), fake_clock)
    assert call_times(strategy) == [0.0, 0.0]


async def test_rate_limited_retry_waits_the_backoff_after_the_cooldown(
    fake_clock: FakeClock,
) -> None:
    strategy = ScriptedStrategy({"a": [RateLimitError(), RateLimitError()]}, clock=fake_clock)
    config = make_config(
        retry_max_attempts=3, rate_cooldown_seconds=8.0, rate_backoff_multiplier=2.0
    )
    processor = make_processor(fake_clock, config=config)
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.succeeded == 1
    # cooldown 8 + backoff 1 -> 9; then cooldown 16 + backoff 2 -> 27.
    assert call_times(strategy) == [0.0, 9.0, 27.0]


# --------------------------------------------------------------------------- timeouts


class Hangs(ScriptedStrategy):
    """Calls listed in ``hang_on`` (attempt numbers) wait forever; the others succeed."""

    def __init__(self, *hang_on: int) -> None:
        super().__init__()
        self.hang_on = set(hang_on)
        self.cancelled = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if attempt in self.hang_on:
            self.calls.append(Call(prompt, attempt, timeout, state, 0.0))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super().execute(prompt, attempt, timeout, state)


TIMEOUT_MESSAGE = re.compile(r"^Framework timeout after (\d+\.\d)s \(limit: 0\.05s\)$")


async def test_attempt_timeout_raises_framework_timeout_error_and_retries() -> None:
    strategy = Hangs(1)
    processor = make_processor(config=make_config(timeout_per_item=0.05, retry_initial_wait=0.001))
    result = await run_batch(processor, items(strategy, "a"))
    assert result.results[0].success is True
    assert strategy.cancelled == 1
    ((error, attempt, _),) = strategy.errors
    assert attempt == 1
    assert isinstance(error, FrameworkTimeoutError)
    assert isinstance(error, TimeoutError)
    match = TIMEOUT_MESSAGE.match(str(error))
    assert match is not None, str(error)
    assert error.item_id == "a"
    assert error.timeout_limit == 0.05
    assert error.elapsed is not None
    assert 0.049 <= error.elapsed < 1.0  # timers may fire up to the clock resolution early
    assert match.group(1) == f"{error.elapsed:.1f}"
    assert isinstance(error.__cause__, TimeoutError)
    assert not isinstance(error.__cause__, FrameworkTimeoutError)


async def test_elapsed_is_real_time_even_with_a_virtual_clock(fake_clock: FakeClock) -> None:
    # The per-attempt limit is enforced in real (event-loop) time, so the elapsed time it
    # reports must be measured the same way, not on the processor's injected clock.
    strategy = Hangs(1)
    processor = make_processor(
        fake_clock, config=make_config(timeout_per_item=0.05, retry_max_attempts=1)
    )
    await run_batch(processor, items(strategy, "a"), fake_clock)
    error = strategy.errors[0][0]
    assert isinstance(error, FrameworkTimeoutError)
    assert error.elapsed is not None
    assert error.elapsed >= 0.049  # not the 0.0 a virtual clock would report


async def test_timeout_on_the_last_attempt_fails_the_item() -> None:
    strategy = Hangs(1, 2)
    processor = make_processor(
        config=make_config(timeout_per_item=0.02, retry_max_attempts=2, retry_initial_wait=0.001)
    )
    result = await run_batch(processor, items(strategy, "a"))
    error = result.results[0].error
    assert error is not None
    assert error.startswith("FrameworkTimeoutError: Framework timeout after ")
    assert error.endswith("(limit: 0.02s)")
    assert strategy.cancelled == 2


async def test_strategy_own_timeout_error_is_an_api_timeout_not_converted() -> None:
    class Recording(DefaultErrorClassifier):
        def __init__(self) -> None:
            self.infos: list[ErrorInfo] = []

        def classify(self, exception: Exception) -> ErrorInfo:
            info = super().classify(exception)
            self.infos.append(info)
            return info

    classifier = Recording()
    strategy = ScriptedStrategy({"a": [TimeoutError("upstream read timed out")] * 2})
    processor = make_processor(
        config=make_config(timeout_per_item=10.0, retry_max_attempts=2, retry_initial_wait=0.001),
        error_classifier=classifier,
    )
    result = await run_batch(processor, items(strategy, "a"))
    assert [type(e) for e, _, _ in strategy.errors] == [TimeoutError, TimeoutError]
    assert [i.error_category for i in classifier.infos] == ["api_timeout", "api_timeout"]
    assert all(i.is_retryable for i in classifier.infos)
    assert result.results[0].error == "TimeoutError: upstream read timed out"


# --------------------------------------------------------------------------- D2


class NoState(LLMCallStrategy[str]):
    """The README's custom-strategy shape: no ``state`` anywhere."""

    def __init__(self) -> None:
        self.errors: list[tuple[Exception, int]] = []
        self.attempts: list[int] = []

    async def execute(  # type: ignore[override]  # the README shape, on purpose
        self, prompt: str, attempt: int, timeout: float
    ) -> tuple[str, TokenUsage]:
        self.attempts.append(attempt)
        if prompt == "flaky" and attempt == 1:
            raise ConnectionError("reset")
        return prompt.upper(), {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}

    async def on_error(  # type: ignore[override]  # the README shape, on purpose
        self, exception: Exception, attempt: int
    ) -> None:
        self.errors.append((exception, attempt))


async def test_strategy_without_state_parameters_works() -> None:
    strategy = NoState()
    processor = make_processor(config=make_config(retry_initial_wait=0.001))
    result = await run_batch(processor, items(strategy, "hello", "flaky"))
    assert [(r.item_id, r.success, r.output) for r in result.results] == [
        ("hello", True, "HELLO"),
        ("flaky", True, "FLAKY"),
    ]
    assert [(type(e).__name__, n) for e, n in strategy.errors] == [("ConnectionError", 1)]


async def test_strategy_with_var_args_receives_state() -> None:
    class VarArgs(LLMCallStrategy[str]):
        def __init__(self) -> None:
            self.received: list[tuple[Any, ...]] = []

        async def execute(self, *args: Any) -> tuple[str, TokenUsage]:
            self.received.append(args)
            return "ok", {}

    strategy = VarArgs()
    await run_batch(make_processor(config=make_config(timeout_per_item=9.0)), items(strategy, "p"))
    ((prompt, attempt, timeout, state),) = strategy.received
    assert (prompt, attempt, timeout) == ("p", 1, 9.0)
    assert isinstance(state, RetryState)
