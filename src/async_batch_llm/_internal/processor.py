"""The parallel processor: its workers and what happens to one item, top to bottom.

Public home: :mod:`async_batch_llm.parallel` (``ParallelBatchProcessor``). The base it builds on
(queue, batch run, publishing, lifecycle) is :mod:`async_batch_llm._internal.batch`.

Design notes, for the hot path:

- Work is known before ``process_all()`` starts (``add_work`` is refused afterwards), so the queue
  is a plain :class:`collections.deque` that workers pop without awaiting.
- One long-lived coroutine per worker awaits the strategy directly: no task per item or attempt.
  In the common case (strategy prepared, no middleware, quota admission or dry run) the worker
  makes attempt 1 itself; anything else goes through ``_process_item`` and ``_attempt``.
- Quota admission (``_internal/quota_runtime.py``) is on only when a limit is declared or a
  strategy's rate-limit headers revealed one; until then each worker's header sink is a
  :class:`~async_batch_llm._internal.quota_runtime.HeaderDiscovery` and the fast path stays.
- Each worker bounds its calls (and its observer calls) with one reusable
  :class:`~async_batch_llm._internal.deadline.TaskDeadline` instead of an ``asyncio.timeout``,
  and its timer handle, per call.
- Events are built only when observers are attached; middleware only when configured.
- docs/benchmarks.md measures all this against plain asyncio and 0.6.0.
"""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import ResumePolicy
from async_batch_llm._internal.attempt_events import attempt_failed_data, strategy_model
from async_batch_llm._internal.backoff import is_validation_like, retry_wait
from async_batch_llm._internal.batch import (
    POST_PROCESSOR_EXECUTION_TIMEOUT,
    POST_PROCESSOR_TIMEOUT,
    PROGRESS_TASK_CANCELLATION_TIMEOUT,
    WORKER_CANCELLATION_TIMEOUT,
    WORKER_SHUTDOWN_TIMEOUT,
    BatchProcessor,
)
from async_batch_llm._internal.batch_mode import BatchModeRunner, check_batch_support
from async_batch_llm._internal.clock import Clock, LoopClock
from async_batch_llm._internal.deadline import TaskDeadline, loop_time_function
from async_batch_llm._internal.events import (
    OBSERVER_CALLBACK_TIMEOUT,
    Event,
    dispatch,
    wants_extended,
)
from async_batch_llm._internal.guardrails import (
    BudgetExceededError,
    CostFunctionError,
    Guard,
    WorkerSlot,
    item_category,
)
from async_batch_llm._internal.journal import Journal
from async_batch_llm._internal.quota_runtime import (
    Admission,
    HeaderDiscovery,
    QuotaRuntime,
    TokenEstimatorError,
    admission_declared,
)
from async_batch_llm._internal.quota_types import EstimateTooLargeError
from async_batch_llm._internal.rate_limit_headers import HEADER_SINK
from async_batch_llm._internal.retry_after import retry_after_seconds
from async_batch_llm._internal.shared_quota import make_cooldown
from async_batch_llm._internal.strategy_calls import (
    EXECUTE_TAKES_STATE,
    check_call_result,
    format_error,
    framework_timeout,
    method_accepts_state,
    require_methods,
    resume_policy,
    stray_cancellation,
)
from async_batch_llm._internal.tokens import add_usage, usage_from_exception
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._types import (
    BatchTermination,
    LLMWorkItem,
    PostProcessorFunc,
    ProgressCallbackFunc,
    RetryState,
    TContext,
    TInput,
    TokenUsage,
    TOutput,
    WorkItemResult,
)
from async_batch_llm.core.config import ProcessorConfig, RateLimitConfig
from async_batch_llm.middleware.base import Middleware
from async_batch_llm.observers.base import ExtendedEvent, ProcessingEvent, ProcessorObserver
from async_batch_llm.strategies.errors import (
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
)
from async_batch_llm.strategies.rate_limit import ExponentialBackoffStrategy, RateLimitStrategy

__all__ = [
    "POST_PROCESSOR_EXECUTION_TIMEOUT",
    "POST_PROCESSOR_TIMEOUT",
    "PROGRESS_TASK_CANCELLATION_TIMEOUT",
    "WORKER_CANCELLATION_TIMEOUT",
    "WORKER_SHUTDOWN_TIMEOUT",
    "BatchProcessor",
    "ParallelBatchProcessor",
]

logger = logging.getLogger("async_batch_llm.parallel")

SKIPPED_ERROR = "Skipped by middleware"

_UNCLASSIFIED = ErrorInfo(
    is_retryable=False, is_rate_limit=False, is_timeout=False, error_category="unknown"
)
"""What an attempt's error counts as when the error classifier itself raised."""

_REFUSED = ErrorInfo(
    is_retryable=False, is_rate_limit=False, is_timeout=False, error_category="quota"
)
"""An attempt quota admission refused (estimator failure, estimate above a whole limit)."""


class _Failure:
    """A failed attempt that the retry loop must decide about."""

    __slots__ = ("at_attempt", "category", "exc", "info")

    def __init__(
        self, exc: Exception, info: ErrorInfo, category: str, *, at_attempt: bool = False
    ) -> None:
        self.exc = exc
        self.info = info
        self.category = category  # what the item's result reports if this failure is final
        # A non-retryable, non-rate-limit error ends the item at the attempt itself, where the
        # error text keeps 500 characters instead of 200.
        self.at_attempt = at_attempt


