"""Streaming runs: results as they complete, over a source read lazily, at flat memory.

:func:`process_stream` builds a :class:`~async_batch_llm.parallel.ParallelBatchProcessor`,
points it at a :class:`~async_batch_llm._internal.source.Feed` instead of its queue and at a
:class:`_Channel` instead of its result list, and hands back a :class:`ResultStream`.

The running batch (a task of the stream) holds the channel and the feed, never the stream
object itself. So when a consumer breaks out of ``async for``, the stream's last reference goes
at once and :meth:`ResultStream.__del__` cancels every worker synchronously: no call starts after
the ``break``. ``aclose()`` (or ``async with``) does the same and also waits for the cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, Literal, Self

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import ResumePolicy
from async_batch_llm._internal.batch_mode import check_batch_support
from async_batch_llm._internal.processor import ParallelBatchProcessor
from async_batch_llm._internal.source import Feed, PromptSource
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._types import BatchResult, ProcessingStats, TOutput, WorkItemResult
from async_batch_llm.core.config import ProcessorConfig

__all__ = ["ResultStream", "process_prompts", "process_stream"]

_RESULT_BUFFER = 64
"""Results a stream may hold for its consumer beyond the items waiting and in flight."""
_JOURNAL_BUFFER = 16_384
"""The same with an artifact store: results wait for their group commit (about 50 ms), and
workers must not stall on a full buffer meanwhile. Still a constant, so memory stays flat."""


class _Channel:
    """Results published by the batch, waiting for the consumer."""

    __slots__ = ("results", "wake")

    def __init__(self) -> None:
        self.results: deque[WorkItemResult[Any, Any]] = deque()
        self.wake = asyncio.Event()

    def push(self, result: WorkItemResult[Any, Any]) -> None:
        self.results.append(result)
        self.wake.set()


async def _run(processor: ParallelBatchProcessor[Any, Any, Any], feed: Feed[Any, Any, Any]) -> None:
    """The batch behind a stream: the feeder and the workers, then strategy cleanup."""
    try:
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(feed.run())
            try:
                await processor._run_batch()
            finally:
                feed.close()
                feeder.cancel()
    finally:
        await processor.shutdown()


class ResultStream(AsyncIterator[WorkItemResult[TOutput, Any]], Generic[TOutput]):
    """Results of a streaming run in completion order; see :func:`process_stream`.

    Iterating starts the run. Leaving early (``break``, an exception, :meth:`aclose`) stops it:
    no call starts afterwards, calls in flight are cancelled, strategies are cleaned up.

    Raises (from iteration, after every result already made has been yielded):
        TypeError / ValueError: an element of the source was not a valid prompt, or repeated an
            item id still in flight.
        ArtifactStoreError: the artifact store failed while writing.
        Exception: whatever the source itself raised.
    """

    def __init__(
        self,
        processor: ParallelBatchProcessor[Any, TOutput, Any],
        source: PromptSource,
        strategy: LLMCallStrategy[TOutput] | None,
        *,
        keep_positions: bool = False,
    ) -> None:
        config = processor.config
        workers = config.max_workers
        max_waiting = config.max_queue_size or 2 * workers
        buffer = _JOURNAL_BUFFER if processor.artifact_store is not None else _RESULT_BUFFER
        self._processor = processor
        self._feed: Feed[Any, TOutput, Any] = Feed(
            source,
            strategy,
            max_waiting=max_waiting,
            capacity=max_waiting + workers + max(buffer, workers),
            on_item=_item_counter(processor),
            keep_positions=keep_positions,
        )
        self._channel = _Channel()
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._closed = False

    @property
    def processor(self) -> ParallelBatchProcessor[Any, TOutput, Any]:
        """The processor running this stream (for ``get_stats()``)."""
        return self._processor

    @property
    def positions(self) -> dict[str, int] | None:
        """Each item's position in the source, when the stream was asked to keep them."""
        return self._feed.positions

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running" if self._task else "not started"
        return f"<ResultStream {state} {self._feed!r}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WorkItemResult[TOutput, Any]:
        channel = self._channel
        if self._closed:
            raise StopAsyncIteration  # like an async generator after aclose()
        if self._task is None:
            self._start()
        task = self._task
        assert task is not None
        while not channel.results:
            if task.done():
                self._finish(task)
            channel.wake.clear()
            await channel.wake.wait()
        result: WorkItemResult[TOutput, Any] = channel.results.popleft()
        self._feed.release(result.item_id)
        return result

    def _start(self) -> None:
        processor = self._processor
        if processor._started:
            raise RuntimeError("a processor runs one batch; this one has run already")
        processor._started = True
        processor._stats = ProcessingStats(total=0, start_time=time.time())
        processor._feed = self._feed
        processor._sink = self._channel.push
        task = asyncio.get_running_loop().create_task(_run(processor, self._feed))
        wake = self._channel.wake
        task.add_done_callback(lambda _: wake.set())
        self._task = task

    def _finish(self, task: asyncio.Task[None]) -> None:
        """The run ended and every result was taken: end the iteration the way the run did."""
        self._finished = True
        if task.cancelled():
            raise asyncio.CancelledError
        error = task.exception()
        if error is not None:
            raise error
        if self._feed.error is not None:
            raise self._feed.error
        halt = self._processor._halt
        if halt is not None:
            raise halt
        raise StopAsyncIteration

    def _stop(self) -> bool:
        """Cancel the run at once (synchronously); ``True`` if it was still running."""
        self._finished = self._closed = True
        task = self._task
        if task is None or task.done():
            return False
        self._feed.close()
        for worker in list(self._processor._worker_tasks):
            worker.cancel()
        task.cancel()
        return True

    async def aclose(self) -> None:
        """Stop the run if it is still going and wait until it has cleaned up."""
        task = self._task
        if self._stop() and task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: a failure after the consumer left is not news

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        await self.aclose()
        return False

    def __del__(self) -> None:
        # A `break` out of `async for` drops the last reference right here: stop new calls now.
        with contextlib.suppress(Exception):  # the loop may already be closed
            self._stop()


