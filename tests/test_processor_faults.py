"""Faults inside the machinery of one item stay with that item.

- A strategy that raises ``CancelledError`` on its own fails its attempt; it never kills a
  worker. Only a real cancellation of the batch (or the attempt's own timeout) may end an attempt
  with ``CancelledError``.
- A classifier that raises fails only the item it was classifying, with its tokens counted.
"""

from __future__ import annotations

import asyncio

import pytest

from async_batch_llm import (
    BaseMiddleware,
    DefaultErrorClassifier,
    ErrorInfo,
    LLMCallStrategy,
    LLMWorkItem,
    Middleware,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)


class CancelledInside(LLMCallStrategy[str]):
    """Raises CancelledError (awaiting a cancelled future) for the prompts listed, N times."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = dict(failures)
        self.calls: list[tuple[str, int]] = []

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls.append((prompt, attempt))
        if self.failures.get(prompt, 0) > 0:
            self.failures[prompt] -= 1
            doomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            doomed.cancel()
            await doomed  # raises CancelledError, though nobody cancelled this task
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


@pytest.mark.parametrize("with_middleware", [False, True], ids=["inline-path", "attempt-path"])
async def test_stray_cancellation_is_retried_and_loses_nothing(with_middleware: bool) -> None:
    strategy = CancelledInside({"b": 1, "c": 5})
    config = ProcessorConfig(
        max_workers=2, retry=RetryConfig(max_attempts=3, initial_wait=0.001, jitter=False)
    )
    middlewares: list[Middleware[str, str, None]] | None = (
        [BaseMiddleware[str, str, None]()] if with_middleware else None
    )
    async with ParallelBatchProcessor[str, str, None](
        config=config, middlewares=middlewares
    ) as processor:
        for name in "abcd":
            await processor.add_work(LLMWorkItem(item_id=name, strategy=strategy, prompt=name))
        result = await processor.process_all()

    by_id = {r.item_id: r for r in result.results}
    assert sorted(by_id) == ["a", "b", "c", "d"]
    assert [by_id[n].success for n in "abcd"] == [True, True, False, True]
    assert by_id["b"].output == "b"
    error = by_id["c"].error
    assert error is not None
    assert error.startswith("StrayCancellationError: the strategy raised CancelledError")
    assert strategy.calls.count(("c", 3)) == 1  # retried up to max_attempts


async def test_a_real_cancellation_still_propagates() -> None:
    started = asyncio.Event()

    class Blocks(LLMCallStrategy[str]):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    processor = ParallelBatchProcessor[str, str, None](config=ProcessorConfig(max_workers=1))
    await processor.add_work(LLMWorkItem(item_id="x", strategy=Blocks(), prompt="x"))
    batch = asyncio.create_task(processor.process_all())
    await started.wait()
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch


async def test_a_raising_classifier_fails_only_that_item_and_keeps_its_tokens() -> None:
    class Broken429(Exception):
        pass

    class CostlyFailure(LLMCallStrategy[str]):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            if prompt == "bad":
                error = Broken429("provider said no")
                error.__dict__["_failed_token_usage"] = {
                    "input_tokens": 7,
                    "output_tokens": 3,
                    "total_tokens": 10,
                }
                raise error
            return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}

    class ExplodingClassifier(DefaultErrorClassifier):
        def classify(self, exception: Exception) -> ErrorInfo:
            if isinstance(exception, Broken429):
                raise RuntimeError("classifier bug")
            return super().classify(exception)

    async with ParallelBatchProcessor[str, str, None](
        config=ProcessorConfig(max_workers=2), error_classifier=ExplodingClassifier()
    ) as processor:
        for name in ("ok1", "bad", "ok2"):
            await processor.add_work(
                LLMWorkItem(item_id=name, strategy=CostlyFailure(), prompt=name)
            )
        result = await processor.process_all()

    by_id = {r.item_id: r for r in result.results}
    assert [by_id[n].success for n in ("ok1", "bad", "ok2")] == [True, False, True]
    assert by_id["bad"].error == "Broken429: provider said no"
    assert by_id["bad"].token_usage["total_tokens"] == 10
    assert result.total_input_tokens == 7 + 2
