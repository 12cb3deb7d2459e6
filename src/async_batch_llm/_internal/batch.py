"""The base of the processors: the queue, running a batch, publishing results, hooks' lifecycles.

:class:`BatchProcessor` owns what every processor shares: ``add_work`` and the work queue (or a
lazy :class:`~async_batch_llm._internal.source.Feed`), ``process_all()`` and the task group of
workers, the publish step (journal commit first when there is an artifact store, then observers,
results, progress callbacks and the post-processor), strategy ``prepare``/``cleanup`` and
shutdown. What happens to one item lives in :mod:`async_batch_llm._internal.processor`.

Public home: :mod:`async_batch_llm.base`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, Self, cast

from async_batch_llm._internal.artifacts.records import ArtifactStoreError
from async_batch_llm._internal.deadline import TaskDeadline
from async_batch_llm._internal.journal import ItemEvent, Journal, Published
from async_batch_llm._internal.source import Feed
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._types import (
    COMPLETED,
    BatchResult,
    BatchTermination,
    LLMWorkItem,
    PostProcessorFunc,
    ProcessingStats,
    ProgressCallbackFunc,
    TContext,
    TInput,
    TOutput,
    WorkItemResult,
)
from async_batch_llm.observers.base import ExtendedEvent, ProcessingEvent

__all__ = [
    "POST_PROCESSOR_EXECUTION_TIMEOUT",
    "POST_PROCESSOR_TIMEOUT",
    "PROGRESS_TASK_CANCELLATION_TIMEOUT",
    "STRATEGY_CLEANUP_TIMEOUT",
    "STRATEGY_PREPARE_TIMEOUT",
    "WORKER_CANCELLATION_TIMEOUT",
    "WORKER_SHUTDOWN_TIMEOUT",
    "BatchProcessor",
]

logger = logging.getLogger("async_batch_llm.parallel")
base_logger = logging.getLogger("async_batch_llm.base")

WORKER_CANCELLATION_TIMEOUT = 2.0
"""Seconds ``cleanup()`` waits for cancelled workers."""
WORKER_SHUTDOWN_TIMEOUT = 30.0
"""Seconds allowed for workers to exit once the queue is drained."""
POST_PROCESSOR_EXECUTION_TIMEOUT = 75.0
"""Limit in seconds on an async post-processor."""
PROGRESS_TASK_CANCELLATION_TIMEOUT = 2.0
"""Seconds ``cleanup()`` waits for cancelled progress-callback tasks."""
POST_PROCESSOR_TIMEOUT = 90.0
"""Outer limit in seconds around post-processing."""
STRATEGY_CLEANUP_TIMEOUT = 30.0
"""Limit in seconds on each strategy's ``cleanup()``; an overrun is logged and abandoned."""
STRATEGY_PREPARE_TIMEOUT = 300.0
"""Limit in seconds on each strategy's ``prepare()``; an overrun fails the item that awaited it
(and the next item of that strategy tries again)."""
_PROGRESS_START_WAIT = 1.0
"""How long ``process_all()`` waits, at most, for scheduled progress callbacks to begin."""
_PROGRESS_SETTLE_WAIT = 0.02
"""Seconds a callback running in a thread gets, once begun, to finish before it counts as begun."""


def _strong_ref(obj: object) -> Callable[[], object]:
    """A callable returning ``obj``: a strong stand-in for ``weakref.ref`` where that fails."""
    return lambda: obj