class _Final:
    """Marks a result that must be returned as is (skips and middleware-supplied results)."""

    __slots__ = ("result", "skipped")

    def __init__(self, result: WorkItemResult[Any, Any], skipped: bool) -> None:
        self.result = result
        self.skipped = skipped


class ParallelBatchProcessor(BatchProcessor[TInput, TOutput, TContext]):
    """Process work items with N async workers, retries, a shared rate-limit cooldown and hooks.

    Args:
        max_workers: deprecated, use ``ProcessorConfig.max_workers``.
        post_processor: called once per result (success or failure); sync or async.
        timeout_per_item: deprecated, use ``ProcessorConfig.timeout_per_item``.
        rate_limit_cooldown: deprecated, use ``RateLimitConfig.cooldown_seconds``.
        config: the processor settings; defaults to ``ProcessorConfig()``.
        error_classifier: decides retryable / rate limit; defaults to ``DefaultErrorClassifier``.
        rate_limit_strategy: cooldown lengths and slow start; defaults to an
            ``ExponentialBackoffStrategy`` built from ``config.rate_limit``.
        middlewares: ``before_process`` / ``after_process`` / ``on_error`` hooks.
        observers: receive lifecycle events.
        progress_callback: ``(completed, total, item_id)`` every ``progress_interval`` items.
        clock: time source for cooldowns, backoff waits, slow start and quota admission
            (tests pass :class:`async_batch_llm.testing.clock.FakeClock`).
        artifact_store: journal every result here before it is published (see
            :mod:`async_batch_llm.artifacts`); ``None`` keeps results in memory only.
        resume: which stored results to reuse instead of calling again
            (:class:`~async_batch_llm.artifacts.ResumePolicy` or its value); needs a store.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        post_processor: PostProcessorFunc[TOutput, TContext] | None = None,
        timeout_per_item: float | None = None,
        rate_limit_cooldown: float | None = None,
        config: ProcessorConfig | None = None,
        error_classifier: ErrorClassifier | None = None,
        rate_limit_strategy: RateLimitStrategy | None = None,
        middlewares: list[Middleware[TInput, TOutput, TContext]] | None = None,
        observers: list[ProcessorObserver] | None = None,
        progress_callback: ProgressCallbackFunc | None = None,
        *,
        clock: Clock | None = None,
        artifact_store: ArtifactStore | None = None,
        resume: ResumePolicy | str = ResumePolicy.NONE,
    ) -> None:
        for name, value in (
            ("max_workers", max_workers),
            ("timeout_per_item", timeout_per_item),
            ("rate_limit_cooldown", rate_limit_cooldown),
        ):
            if value is not None:
                field = "rate_limit.cooldown_seconds" if name == "rate_limit_cooldown" else name
                warnings.warn(
                    f"ParallelBatchProcessor({name}=...) is deprecated; "
                    f"set ProcessorConfig.{field} and pass config= instead",
                    DeprecationWarning,
                    stacklevel=2,
                )
        if config is None:
            config = ProcessorConfig(
                max_workers=max_workers or 5,
                timeout_per_item=timeout_per_item or 120.0,
                rate_limit=RateLimitConfig(cooldown_seconds=rate_limit_cooldown or 300.0),
            )
        elif not isinstance(config, ProcessorConfig):
            raise TypeError(f"config must be a ProcessorConfig, got {type(config).__name__}")
        else:
            if max_workers is not None:
                config.max_workers = max_workers
            if timeout_per_item is not None:
                config.timeout_per_item = timeout_per_item
            if rate_limit_cooldown is not None:
                config.rate_limit.cooldown_seconds = rate_limit_cooldown
        config.validate()
        super().__init__(
            max_workers=config.max_workers,
            post_processor=post_processor,
            max_queue_size=config.max_queue_size,
            progress_callback=progress_callback,
            progress_callback_timeout=config.progress_callback_timeout,
        )
        if post_processor is not None and not callable(post_processor):
            raise TypeError(f"post_processor must be callable, got {post_processor!r:.100}")
        if progress_callback is not None and not callable(progress_callback):
            raise TypeError(f"progress_callback must be callable, got {progress_callback!r:.100}")
        self.config = config
        self.error_classifier: ErrorClassifier = error_classifier or DefaultErrorClassifier()
        if not callable(getattr(self.error_classifier, "classify", None)):
            raise TypeError(
                "error_classifier must have a classify(exception) -> ErrorInfo method, "
                f"got {type(self.error_classifier).__name__}"
            )
        rl = config.rate_limit
        self.rate_limit_strategy: RateLimitStrategy = (
            rate_limit_strategy
            if rate_limit_strategy is not None
            else ExponentialBackoffStrategy(
                initial_cooldown=rl.cooldown_seconds,
                backoff_multiplier=rl.backoff_multiplier,
                slow_start_items=rl.slow_start_items,
                slow_start_initial_delay=rl.slow_start_initial_delay,
                slow_start_final_delay=rl.slow_start_final_delay,
            )
        )
        self.middlewares: list[Middleware[TInput, TOutput, TContext]] = (
            middlewares if middlewares is not None else []
        )
        self.observers: list[ProcessorObserver] = observers if observers is not None else []
        self._extended = False  # set per run by _before_batch
        # Plug-ins are duck-typed; one lacking a method the processor calls is refused here,
        # not discovered (and merely logged) in the middle of a batch.
        require_methods(
            "rate_limit_strategy",
            self.rate_limit_strategy,
            ("on_rate_limit", "should_apply_slow_start"),
        )
        for index, middleware in enumerate(self.middlewares):
            require_methods(
                f"middlewares[{index}]", middleware, ("before_process", "after_process", "on_error")
            )
        for index, observer in enumerate(self.observers):
            require_methods(f"observers[{index}]", observer, ("on_event",))
        if clock is not None:
            require_methods("clock", clock, ("time", "sleep"))
        self._clock: Clock = clock if clock is not None else LoopClock()
        self._random: Callable[[], float] = random.random
        self._now: Callable[[], float] = self._clock.time  # refined by _before_batch
        self._cooldown = make_cooldown(
            config.quota_backend, self.rate_limit_strategy, self._clock, self._emit
        )
        # Quota admission of this run (None: nothing declared nor learned, the fast path).
        self._quota: QuotaRuntime | None = None
        self._discoveries: dict[int, HeaderDiscovery] = {}
        self.artifact_store = artifact_store
        self.resume = resume_policy(resume, artifact_store)
        # One reusable attempt deadline per running worker (cheaper than asyncio.timeout).
        self._deadlines: dict[int, TaskDeadline] = {}
        # This run's guardrails: fail-fast, budgets, deadlines (_internal/guardrails.py).
        self._guard = Guard(config.guardrails, self._clock, config.token_estimator)
        # Set while mode="batch" runs its jobs (worker 0); the other workers wait on it.
        self._batch_gate: asyncio.Event | None = None

    def __repr__(self) -> str:
        stats = self._stats
        return (
            f"<{type(self).__name__} workers={self.max_workers} queued={len(self._queue)} "
            f"processed={stats.processed}/{stats.total} started={self._started}>"
        )

    async def _emit(
        self, event: Event, data: dict[str, Any], deadline: TaskDeadline | None = None
    ) -> None:
        """Deliver an event; a worker passes its idle deadline to bound observers cheaply."""
        if self.observers:
            await dispatch(self.observers, event, data, OBSERVER_CALLBACK_TIMEOUT, deadline)

    async def _before_batch(self) -> None:
        config = self.config
        # Observers that asked for the events added after 0.6.0 (ExtendedEvent).
        self._extended = wants_extended(self.observers)
        self.max_workers = config.max_workers
        self._progress_interval = config.progress_interval
        self.progress_callback_timeout = config.progress_callback_timeout
        store = self.artifact_store
        self._journal = Journal(store, self.resume) if store is not None else None
        self._deferred = {}
        self._halt = None
        self._publish_queue = (
            asyncio.Queue()
            if store is not None and (self.observers or self.post_processor is not None)
            else None
        )
        self._quota = (
            QuotaRuntime.from_config(config, self._clock) if admission_declared(config) else None
        )
        if self._quota is not None:
            await self._quota.start()  # a shared backend must answer (no-op in process)
        self._guard = Guard(config.guardrails, self._clock, config.token_estimator)
        # Attempt durations read the clock twice per attempt; skip LoopClock's indirection.
        clock = self._clock
        self._now = (
            loop_time_function(asyncio.get_running_loop())
            if type(clock) is LoopClock
            else clock.time
        )
        self._batch_gate = None
        if config.mode == "batch" and not config.dry_run:
            strategies = {id(item.strategy): item.strategy for item in self._queue}
            check_batch_support(list(strategies.values()), self)
            self._batch_gate = asyncio.Event()

    async def _run_batch_mode(self, worker_id: int, gate: asyncio.Event) -> None:
        """Provider batch mode (``_internal/batch_mode.py``): the items go through jobs."""
        if worker_id != 0:
            await gate.wait()
            return
        try:
            await BatchModeRunner(self, worker_id).run()
        finally:
            gate.set()

    async def _close_batch(self) -> None:
        await self._cooldown.drain()
        if self._quota is not None:
            await self._quota.aclose()

    def _after_batch(self) -> None:
        quota = self._quota
        if quota is None:
            return
        used = sorted(quota.registry.statistics())  # the scopes whose gate an attempt used
        unused = quota.registry.unused_scopes()
        if unused and used:
            warnings.warn(
                f"ProcessorConfig.quotas sets limits for {', '.join(map(repr, unused))}, but no "
                f"item of this batch used {'that scope' if len(unused) == 1 else 'those scopes'}"
                f" (scopes used: {', '.join(map(repr, used))}); a strategy's "
                "quota_scope must match the key exactly, e.g. 'openai:gpt-4o-mini'",
                UserWarning,
                stacklevel=2,
            )

    def _start_watchers(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        seconds = self.config.guardrails.batch_timeout
        if seconds is None:
            return []
        return [group.create_task(self._guard.run_batch_timer(seconds))]

    def _termination(self) -> BatchTermination:
        return self._guard.termination or super()._termination()

    def _unstarted_failure(self) -> tuple[str, str, bool] | None:
        stop = self._guard.termination
        if stop is None:
            return super()._unstarted_failure()
        error, category = self._guard.failure(stop)
        return error, category, True

    def _enable_quota(self) -> QuotaRuntime:
        """This run's quota admission, turned on now if it was off (a limit was learned)."""
        quota = self._quota
        if quota is None:
            quota = self._quota = QuotaRuntime.from_config(self.config, self._clock)
        return quota

    # ----------------------------------------------------------------------------- worker

    async def _worker_loop(self, worker_id: int) -> None:
        if self._batch_gate is not None:  # mode="batch": worker 0 runs the jobs, then all go on
            await self._run_batch_mode(worker_id, self._batch_gate)
        observing = bool(self.observers)
        if observing:
            await self._emit(ProcessingEvent.WORKER_STARTED, {"worker_id": worker_id})
        # The worker task has its own context copy: this sink is the worker's alone.
        discovery = self._discoveries[worker_id] = HeaderDiscovery(self._enable_quota)
        HEADER_SINK.set(discovery)
        queue = self._queue
        cooldown = self._cooldown
        post = self.post_processor
        deadline = self._deadline_for(worker_id)
        config = self.config
        prepared = self._prepared_by_id
        now = self._now
        feed = self._feed
        journal = self._journal
        deferred = self._deferred
        guard = self._guard
        # While the worker is inside an item, its slot names the item, so a stop or the item's
        # own deadline can interrupt it (see _internal/guardrails.py).
        slot = guard.slot(worker_id)
        slow = bool(self.middlewares) or config.dry_run or guard.slow
        item_timeout = guard.item_timeout
        watch: asyncio.Task[None] | None = None
        while True:
            if queue:
                item = queue.popleft()
            elif feed is None or (pulled := await feed.get()) is None:
                break
            else:
                item = pulled
            if self._halt is not None or guard.termination is not None:
                queue.appendleft(item)  # the batch stopped: leave the rest to _fail_unstarted
                break
            if journal is not None and journal.replaying:
                replayed = journal.replay(item)
                if replayed is not None:
                    self._publish(replayed, journal.replay_event(replayed))
                    continue
            slot.item = item
            result = None
            if item_timeout is not None:
                watch = asyncio.get_running_loop().create_task(
                    guard.watch_item(slot, item, item_timeout)
                )
            try:
                if cooldown.paused:
                    await cooldown.wait_resumed()
                if cooldown.slow_start_active:
                    await cooldown.slow_start_delay()
                    # A new cooldown may have begun while this worker sat out its delay.
                    while cooldown.paused:
                        await cooldown.wait_resumed()
                strategy = item.strategy
                ref = prepared.get(id(strategy))
                quota = self._quota
                admission: Admission | None = None
                if (
                    ref is None
                    or ref() is not strategy
                    or slow
                    or (
                        quota is not None
                        and (admission := quota.admit_now(item.prompt, strategy)) is None
                    )
                ):
                    result = await self._process_item(item, worker_id)
                else:
                    # The common case, awaited right here: the strategy is prepared, quota
                    # admission (if on) granted at once, and only observers may run around the
                    # call (no middleware or dry run), so attempt 1 is _attempt() without its
                    # coroutine (keep the two in step). A failure continues in _process_item()
                    # as attempt 1's.
                    observers = self.observers
                    if admission is None:
                        discovery.strategy = strategy
                    elif observers:  # the admission wait goes in the item's event
                        assert quota is not None
                        quota.note_admission(worker_id, item, admission)
                    if observers:
                        try:
                            await dispatch(
                                observers,
                                ProcessingEvent.ITEM_STARTED,
                                {"item_id": item.item_id, "worker_id": worker_id},
                                OBSERVER_CALLBACK_TIMEOUT,
                                deadline,
                            )
                        except BaseException:
                            if admission is not None:  # the call never started
                                admission.cancel()
                            raise
                    started = now() if observers else 0.0
                    state = RetryState()
                    timeout = config.timeout_per_item
                    execute = strategy.execute
                    takes_state = EXECUTE_TAKES_STATE.get(type(strategy))
                    if takes_state is None or "execute" in getattr(strategy, "__dict__", ()):
                        takes_state = method_accepts_state(strategy, "execute", execute)
                    error: Exception | None = None
                    if admission is not None:
                        discovery.gate = admission.gate  # its headers go to its gate
                    deadline.start(timeout)
                    try:
                        if takes_state is True:
                            returned = await execute(item.prompt, 1, timeout, state)
                        elif takes_state:
                            returned = await cast(Any, execute)(
                                item.prompt, 1, timeout, state=state
                            )
                        else:
                            returned = await cast(Any, execute)(item.prompt, 1, timeout)
                    except asyncio.CancelledError as cancelled:
                        if deadline.stop():
                            error = framework_timeout(item.item_id, deadline, timeout, cancelled)
                        elif deadline.task.cancelling():
                            raise
                        else:
                            error = stray_cancellation(item.item_id, cancelled)
                    except Exception as call_error:
                        deadline.stop()
                        error = call_error
                    except BaseException:
                        deadline.stop()
                        raise
                    else:
                        deadline.stop()
                        if (
                            type(returned) is tuple
                            and len(returned) == 2
                            and type(returned[1]) is dict
                        ):
                            output, usage = returned
                        else:
                            try:
                                output, usage = cast(
                                    "tuple[TOutput, TokenUsage]",
                                    check_call_result(strategy, returned),
                                )
                            except TypeError as shape_error:
                                error = shape_error
                    finally:
                        discovery.gate = None
                    if error is None:
                        if admission is not None:
                            admission.settle(usage)
                        result = WorkItemResult(
                            item.item_id, True, output, None, item.context, usage
                        )
                        if observers:
                            data = {
                                "item_id": item.item_id,
                                "duration": now() - started,
                                "tokens": usage.get("total_tokens", 0),
                                "input_tokens": usage.get("input_tokens", 0),
                                "output_tokens": usage.get("output_tokens", 0),
                            }
                            model = strategy_model(strategy)
                            if model is not None:
                                data["model"] = model
                            if quota is not None:
                                data.update(quota.item_event_fields(worker_id, item))
                            if journal is not None:  # published once committed
                                deferred[item.item_id] = (ProcessingEvent.ITEM_COMPLETED, data)
                            else:
                                await dispatch(
                                    observers,
                                    ProcessingEvent.ITEM_COMPLETED,
                                    data,
                                    OBSERVER_CALLBACK_TIMEOUT,
                                    deadline,
                                )
                        if cooldown.consecutive:
                            cooldown.reset_consecutive()
                    else:
                        if admission is not None:
                            admission.settle(usage_from_exception(error))
                        result = await self._process_item(item, worker_id, (state, error))
            except asyncio.CancelledError:
                why = slot.interrupt
                if why is None:
                    raise
                slot.interrupt = None
                if slot.task.uncancel() > 0:
                    raise  # the batch itself is being cancelled as well
                result = await self._interrupted(item, slot, why, result)
            except Exception as exc:  # a bug of ours or a misbehaving hook: fail this item only
                logger.exception("internal error while processing item %s", item.item_id)
                result = WorkItemResult(
                    item_id=item.item_id,
                    success=False,
                    error=format_error(exc, 200),
                    context=item.context,
                    token_usage={},
                    error_category="unknown",
                )
            finally:
                if watch is not None:
                    watch.cancel()
                    watch = None
            slot.item = None
            if slot.interrupt is not None:  # the item swallowed our cancellation: take it back
                slot.withdraw()
            if journal is not None:
                journal.submit(item, result, deferred.pop(item.item_id, None))
            else:
                self._record(result)
                if post is not None:
                    await self._run_post_processor(result)
        deadline.close()
        if self._deadlines.get(worker_id) is deadline:
            del self._deadlines[worker_id]
        if guard.slots.get(worker_id) is slot:
            del guard.slots[worker_id]
        if self._discoveries.get(worker_id) is discovery:
            del self._discoveries[worker_id]
        if observing:
            await self._emit(ProcessingEvent.WORKER_STOPPED, {"worker_id": worker_id})

    async def _interrupted(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        slot: WorkerSlot,
        why: BatchTermination,
        made: WorkItemResult[TOutput, TContext] | None,
    ) -> WorkItemResult[TOutput, TContext]:
        """The result of an item a stop or its deadline interrupted; its spend is kept."""
        if made is not None:  # the call had succeeded; an observer was being told
            return made
        result: WorkItemResult[TOutput, TContext] = self._guard.interrupted_result(item, slot, why)
        assert result.error is not None
        await self._item_failed(item.item_id, result.error.split(":", 1)[0])
        return result

    def _deadline_for(self, worker_id: int) -> TaskDeadline:
        """The attempt deadline of the calling worker task (created on first use)."""
        deadline = self._deadlines.get(worker_id)
        task = asyncio.current_task()
        assert task is not None  # workers and items always run inside a task
        if deadline is None or deadline.task is not task:
            if deadline is not None and not deadline.running:
                deadline.close()  # left over from an earlier run's worker
            deadline = self._deadlines[worker_id] = TaskDeadline(task, asyncio.get_running_loop())
        return deadline

    # ----------------------------------------------------------------------------- one item

    async def _process_item(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        worker_id: int,
        failed_first: tuple[RetryState, Exception] | None = None,
    ) -> WorkItemResult[TOutput, TContext]:
        """Prepare the strategy, run attempts until one is final, and account every token.

        ``failed_first``: the worker already made attempt 1 itself (see ``_worker_loop``) and it
        raised; carry on from that failure with the item's ``RetryState``.
        """
        guard = self._guard
        slot = guard.slot(worker_id)
        slot.spent_for = item
        slot.spent = None
        slot.cost = 0.0
        result = await self._run_attempts(item, worker_id, slot, failed_first)
        if guard.priced:
            result.cost = slot.cost
        return result

    async def _run_attempts(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        worker_id: int,
        slot: WorkerSlot,
        failed_first: tuple[RetryState, Exception] | None,
    ) -> WorkItemResult[TOutput, TContext]:
        strategy = item.strategy
        if failed_first is None:
            state = RetryState()
            try:
                if not self._is_prepared(strategy):
                    await self._ensure_prepared(strategy)
            except Exception as exc:
                category = item_category(exc, self._classify(exc, item.item_id))
                if category in self._guard.abort_on:
                    self._guard.fail_fast(category, item.item_id, exc)
                return await self._fail_item(item, exc, None, worker_id, category)
        else:
            state = failed_first[0]

        guard = self._guard
        max_attempts = self.config.retry.max_attempts
        spent: dict[str, int] | None = None  # tokens of failed attempts so far (spec D9)
        attempt = 0
        outcome: WorkItemResult[TOutput, TContext] | _Failure | _Final
        while True:
            attempt += 1
            if failed_first is not None and attempt == 1:
                outcome = await self._attempt_failed(
                    item, strategy, failed_first[1], 1, state, worker_id
                )
            else:
                if attempt > 1 and self._cooldown.paused:
                    await self._cooldown.wait_resumed()
                stop = guard.termination
                if stop is not None:  # no attempt starts once the batch has stopped
                    stopped = guard.stopped_result(item, stop)
                    if spent:
                        stopped.token_usage = _merged_usage(spent, {})
                    assert stopped.error is not None
                    await self._item_failed(
                        item.item_id, stopped.error.split(":", 1)[0], worker_id, item
                    )
                    return stopped
                outcome = await self._attempt(item, attempt, state, worker_id)
            if type(outcome) is WorkItemResult:
                if spent:
                    outcome.token_usage = _merged_usage(spent, outcome.token_usage)
                return outcome
            if type(outcome) is _Final:
                final = cast(WorkItemResult[TOutput, TContext], outcome.result)
                if spent:  # a skipped retry: the attempts that ran still cost tokens (D9)
                    final.token_usage = _merged_usage(spent, final.token_usage)
                return final
            failure = cast(_Failure, outcome)
            error = failure.exc
            if spent is None:
                spent = slot.spent = {}
            add_usage(spent, usage_from_exception(error))
            if failure.at_attempt:
                return await self._fail_item(
                    item, error, spent, worker_id, failure.category, limit=500
                )
            if not failure.info.is_retryable or attempt >= max_attempts:
                return await self._fail_item(item, error, spent, worker_id, failure.category)
            retry = self.config.retry
            wait = retry_wait(
                attempt,
                retry,
                validation_like=is_validation_like(error, failure.info),
                rand=self._random,
            )
            if wait > 0:
                await self._clock.sleep(wait)

    async def _fail_item(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        exc: Exception,
        spent: dict[str, int] | None,
        worker_id: int,
        category: str,
        limit: int = 200,
    ) -> WorkItemResult[TOutput, TContext]:
        """The item's final failure: middleware ``on_error`` first, then a failure result."""
        if self.middlewares:
            supplied = await self._middleware_on_error(item, exc)
            if supplied is not None:
                if spent:  # the failed attempts still cost tokens (D9)
                    supplied.token_usage = _merged_usage(spent, supplied.token_usage)
                if not supplied.success:
                    if supplied.error_category is None:
                        supplied.error_category = category
                    await self._item_failed(item.item_id, type(exc).__name__, worker_id, item)
                return supplied
        usage: TokenUsage
        if spent is not None:  # attempts ran: report what they cost, zeros included
            usage = {
                "input_tokens": spent.get("input_tokens", 0),
                "output_tokens": spent.get("output_tokens", 0),
                "total_tokens": spent.get("total_tokens", 0),
                "cached_input_tokens": spent.get("cached_input_tokens", 0),
            }
        else:  # prepare() failed: no attempt ran
            usage = {}
        await self._item_failed(item.item_id, type(exc).__name__, worker_id, item)
        return WorkItemResult(
            item_id=item.item_id,
            success=False,
            error=format_error(exc, limit),
            context=item.context,
            token_usage=usage,
            error_category=category,
        )

    async def _item_failed(
        self, item_id: str, error_type: str, worker_id: int | None = None, item: object = None
    ) -> None:
        """``ITEM_FAILED`` now, or once the item's record is committed when journaling.

        With ``worker_id`` and ``item``, the payload gains the item's quota keys (if admitted).
        """
        if self.observers:
            data: dict[str, Any] = {"item_id": item_id, "error_type": error_type}
            if self._quota is not None and worker_id is not None:
                data.update(self._quota.item_event_fields(worker_id, item))
            if self._guard.priced and worker_id is not None:
                slot = self._guard.slots.get(worker_id)
                if slot is not None and slot.spent_for is item:
                    data["cost"] = slot.cost
            if self._journal is not None:
                self._deferred[item_id] = (ProcessingEvent.ITEM_FAILED, data)
            else:
                await self._emit(ProcessingEvent.ITEM_FAILED, data)

    async def _attempt(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        attempt: int,
        state: RetryState,
        worker_id: int,
    ) -> WorkItemResult[TOutput, TContext] | _Failure | _Final:
        """One call of the strategy: a success result, a final result, or a failure to decide."""
        observers = self.observers
        observing = bool(observers)
        now = self._now
        deadline = self._deadline_for(worker_id)  # checked against the running task
        if observing:
            # The two per-attempt events go straight to dispatch (same as _emit, one coroutine
            # fewer), bounded by this worker's idle deadline instead of a timer per observer.
            await dispatch(
                observers,
                ProcessingEvent.ITEM_STARTED,
                {"item_id": item.item_id, "worker_id": worker_id},
                OBSERVER_CALLBACK_TIMEOUT,
                deadline,
            )
        started = now() if observing else 0.0  # only ITEM_COMPLETED reports a duration
        work = item
        if self.middlewares:
            replaced = await self._middleware_before(item)
            if replaced is None:
                if self._extended:
                    skipped = attempt_failed_data(
                        item.item_id, worker_id, attempt, item.strategy, None, None
                    )
                    await self._emit(ExtendedEvent.ATTEMPT_FAILED, skipped, deadline)
                return _Final(
                    WorkItemResult(
                        item_id=item.item_id,
                        success=False,
                        error=SKIPPED_ERROR,
                        context=item.context,
                    ),
                    skipped=True,
                )
            work = replaced
        strategy = work.strategy
        ledger = self._guard.ledger
        charge = None
        if ledger is not None:  # budgets: reserve this attempt's estimate before it starts
            try:
                charge = await ledger.reserve(work.prompt, strategy, attempt, state)
            except BudgetExceededError as over:
                self._guard.stop("budget_exceeded", str(over), None, item.item_id)
                failure = _Failure(over, _REFUSED, "budget_exceeded", at_attempt=True)
                return await self._ended_without_result(item, worker_id, attempt, failure)
            except (TokenEstimatorError, CostFunctionError) as refused:
                failure = _Failure(refused, _UNCLASSIFIED, "unknown", at_attempt=True)
                return await self._ended_without_result(item, worker_id, attempt, failure)
        quota = self._quota
        admission: Admission | None = None
        sink_token = None
        if quota is not None:
            try:
                admission = await self._admit(quota, work, attempt, state)
            except (TokenEstimatorError, EstimateTooLargeError) as refused:
                if charge is not None:
                    ledger.release(charge)  # type: ignore[union-attr]  # set with charge
                failure = _Failure(refused, _REFUSED, "bad_request", at_attempt=True)
                return await self._ended_without_result(item, worker_id, attempt, failure)
            if self.observers:  # the admission wait goes in the item's event
                quota.note_admission(worker_id, item, admission)
            sink_token = HEADER_SINK.set(admission.gate.observe_headers)
        else:
            discovery = self._discoveries.get(worker_id)
            if discovery is not None:
                discovery.strategy = strategy
        config = self.config
        slot = self._guard.slots.get(worker_id) if charge is not None else None
        if slot is not None:
            slot.calling = True  # a budget stop lets this call finish: it is paid for
        try:
            if config.dry_run:
                output, usage = check_call_result(strategy, await strategy.dry_run(work.prompt))
            else:
                timeout = config.timeout_per_item
                execute = strategy.execute
                # Same semantics as `async with asyncio.timeout(timeout)`, without a timer per
                # attempt: cancel execute() at the deadline, turn that into TimeoutError.
                takes_state = EXECUTE_TAKES_STATE.get(type(strategy))
                if takes_state is None or "execute" in getattr(strategy, "__dict__", ()):
                    takes_state = method_accepts_state(strategy, "execute", execute)
                deadline.start(timeout)
                try:
                    if takes_state is True:
                        returned = await execute(work.prompt, attempt, timeout, state)
                    elif takes_state:
                        returned = await cast(Any, execute)(
                            work.prompt, attempt, timeout, state=state
                        )
                    else:
                        returned = await cast(Any, execute)(work.prompt, attempt, timeout)
                except asyncio.CancelledError as cancelled:
                    if deadline.stop():
                        error = framework_timeout(item.item_id, deadline, timeout, cancelled)
                        raise error from error.__cause__
                    if deadline.task.cancelling():
                        raise
                    raise stray_cancellation(item.item_id, cancelled) from cancelled
                except BaseException:
                    deadline.stop()
                    raise
                deadline.stop()
                if type(returned) is tuple and len(returned) == 2 and type(returned[1]) is dict:
                    output, usage = returned  # the common shape, checked inline
                else:
                    output, usage = check_call_result(strategy, returned)
        except Exception as exc:
            if admission is not None:
                admission.settle(usage_from_exception(exc))
            if charge is not None:
                ran = isinstance(exc, TimeoutError)
                spent = usage_from_exception(exc)
                unpriced = self._guard.settle(charge, spent, worker_id, ran)
                if unpriced is not None:
                    failure = _Failure(unpriced, _UNCLASSIFIED, "unknown", at_attempt=True)
                    return await self._ended_without_result(
                        item, worker_id, attempt, failure, spent
                    )
            return await self._attempt_failed(item, strategy, exc, attempt, state, worker_id)
        except BaseException:
            if charge is not None:  # cancelled mid-call: it may have been billed
                ledger.settle(charge, None, ran=True)  # type: ignore[union-attr]
            raise
        finally:
            if sink_token is not None:
                HEADER_SINK.reset(sink_token)
            if slot is not None:
                slot.calling = False
        if admission is not None:
            admission.settle(usage)
        if charge is not None:
            unpriced = self._guard.settle(charge, usage, worker_id, False)
            if unpriced is not None:
                failure = _Failure(unpriced, _UNCLASSIFIED, "unknown", at_attempt=True)
                return await self._ended_without_result(item, worker_id, attempt, failure, usage)

        # Positional: half the cost of keywords on the hot path. Field order is
        # (item_id, success, output, error, context, token_usage, gemini_safety_ratings).
        result: WorkItemResult[TOutput, TContext] = WorkItemResult(
            item.item_id,
            True,
            output,
            None,
            item.context,
            usage,  # type: ignore[arg-type]  # the strategy's mapping, shape checked above
        )
        if self.middlewares:
            result = await self._middleware_after(result)
        if observing:
            data = {
                "item_id": item.item_id,
                "duration": now() - started,
                "tokens": usage.get("total_tokens", 0),
                "input_tokens": usage.get("input_tokens", 0),
                "output_tokens": usage.get("output_tokens", 0),
            }
            model = strategy_model(strategy)
            if model is not None:
                data["model"] = model
            if quota is not None:
                data.update(quota.item_event_fields(worker_id, item))
            if slot is not None and self._guard.priced:
                data["cost"] = slot.cost  # the item's, every attempt so far
            if self._journal is not None:  # published once committed
                self._deferred[item.item_id] = (ProcessingEvent.ITEM_COMPLETED, data)
            else:
                await dispatch(
                    observers,
                    ProcessingEvent.ITEM_COMPLETED,
                    data,
                    OBSERVER_CALLBACK_TIMEOUT,
                    deadline,
                )
        cooldown = self._cooldown
        if cooldown.consecutive:
            cooldown.reset_consecutive()
        return result

    async def _ended_without_result(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        worker_id: int,
        attempt: int,
        failure: _Failure,
        usage: Mapping[str, Any] | None = None,
    ) -> _Failure:
        """Tell observers an attempt ended without a call's error to classify; return it.

        ``usage``: what the call reported, when it ran (else read from the exception).
        """
        if self._extended:
            data = attempt_failed_data(
                item.item_id, worker_id, attempt, item.strategy, failure.exc, failure.info, usage
            )
            await self._emit(ExtendedEvent.ATTEMPT_FAILED, data, self._deadline_for(worker_id))
        return failure

    async def _admit(
        self,
        quota: QuotaRuntime,
        work: LLMWorkItem[TInput, TOutput, TContext],
        attempt: int,
        state: RetryState,
    ) -> Admission:
        """Reserve this attempt in its quota scope, after any shared cooldown.

        A cooldown that began while the reservation waited is waited out too, the reservation
        given back meanwhile (the call has not started) and taken again afterwards. The
        admission's ``waited`` sums the time spent waiting in the gate.
        """
        cooldown = self._cooldown
        waited = 0.0
        while True:
            if cooldown.paused:
                await cooldown.wait_resumed()
            admission = await quota.admit(work.prompt, work.strategy, attempt, state)
            waited += admission.waited
            if not cooldown.paused:
                admission.waited = waited
                return admission
            admission.cancel()

    async def _attempt_failed(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        strategy: LLMCallStrategy[Any],
        exc: Exception,
        attempt: int,
        state: RetryState,
        worker_id: int,
    ) -> WorkItemResult[TOutput, TContext] | _Failure | _Final:
        """Tell the strategy, classify, join the cooldown on a rate limit; decide the outcome."""
        on_error = strategy.on_error
        try:
            # Bounded like the call itself: a hanging on_error must not hang the item.
            async with asyncio.timeout(self.config.timeout_per_item):
                takes_state = method_accepts_state(strategy, "on_error", on_error)
                if takes_state is True:
                    await on_error(exc, attempt, state)
                elif takes_state:
                    await cast(Any, on_error)(exc, attempt, state=state)
                else:
                    await cast(Any, on_error)(exc, attempt)
        except Exception:  # TimeoutError included
            logger.exception("strategy on_error failed for item %s", item.item_id)
        info = self._classify(exc, item.item_id)
        category = item_category(exc, info)
        abort = category in self._guard.abort_on
        if self._extended:
            data = attempt_failed_data(item.item_id, worker_id, attempt, strategy, exc, info)
            if abort or category == "insufficient_quota":
                data["retryable"] = False  # ends the item whatever the classifier said
            await self._emit(ExtendedEvent.ATTEMPT_FAILED, data)
        if abort:  # fail fast: stop the whole batch now
            self._guard.fail_fast(category, item.item_id, exc)
            return _Failure(exc, info, category, at_attempt=True)
        if category == "insufficient_quota":  # out of credit: waiting or retrying cannot help
            return _Failure(exc, info, category, at_attempt=True)
        if info.is_rate_limit:
            self._stats.rate_limit_count += 1
            if self.observers:
                await self._emit(
                    ProcessingEvent.RATE_LIMIT_HIT,
                    {"item_id": item.item_id, "worker_id": worker_id},
                )
            await self._cooldown.on_rate_limit(worker_id, retry_after_seconds(exc))
            return _Failure(exc, info, category)
        return _Failure(exc, info, category, at_attempt=not info.is_retryable)

    def _classify(self, exc: Exception, item_id: str) -> ErrorInfo:
        try:
            return self.error_classifier.classify(exc)
        except Exception:
            # A broken classifier must not cost the item its result or its token count: the
            # attempt's error stands, and is not retried (nothing says it is safe to).
            logger.exception("error classifier failed on %r for item %s", exc, item_id)
            return _UNCLASSIFIED

    # ----------------------------------------------------------------------------- middleware

    async def _middleware_before(
        self, item: LLMWorkItem[TInput, TOutput, TContext]
    ) -> LLMWorkItem[TInput, TOutput, TContext] | None:
        current = item
        for middleware in self.middlewares:
            try:
                # Bounded like a call: a hanging hook must not hang the item.
                async with asyncio.timeout(self.config.timeout_per_item):
                    returned = await middleware.before_process(current)
            except Exception:  # TimeoutError included
                logger.exception("middleware %r before_process failed", middleware)
                continue
            if returned is None:
                return None
            current = returned
        return current

    async def _middleware_after(
        self, result: WorkItemResult[TOutput, TContext]
    ) -> WorkItemResult[TOutput, TContext]:
        for middleware in reversed(self.middlewares):
            try:
                async with asyncio.timeout(self.config.timeout_per_item):
                    result = await middleware.after_process(result)
            except Exception:  # TimeoutError included: the result so far stands
                logger.exception("middleware %r after_process failed", middleware)
        return result

    async def _middleware_on_error(
        self, item: LLMWorkItem[TInput, TOutput, TContext], exc: Exception
    ) -> WorkItemResult[TOutput, TContext] | None:
        for middleware in self.middlewares:
            try:
                # Bounded like a call: a hanging hook must not hang the item.
                async with asyncio.timeout(self.config.timeout_per_item):
                    supplied = await middleware.on_error(item, exc)
            except Exception:  # TimeoutError included
                logger.exception("middleware %r on_error failed", middleware)
                continue
            if supplied is not None:
                return supplied
        return None


def _merged_usage(spent: dict[str, int], final: Mapping[str, Any]) -> TokenUsage:
    """Usage of a successful item that needed retries: every attempt counted (spec D9)."""
    total = dict(spent)
    add_usage(total, final)
    merged: TokenUsage = {
        "input_tokens": total.get("input_tokens", 0),
        "output_tokens": total.get("output_tokens", 0),
        "total_tokens": total.get("total_tokens", 0),
    }
    if total.get("cached_input_tokens"):
        merged["cached_input_tokens"] = total["cached_input_tokens"]
    return merged