def _item_counter(processor: ParallelBatchProcessor[Any, Any, Any]) -> Callable[[], None]:
    """Counts items read into the processor's total (holds the processor, not the stream)."""

    def count() -> None:
        processor._stats.total += 1

    return count


def process_stream(
    strategy: LLMCallStrategy[TOutput] | None,
    prompts: PromptSource,
    *,
    config: ProcessorConfig | None = None,
    artifact_store: ArtifactStore | None = None,
    resume: ResumePolicy | str = ResumePolicy.NONE,
    **processor_kwargs: Any,
) -> ResultStream[TOutput]:
    """Process a lazily read source and yield each result as soon as it is published.

    Args:
        strategy: calls the model for every element that is not an ``LLMWorkItem``.
        prompts: an ``Iterable`` or ``AsyncIterable`` of prompts (``str``; item ids ``"0"``,
            ``"1"``, … by position), ``(item_id, prompt)`` pairs or ``LLMWorkItem``\\ s. Read one
            element at a time: at most ``config.max_queue_size`` items (``2 * max_workers`` when
            0) wait for a worker, and a slow consumer slows the reading.
        config: the processor settings (``ProcessorConfig()`` when ``None``).
        artifact_store: journal every result before it is yielded (and replay from it).
        resume: which stored results to reuse (a
            :class:`~async_batch_llm.artifacts.ResumePolicy`).
        **processor_kwargs: any other ``ParallelBatchProcessor`` keyword (``observers``,
            ``post_processor``, ``middlewares``, ``error_classifier``, ``clock``, …).

    Returns:
        An async iterator of :class:`WorkItemResult` in completion order. Item ids must be unique
        while in flight (repeats of finished ids are not remembered, so memory stays flat).

    Raises:
        TypeError, ValueError: bad arguments, at once (config, store, resume, the source type).
    """
    processor: ParallelBatchProcessor[Any, TOutput, Any] = ParallelBatchProcessor(
        config=config, artifact_store=artifact_store, resume=resume, **processor_kwargs
    )
    return ResultStream(processor, prompts, strategy)


async def process_prompts(
    strategy: LLMCallStrategy[TOutput] | None,
    prompts: PromptSource,
    *,
    preserve_order: bool = False,
    config: ProcessorConfig | None = None,
    artifact_store: ArtifactStore | None = None,
    resume: ResumePolicy | str = ResumePolicy.NONE,
    mode: Literal["online", "batch"] | None = None,
    **processor_kwargs: Any,
) -> BatchResult[TOutput, Any]:
    """Process every prompt of ``prompts`` and return all results in one :class:`BatchResult`.

    The same as collecting :func:`process_stream`; results are in completion order, or in the
    order of the source with ``preserve_order=True``. ``mode`` overrides ``config.mode``
    (``"batch"``: through the provider's batch API, see docs/batch-mode.md).

    Raises:
        TypeError: ``mode="batch"`` with a strategy that has no batch support (before any
            prompt is read or sent).
    """
    if mode is not None:
        config = dataclasses.replace(config if config is not None else ProcessorConfig(), mode=mode)
    if config is not None and config.mode == "batch" and strategy is not None:
        check_batch_support([strategy], None)
    results: list[WorkItemResult[TOutput, Any]] = []
    processor: ParallelBatchProcessor[Any, TOutput, Any] = ParallelBatchProcessor(
        config=config, artifact_store=artifact_store, resume=resume, **processor_kwargs
    )
    stream = ResultStream(processor, prompts, strategy, keep_positions=preserve_order)
    async with stream:
        async for result in stream:
            results.append(result)
    positions = stream.positions
    if positions is not None:
        results.sort(key=lambda r: positions.get(r.item_id, 0))
    return BatchResult(results=results, termination=processor._termination())