class BatchProcessor(ABC, Generic[TInput, TOutput, TContext]):
    """Base of the processors: the work queue, ``add_work``, ``process_all``, cleanup and hooks.

    Subclasses implement the per-worker loop and per-item processing.

    Args:
        max_workers: number of concurrent workers.
        post_processor: called once per result (success or failure); sync or async.
        max_queue_size: most items the queue may hold, 0 for no limit.
        progress_callback: ``(completed, total, item_id)``, every ``progress_interval`` items.
        progress_callback_timeout: seconds before a running callback is abandoned, or ``None``.
    """

    def __init__(
        self,
        max_workers: int = 5,
        post_processor: PostProcessorFunc[TOutput, TContext] | None = None,
        max_queue_size: int = 0,
        progress_callback: ProgressCallbackFunc | None = None,
        progress_callback_timeout: float | None = None,
    ) -> None:
        self.max_workers = max_workers
        self.post_processor = post_processor
        self.max_queue_size = max_queue_size
        self.progress_callback = progress_callback
        self.progress_callback_timeout = progress_callback_timeout
        self._queue: deque[LLMWorkItem[TInput, TOutput, TContext]] = deque()
        self._item_ids: set[str] = set()
        self._started = False
        self._stats = ProcessingStats()
        self._results: list[WorkItemResult[TOutput, TContext]] = []
        self._worker_tasks: set[asyncio.Task[None]] = set()
        self._progress_tasks: set[asyncio.Task[None]] = set()
        self._progress_started: list[asyncio.Future[None]] = []
        self._progress_async_cache: tuple[ProgressCallbackFunc, bool] | None = None
        self._prepared_by_id: dict[int, Callable[[], object]] = {}
        self._needs_cleanup: list[weakref.ref[LLMCallStrategy[Any]] | LLMCallStrategy[Any]] = []
        self._prepare_lock = asyncio.Lock()
        self._progress_interval = 10
        # Where published results go: the result list of process_all(), or a stream's channel.
        self._sink: Callable[[WorkItemResult[TOutput, TContext]], None] = self._results.append
        # A lazy source of items (process_stream) read after the queue, or None.
        self._feed: Feed[TInput, TOutput, TContext] | None = None
        # Set by ParallelBatchProcessor when it has an artifact store (see _internal/journal.py).
        self._journal: Journal[TInput, TOutput, TContext] | None = None
        # Item events held back until the item's record is committed (journaling only).
        self._deferred: dict[str, ItemEvent] = {}
        # Committed results waiting for observers / the post-processor (journaling only).
        self._publish_queue: (
            asyncio.Queue[tuple[WorkItemResult[Any, Any], ItemEvent | None] | None] | None
        ) = None
        # Why the batch stopped taking items (the store failed), or None.
        self._halt: ArtifactStoreError | None = None

    # ----------------------------------------------------------------------------- queueing

    async def add_work(self, work_item: LLMWorkItem[TInput, TOutput, TContext]) -> None:
        """Queue one item.

        Raises:
            RuntimeError: once ``process_all()`` has been called, or when a bounded queue is full
                (nothing can drain it before ``process_all()``).
            TypeError: if ``work_item`` is not an :class:`LLMWorkItem`.
            ValueError: if another queued item already has this ``item_id``.
        """
        if self._started:
            raise RuntimeError(
                "Cannot add work after process_all() has started: a processor runs one batch; "
                "create a new processor for more work"
            )
        if not isinstance(work_item, LLMWorkItem):
            raise TypeError(
                f"work_item must be an LLMWorkItem, got {type(work_item).__name__}: "
                f"{work_item!r:.100}"
            )
        item_id = work_item.item_id
        if item_id in self._item_ids:
            raise ValueError(
                f"item_id {item_id!r} was already added to this processor; item ids must be "
                "unique within a batch (each item yields exactly one result)"
            )
        if 0 < self.max_queue_size <= len(self._queue):
            raise RuntimeError(
                f"work queue is full (max_queue_size={self.max_queue_size}) and workers only run "
                "inside process_all(), so nothing can drain it; use max_queue_size=0 (unbounded) "
                "or at least the batch size"
            )
        self._item_ids.add(item_id)
        self._queue.append(work_item)
        self._stats.total += 1

    # ----------------------------------------------------------------------------- running

    async def process_all(self) -> BatchResult[TOutput, TContext]:
        """Process every queued item with ``max_workers`` workers and return all results.

        Returns:
            One :class:`WorkItemResult` per queued item, in completion order.

        Raises:
            asyncio.CancelledError: when cancelled; every worker has stopped by then.
        """
        self._started = True
        self._stats = ProcessingStats(total=len(self._queue), start_time=time.time())
        self._results = []
        self._sink = self._results.append
        await self._run_batch()
        batch = BatchResult(results=list(self._results), termination=self._termination())
        halt = self._halt
        if halt is not None:
            halt.partial_result = batch
            raise halt
        return batch

    async def _run_batch(self) -> None:
        """Run the workers over the queue (then the feed, if any) and publish every result."""
        start_time = self._stats.start_time
        await self._before_batch()
        await self._emit(
            ProcessingEvent.BATCH_STARTED,
            {"total": self._stats.total, "max_workers": self.max_workers, "start_time": start_time},
        )
        journal = self._journal
        if journal is not None:
            journal.start(asyncio.get_running_loop(), self._on_committed, self._on_write_failed)
        try:
            async with asyncio.TaskGroup() as group:
                publish_queue = self._publish_queue
                publishers = (
                    [group.create_task(self._publisher()) for _ in range(self.max_workers)]
                    if publish_queue is not None
                    else []
                )
                watchers = self._start_watchers(group)
                async with asyncio.TaskGroup() as workers:
                    for worker_id in range(self.max_workers):
                        task = workers.create_task(self._worker_loop(worker_id))
                        self._worker_tasks.add(task)
                        task.add_done_callback(self._worker_tasks.discard)
                for watcher in watchers:
                    watcher.cancel()
                await self._fail_unstarted()
                if journal is not None:
                    await journal.drain()
                for _ in publishers:
                    assert publish_queue is not None
                    publish_queue.put_nowait(None)
        except BaseException as exc:
            # Spec D10: a cancelled batch leaves no task of ours running, callbacks included.
            await self._cancel_progress_tasks()
            stats = self._stats
            await self._emit(
                ExtendedEvent.BATCH_ABORTED,
                {
                    "processed": stats.processed,
                    "total": stats.total,
                    "duration": time.time() - (start_time or 0.0),
                    "error_type": type(exc).__name__,
                },
            )
            raise
        finally:
            self._queue.clear()
            if journal is not None:
                # What the workers handed over was paid for: commit it even when cancelled.
                await journal.close()
            await self._close_batch()
        self._after_batch()
        await self._await_progress_started()
        stats = self._stats
        await self._emit(
            ProcessingEvent.BATCH_COMPLETED,
            {
                "processed": stats.processed,
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "total": stats.total,
                "total_tokens": stats.total_tokens,
                "cached_input_tokens": stats.cached_input_tokens,
                "duration": time.time() - (start_time or 0.0),
            },
        )

    async def _before_batch(self) -> None:
        """Set up per-run state (subclass hook)."""

    async def _close_batch(self) -> None:
        """After the workers stopped, however the run ended: release what the run holds."""

    def _after_batch(self) -> None:
        """Check the finished run, before ``BATCH_COMPLETED`` (subclass hook)."""

    def _start_watchers(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Start tasks that run beside the workers (a batch deadline); cancelled once they end."""
        return []

    def _termination(self) -> BatchTermination:
        """Why the batch ended (subclass hook: guardrails add their own reasons)."""
        halt = self._halt
        if halt is not None:
            return BatchTermination("cancelled", str(halt), "cancelled")
        return COMPLETED

    def _unstarted_failure(self) -> tuple[str, str, bool] | None:
        """How items the batch never started fail: ``(error, category, emit ITEM_FAILED)``."""
        halt = self._halt
        if halt is None:
            return None
        return f"NotStarted: the batch stopped before this item: {halt}"[:500], "cancelled", False

    async def _emit(
        self,
        event: ProcessingEvent | ExtendedEvent,
        data: dict[str, Any],
        deadline: TaskDeadline | None = None,
    ) -> None:
        """Deliver an event to observers (subclass hook; the base has none)."""

    @abstractmethod
    async def _worker_loop(self, worker_id: int) -> None:
        """Take items off the queue until it is empty."""

    @abstractmethod
    async def _process_item(
        self, item: LLMWorkItem[TInput, TOutput, TContext], worker_id: int
    ) -> WorkItemResult[TOutput, TContext]:
        """Turn one item into its one result."""

    def _record(self, result: WorkItemResult[TOutput, TContext]) -> None:
        """Store a result and update the statistics; schedule the progress callback if due."""
        self._sink(result)
        stats = self._stats
        stats.processed += 1
        if result.success:
            stats.succeeded += 1
        else:
            stats.failed += 1
            error = result.error
            if error:
                key = error.split(":", 1)[0]
                stats.error_counts[key] = stats.error_counts.get(key, 0) + 1
        usage = result.token_usage
        if usage:
            stats.total_input_tokens += usage.get("input_tokens", 0)
            stats.total_output_tokens += usage.get("output_tokens", 0)
            stats.total_tokens += usage.get("total_tokens", 0)
            stats.cached_input_tokens += usage.get("cached_input_tokens", 0)
        if stats.processed % self._progress_interval == 0:
            base_logger.info(
                "progress: %d/%d processed (%d succeeded, %d failed)",
                stats.processed,
                stats.total,
                stats.succeeded,
                stats.failed,
            )
            if self.progress_callback is not None:
                self._schedule_progress(stats.processed, stats.total, result.item_id)

    async def _run_post_processor(self, result: WorkItemResult[TOutput, TContext]) -> None:
        """Run the post-processor; its faults and overruns are logged, never propagated."""
        post = self.post_processor
        if post is None:
            return
        try:
            returned = post(result)
            if returned is not None and inspect.isawaitable(returned):
                limit = min(POST_PROCESSOR_EXECUTION_TIMEOUT, POST_PROCESSOR_TIMEOUT)
                async with asyncio.timeout(limit):
                    await returned
        except TimeoutError:
            base_logger.warning("post-processor timed out for item %s", result.item_id)
        except Exception:
            base_logger.exception("post-processor failed for item %s", result.item_id)

    # ----------------------------------------------------------------------------- publishing

    def _publish(self, result: WorkItemResult[TOutput, TContext], event: ItemEvent | None) -> None:
        """Make a committed (or replayed) result visible to the caller and the hooks.

        Without observers or a post-processor that is synchronous; otherwise the publisher
        tasks deliver the held-back event, record the result and run the post-processor, in
        that order (the order of a run without a store).
        """
        queue = self._publish_queue
        if queue is None:
            self._record(result)
        else:
            queue.put_nowait((result, event))

    def _on_committed(self, batch: list[Published]) -> None:
        """The writer committed these records (runs on the loop, in submission order)."""
        publish = self._publish
        for entry in batch:
            if isinstance(entry, tuple):
                publish(entry[0], entry[1])
            else:
                publish(entry, None)

    def _on_write_failed(self, exc: BaseException, batch: list[Published]) -> None:
        """The store could not commit: stop taking items; still return every result made."""
        if self._halt is None:
            store = self._journal.store if self._journal is not None else None
            halt = ArtifactStoreError(
                f"the artifact store {store!r} failed while writing, so the batch stopped: "
                f"{type(exc).__name__}: {exc}. Results committed before stay readable; the "
                "results not committed are still returned (ArtifactStoreError.partial_result "
                "for process_all())"
            )
            halt.__cause__ = exc
            self._halt = halt
            logger.error("%s", halt)
        self._on_committed(batch)  # published all the same: each result goes to the caller

    async def _publisher(self) -> None:
        queue = self._publish_queue
        assert queue is not None
        post = self.post_processor
        while (entry := await queue.get()) is not None:
            result, event = entry
            if event is not None:
                await self._emit(event[0], event[1])
            self._record(result)
            if post is not None:
                await self._run_post_processor(result)

    async def _fail_unstarted(self) -> None:
        """Give each item the batch stopped before starting a failure result of its own."""
        stop = self._unstarted_failure()
        if stop is None:
            return
        error, category, emit = stop
        leftovers: list[LLMWorkItem[TInput, TOutput, TContext]] = list(self._queue)
        self._queue.clear()
        if self._feed is not None:
            leftovers.extend(self._feed.take_waiting())
        queued = self._publish_queue is not None
        for item in leftovers:
            failed = WorkItemResult[TOutput, TContext](
                item_id=item.item_id,
                success=False,
                error=error,
                context=item.context,
                error_category=category,
            )
            event: ItemEvent | None = None
            if emit:  # spec D3: every failed item is observable
                data = {"item_id": item.item_id, "error_type": error.split(":", 1)[0]}
                if queued:
                    event = (ProcessingEvent.ITEM_FAILED, data)
                else:
                    await self._emit(ProcessingEvent.ITEM_FAILED, data)
            self._publish(failed, event)

    # ----------------------------------------------------------------------------- progress

    def _progress_is_async(self, callback: ProgressCallbackFunc) -> bool:
        """Whether the callback runs as a task (else in a thread); decided once per callback."""
        cached = self._progress_async_cache
        if cached is not None and cached[0] is callback:
            return cached[1]
        is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._progress_async_cache = (callback, is_async)
        return is_async

    def _schedule_progress(self, completed: int, total: int, item_id: str) -> None:
        callback = self.progress_callback
        assert callback is not None
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        if self._progress_is_async(callback):
            started.set_result(None)
            work: Awaitable[Any] = cast(Awaitable[Any], callback(completed, total, item_id))
        else:

            def run_in_thread() -> object:
                # "Begun" must mean callers can see the callback's first effects, but the
                # thread keeps running alongside the loop once it signals. So `started`
                # resolves when the callback returns, or _PROGRESS_SETTLE_WAIT after it began,
                # whichever is first: quick callbacks are complete, slow ones barely wait.
                loop.call_soon_threadsafe(
                    loop.call_later, _PROGRESS_SETTLE_WAIT, _set_if_pending, started
                )
                try:
                    return callback(completed, total, item_id)
                finally:
                    with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                        loop.call_soon_threadsafe(_set_if_pending, started)

            work = asyncio.to_thread(run_in_thread)
        task = loop.create_task(self._guard_progress(work, item_id))
        self._progress_tasks.add(task)
        task.add_done_callback(self._progress_tasks.discard)
        if not started.done():
            self._progress_started.append(started)

    async def _guard_progress(self, work: Awaitable[Any], item_id: str) -> None:
        timeout = self.progress_callback_timeout
        try:
            if timeout is None:
                await work
            else:
                async with asyncio.timeout(timeout):
                    await work
        except TimeoutError:
            base_logger.warning(
                "progress callback exceeded %ss (after item %s) and was abandoned", timeout, item_id
            )
        except Exception as exc:
            base_logger.warning("progress callback failed (after item %s): %r", item_id, exc)

    async def _await_progress_started(self) -> None:
        """Let scheduled callbacks begin before ``process_all()`` returns."""
        if not self._progress_tasks:
            return
        await asyncio.sleep(0)
        pending = [f for f in self._progress_started if not f.done()]
        self._progress_started = []
        if pending:
            await asyncio.wait(pending, timeout=_PROGRESS_START_WAIT)

    # ----------------------------------------------------------------------------- strategies

    def _is_prepared(self, strategy: LLMCallStrategy[Any]) -> bool:
        # An identity lookup that needs no new weak reference. A dead strategy's id may be
        # reused by a new object; its weak reference then returns None, so that entry is stale
        # and harmless. Strategies that cannot be weakly referenced are held strongly, so their
        # ids stay theirs.
        ref = self._prepared_by_id.get(id(strategy))
        return ref is not None and ref() is strategy

    async def _ensure_prepared(self, strategy: LLMCallStrategy[Any]) -> None:
        """Await ``strategy.prepare()`` once per strategy object; prepares are serialised."""
        async with self._prepare_lock:
            if self._is_prepared(strategy):
                return
            # Bounded: a prepare() that hangs fails its item instead of hanging the batch.
            limit = STRATEGY_PREPARE_TIMEOUT
            try:
                async with asyncio.timeout(limit) as scope:
                    await strategy.prepare()
            except TimeoutError as exc:
                if not scope.expired():
                    raise
                raise TimeoutError(
                    f"{type(strategy).__name__}.prepare() did not finish within {limit} s "
                    "(STRATEGY_PREPARE_TIMEOUT)"
                ) from exc
            try:
                self._prepared_by_id[id(strategy)] = weakref.ref(strategy)
                self._needs_cleanup.append(weakref.ref(strategy))
            except TypeError:  # not weak-referenceable: hold it strongly
                self._prepared_by_id[id(strategy)] = _strong_ref(strategy)
                self._needs_cleanup.append(strategy)

    async def _cleanup_strategies(self) -> None:
        """Await ``cleanup()`` once on every strategy prepared since the last call."""
        pending, self._needs_cleanup = self._needs_cleanup, []
        for entry in pending:
            strategy = entry() if isinstance(entry, weakref.ref) else entry
            if strategy is None:
                continue
            try:
                async with asyncio.timeout(STRATEGY_CLEANUP_TIMEOUT):
                    await strategy.cleanup()
            except Exception:  # TimeoutError included: a hanging cleanup is abandoned
                base_logger.exception("strategy cleanup failed for %r", strategy)

    # ----------------------------------------------------------------------------- lifecycle

    async def get_stats(self) -> dict[str, Any]:
        """A snapshot of the processing statistics (see :class:`ProcessingStats`)."""
        return self._stats.copy()

    async def cleanup(self) -> None:
        """Cancel running workers and progress callbacks and drop queued items.

        Does not call strategy ``cleanup()`` (see :meth:`shutdown`). Safe to call repeatedly.
        """
        workers = [t for t in self._worker_tasks if not t.done()]
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers, timeout=WORKER_CANCELLATION_TIMEOUT)
        self._queue.clear()
        await self._cancel_progress_tasks()

    async def _cancel_progress_tasks(self) -> None:
        progress = [t for t in self._progress_tasks if not t.done()]
        for task in progress:
            task.cancel()
        if progress:
            await asyncio.wait(progress, timeout=PROGRESS_TASK_CANCELLATION_TIMEOUT)

    async def shutdown(self) -> None:
        """Run strategy cleanup (once per prepared strategy), then :meth:`cleanup`."""
        try:
            await self._cleanup_strategies()
        finally:
            await self.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        # Literal[False] tells type checkers that exceptions are never swallowed.
        await self.shutdown()
        return False


def _set_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
