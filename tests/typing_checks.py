"""Types users' editors infer, pinned with ``typing.assert_type``.

Checked by ``mypy --strict`` (part of ``make ci``); never run: pytest does not collect this file
(its name does not start with ``test_``). A regression in the public generics shows up here as a
type error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, assert_type

from pydantic import BaseModel

from async_batch_llm import (
    BatchResult,
    DefaultErrorClassifier,
    ErrorInfo,
    ExponentialBackoffStrategy,
    FixedDelayStrategy,
    FrameworkTimeoutError,
    GeminiStrategy,
    LLMCallStrategy,
    LLMModel,
    LLMResponse,
    LLMWorkItem,
    MetricsObserver,
    ModelPrice,
    ParallelBatchProcessor,
    PostProcessorFunc,
    PriceTable,
    ProcessorConfig,
    ProgressCallbackFunc,
    PydanticAIStrategy,
    RetryState,
    SimpleBatchProcessor,
    SimpleResult,
    SimpleWorkItem,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.testing import MockAgent, mock_strategy


class Summary(BaseModel):
    text: str


async def simple_batch_processor(strategy: LLMCallStrategy[Summary]) -> None:
    processor = SimpleBatchProcessor[Summary](config=ProcessorConfig())
    assert_type(processor, ParallelBatchProcessor[str, Summary, None])
    item = SimpleWorkItem[Summary](item_id="a", strategy=strategy, prompt="p")
    assert_type(item, LLMWorkItem[str, Summary, None])
    await processor.add_work(item)
    result = await processor.process_all()
    assert_type(result, BatchResult[Summary, None])
    assert_type(result.results, list[WorkItemResult[Summary, None]])
    first = result.results[0]
    assert_type(first, SimpleResult[Summary])
    assert_type(first.output, Summary | None)
    assert_type(first.context, None)
    assert_type(first.error, str | None)
    assert_type(first.token_usage, TokenUsage)
    assert_type(first.token_usage.get("input_tokens", 0), int)
    assert_type(result.succeeded, int)
    assert_type(result.cache_hit_rate(), float)
    assert_type(result.effective_input_tokens(), int)
    assert_type(await processor.get_stats(), dict[str, Any])


async def context_manager_keeps_the_processor_type(strategy: LLMCallStrategy[Summary]) -> None:
    async with ParallelBatchProcessor[str, Summary, dict[str, int]](
        config=ProcessorConfig()
    ) as processor:
        assert_type(processor, ParallelBatchProcessor[str, Summary, dict[str, int]])
        assert_type(processor.config, ProcessorConfig)
        await processor.add_work(
            LLMWorkItem(item_id="a", strategy=strategy, prompt="p", context={"row": 1})
        )
        result = await processor.process_all()
        assert_type(result.results[0].context, dict[str, int] | None)
        assert_type(result.results[0].output, Summary | None)


def work_item_generics(strategy: LLMCallStrategy[Summary]) -> None:
    item = LLMWorkItem[str, Summary, int](item_id="a", strategy=strategy, context=3)
    assert_type(item.strategy, LLMCallStrategy[Summary])
    assert_type(item.context, int | None)
    assert_type(item.prompt, str)


async def strategy_types(model: LLMModel, response: LLMResponse) -> None:
    agent = MockAgent[Summary](response_factory=lambda prompt: Summary(text=prompt))
    assert_type(mock_strategy(agent), PydanticAIStrategy[Summary])

    gemini = GeminiStrategy(model, response_parser=lambda r: len(r.text))
    assert_type(gemini, GeminiStrategy[int])
    output, usage = await gemini.execute("p", 1, 10.0)
    assert_type(output, int)
    assert_type(usage, TokenUsage)
    assert_type(await gemini.dry_run("p"), tuple[int, TokenUsage])
    assert_type(response.token_usage, TokenUsage)


def callback_aliases() -> None:
    def post(result: WorkItemResult[Summary, None]) -> None:
        return None

    async def async_post(result: WorkItemResult[Summary, None]) -> None:
        return None

    def progress(completed: int, total: int, item_id: str) -> None:
        return None

    async def async_progress(completed: int, total: int, item_id: str) -> None:
        return None

    sync_hook: PostProcessorFunc[Summary, None] = post
    async_hook: PostProcessorFunc[Summary, None] = async_post
    progress_hook: ProgressCallbackFunc = progress
    async_progress_hook: ProgressCallbackFunc = async_progress
    SimpleBatchProcessor[Summary](post_processor=sync_hook, progress_callback=progress_hook)
    SimpleBatchProcessor[Summary](post_processor=async_hook, progress_callback=async_progress_hook)


async def policies_and_errors(state: RetryState) -> None:
    info = DefaultErrorClassifier().classify(ValueError("x"))
    assert_type(info, ErrorInfo)
    assert_type(info.suggested_wait, float | None)
    assert_type(await ExponentialBackoffStrategy().on_rate_limit(0, 1), float)
    assert_type(FixedDelayStrategy().should_apply_slow_start(0), tuple[bool, float])
    error = FrameworkTimeoutError("t", item_id="a", elapsed=1.0, timeout_limit=0.5)
    assert_type(error.elapsed, float | None)
    assert_type(error.item_id, str | None)
    assert_type(state.get("key"), Any)
    assert_type(await MetricsObserver().get_metrics(), dict[str, Any])


async def async_with_returns_from_inside(config: ProcessorConfig) -> int:
    """`async with` never swallows exceptions, so returning from inside it type-checks."""
    async with ParallelBatchProcessor[str, str, None](config=config) as processor:
        result = await processor.process_all()
        return result.total_items


def price_table_is_a_cost_function(usage: TokenUsage) -> None:
    """`PriceTable.default().cost` fits `GuardrailConfig.cost_function`'s type."""
    cost_function: Callable[[str, TokenUsage], float] = PriceTable.default().cost
    assert_type(cost_function("gpt-4o", usage), float)
    assert_type(PriceTable.default().prices("gpt-4o"), ModelPrice)
    assert_type(PriceTable.default().with_prices({}), PriceTable)
