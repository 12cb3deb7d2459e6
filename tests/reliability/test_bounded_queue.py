"""A bounded queue keeps memory bounded and never blocks ``add_work`` forever (guarantee G7).

0.6.0 awaited a full queue before ``process_all()`` had started, which nothing could ever drain:
a deadlock. ``add_work`` now either queues the item at once or refuses it at once.
"""

from __future__ import annotations

import asyncio

import pytest

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor
from async_batch_llm.testing.clock import FakeClock

from ._support import ScriptedStrategy, Step, drive, make_plans, run_scripted_batch, scripted_config


@pytest.mark.parametrize("bound", [1, 7, 100])
async def test_add_work_beyond_the_bound_fails_at_once_and_the_batch_runs(bound: int) -> None:
    plans = make_plans(bound * 3, seed=bound, max_attempts=2)
    strategy_plans = plans[:bound]
    config = scripted_config(workers=4, max_attempts=2)
    config.max_queue_size = bound
    config.validate()
    clock = FakeClock()
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=config, clock=clock
    )
    strategy = ScriptedStrategy(plans)
    accepted: list[str] = []
    refused: list[str] = []
    async with processor:
        for plan in plans:
            work: LLMWorkItem[str, str, None] = LLMWorkItem(
                item_id=plan.item_id, strategy=strategy, prompt=plan.item_id
            )
            if len(accepted) < bound:
                # Never blocks: a deadline far beyond what a queue operation takes.
                await asyncio.wait_for(processor.add_work(work), timeout=2.0)
                accepted.append(plan.item_id)
            else:
                with pytest.raises(RuntimeError, match=rf"full \(max_queue_size={bound}\)"):
                    await asyncio.wait_for(processor.add_work(work), timeout=2.0)
                refused.append(plan.item_id)
            # Memory stays bounded: never more queued items than the bound.
            assert (await processor.get_stats())["total"] <= bound
        assert accepted == [p.item_id for p in strategy_plans]
        assert len(refused) == 2 * bound
        result = await drive(clock, processor.process_all(), real_timeout=30.0)
    assert sorted(r.item_id for r in result.results) == sorted(accepted)


async def test_a_batch_as_large_as_its_bound_runs_to_completion() -> None:
    plans = make_plans(50, seed=3, max_attempts=3, weights={Step.OK: 0.6, Step.RETRYABLE: 0.4})
    config = scripted_config(workers=4, max_attempts=3)
    config.max_queue_size = 50
    run = await run_scripted_batch(plans, config)
    assert run.verdict().problems() == {}
    assert run.result.total_items == 50
