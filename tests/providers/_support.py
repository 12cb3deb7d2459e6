"""Helpers shared by the processor tests that drive a real SDK against a local provider server.

- :func:`config`: a processor config for real HTTP round trips: short, fixed retry waits (no
  jitter), no cooldown and no slow start, so the tests run fast and deterministically.
- :func:`run`: push prompts through a processor (one item per prompt, ``item_id`` = prompt)
  and return the batch result.
- :func:`info` and :data:`UNKNOWN`: expected :class:`ErrorInfo` values for classification tables.

The server and client fixtures stay in each test module: they are what differs from provider
to provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from async_batch_llm import (
    BatchResult,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.strategies import ErrorClassifier, ErrorInfo

T = TypeVar("T")


def config(workers: int = 1, attempts: int = 3) -> ProcessorConfig:
    """``workers`` workers, ``attempts`` attempts 10 ms apart, no cooldown, no slow start."""
    return ProcessorConfig(
        max_workers=workers,
        timeout_per_item=10.0,
        retry=RetryConfig(max_attempts=attempts, initial_wait=0.01, max_wait=0.01, jitter=False),
        rate_limit=RateLimitConfig(
            cooldown_seconds=0.0,
            slow_start_items=0,
            slow_start_initial_delay=0.0,
            slow_start_final_delay=0.0,
        ),
    )


async def run(
    strategy: LLMCallStrategy[T],
    prompts: Sequence[str],
    *,
    workers: int = 1,
    attempts: int = 3,
    classifier: ErrorClassifier | None = None,
) -> BatchResult[T, None]:
    """Process one item per prompt (its ``item_id`` is the prompt) with :func:`config`.

    Args:
        strategy: the strategy every item uses.
        prompts: the items' prompts, added in this order.
        workers: ``max_workers``.
        attempts: ``max_attempts`` per item.
        classifier: the processor's error classifier (``None``: the default one).
    """
    processor = ParallelBatchProcessor[str, T, None](
        config=config(workers, attempts), error_classifier=classifier
    )
    try:
        for prompt in prompts:
            await processor.add_work(LLMWorkItem(item_id=prompt, strategy=strategy, prompt=prompt))
        return await processor.process_all()
    finally:
        await processor.shutdown()


def info(
    category: str,
    retryable: bool,
    *,
    timeout: bool = False,
    rate_limit: bool = False,
    wait: float | None = None,
) -> ErrorInfo:
    """The :class:`ErrorInfo` a classifier is expected to return."""
    return ErrorInfo(retryable, rate_limit, timeout, category, wait)


UNKNOWN = info("unknown", True)
"""What the provider-neutral rules make of an error they do not recognise."""
