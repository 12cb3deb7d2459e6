"""The leak check of this suite really catches a leaked task (it guards guarantee G9)."""

from __future__ import annotations

import asyncio

import pytest

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm.base import BatchProcessor

from ._support import ItemPlan, ScriptedStrategy, Step, make_plans, no_task_left_behind


async def test_a_stray_task_fails_the_check_and_is_cancelled() -> None:
    strays: list[asyncio.Task[None]] = []

    async def leave_a_task_behind() -> None:
        async with no_task_left_behind():
            strays.append(asyncio.create_task(forever()))

    with pytest.raises(AssertionError, match=r"1 task\(s\) left pending: .*forever"):
        await leave_a_task_behind()
    assert strays[0].cancelled()


async def forever() -> None:
    await asyncio.Event().wait()


async def test_finished_tasks_do_not_count() -> None:
    async with no_task_left_behind():
        await asyncio.create_task(asyncio.sleep(0))


async def _batch_with_hanging_progress_callback(plans: list[ItemPlan]) -> None:
    async def progress(done: int, total: int, item_id: str) -> None:
        await asyncio.Event().wait()

    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=ProcessorConfig(max_workers=2, progress_interval=1, progress_callback_timeout=None),
        progress_callback=progress,
    )
    strategy = ScriptedStrategy(plans)
    async with processor:
        for plan in plans:
            await processor.add_work(
                LLMWorkItem(item_id=plan.item_id, strategy=strategy, prompt=plan.item_id)
            )
        await processor.process_all()


async def test_the_check_passes_when_the_library_cleans_up() -> None:
    plans = make_plans(5, seed=1, max_attempts=1, weights={Step.OK: 1.0})
    async with no_task_left_behind():
        await _batch_with_hanging_progress_callback(plans)


async def test_the_check_fails_when_the_library_leaks_a_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break the library on purpose: a processor whose cleanup() forgets its callbacks."""

    async def forgetful_cleanup(self: BatchProcessor[str, str, None]) -> None:
        pass

    monkeypatch.setattr(BatchProcessor, "cleanup", forgetful_cleanup)
    plans = make_plans(5, seed=1, max_attempts=1, weights={Step.OK: 1.0})

    async def leaky_batch() -> None:
        async with no_task_left_behind():
            await _batch_with_hanging_progress_callback(plans)

    with pytest.raises(AssertionError, match=r"task\(s\) left pending: .*_guard_progress"):
        await leaky_batch()
