"""Provider batch mode (``ProcessorConfig(mode="batch")``): items through batch jobs, top to bottom.

One runner per ``process_all()``. Worker 0 runs it while the other workers wait; afterwards
every worker carries on with its ordinary loop, which then only sees the items the runner put
back for online calls (``batch_fallback="online"``). A round:

1. every pending item becomes one request line (``strategy.batch_line``); a line longer than
   the provider's per-line limit fails its item with the limit in the message;
2. lines are grouped by backend (provider and client) and group (OpenAI: the model), and each
   group is cut into jobs within the backend's :class:`BatchLimits`;
3. every job is submitted, then polled with backoff (``poll_interval`` x1.5 up to
   ``max_poll_interval``, on the processor's clock) until it is terminal;
4. each job's result lines are mapped back by ``custom_id``: an answer becomes the item's
   ``WorkItemResult`` (tokens, cost at the batch price), an error is classified like an online
   one; retryable errors and lines the job never ran (expired, cancelled) go to the next round
   (or online), until ``retry.max_attempts`` rounds were spent on the item.

A stop (batch timeout, fail-fast, budget) cancels the jobs still running, downloads what they
finished and fails the rest like a stopped online batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.guardrails import (
    Charge,
    CostFunctionError,
    item_category,
    model_name,
)
from async_batch_llm._internal.tokens import usage_from_exception
from async_batch_llm._strategies.batch_api import (
    BatchBackend,
    BatchLine,
    BatchLineExpiredError,
    BatchLineMissingError,
    JobStatus,
    LineOutcome,
    supports_batch,
)
from async_batch_llm._types import BatchTermination, LLMWorkItem, TokenUsage, WorkItemResult
from async_batch_llm.observers.base import ExtendedEvent, ProcessingEvent

if TYPE_CHECKING:
    from async_batch_llm._internal.processor import ParallelBatchProcessor

__all__ = ["BatchModeError", "BatchModeRunner", "check_batch_support"]

logger = logging.getLogger("async_batch_llm.batch_mode")

_BACKOFF = 1.5
_MAX_POLL_ERRORS = 10
"""Consecutive failed status reads after which a job's lines fail with the last error."""
_CANCEL_WAIT = 120.0
"""Clock seconds a stopped batch waits for its cancelled jobs to settle."""


class BatchModeError(TypeError):
    """``mode="batch"`` was asked of a strategy (or a setting) that cannot do it."""


def check_batch_support(
    strategies: Sequence[object], processor: ParallelBatchProcessor[Any, Any, Any] | None
) -> None:
    """Refuse, before anything is submitted, what batch mode cannot run.

    Raises:
        BatchModeError: a strategy without batch support, or middlewares configured.
    """
    for strategy in strategies:
        if not supports_batch(strategy):
            raise _unsupported(strategy)
    if processor is not None and processor.middlewares:
        raise BatchModeError(
            "ProcessorConfig(mode='batch') does not run middlewares; remove them or use "
            "mode='online'"
        )


def _unsupported(strategy: object) -> BatchModeError:
    reason = getattr(strategy, "batch_unavailable", None)
    why = (
        reason
        if isinstance(reason, str) and reason
        else ("no batch_backend, batch_line and batch_output methods")
    )
    return BatchModeError(
        "ProcessorConfig(mode='batch') needs strategies with batch support (OpenAIStrategy, "
        f"AnthropicStrategy, GeminiStrategy over a GeminiModel); {type(strategy).__name__} has "
        f"none ({why}). Use mode='online' for it"
    )


@dataclass
class _Pending:
    item: LLMWorkItem[Any, Any, Any]
    rounds: int = 0
    spent: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    last_error: Exception | None = None


@dataclass
class _Job:
    backend: BatchBackend
    key: str = ""  # the job's tag and its entry in the artifact store
    lines: dict[str, _Pending] = field(default_factory=dict)  # custom_id -> its item
    requests: list[BatchLine] = field(default_factory=list)
    job_id: str | None = None
    status: JobStatus | None = None
    interval: float = 0.0
    next_at: float = 0.0
    poll_errors: int = 0
    error: Exception | None = None  # the job itself failed (submit, polling, validation)
    submitted_at: float = 0.0

    @property
    def done(self) -> bool:
        return self.error is not None or (self.status is not None and self.status.done)


class BatchModeRunner:
    """Runs one batch's items through provider batch jobs (see the module docstring)."""

    def __init__(self, processor: ParallelBatchProcessor[Any, Any, Any], worker_id: int) -> None:
        self.p = processor
        self.worker_id = worker_id
        self.clock = processor._clock
        self.guard = processor._guard
        self.max_rounds = processor.config.retry.max_attempts
        self.online = processor.config.batch_fallback == "online"
        self._line_counter = 0
        self.active: list[_Job] = []
        self._run_tag = uuid.uuid4().hex[:12]
        self._job_counter = 0
        # With an artifact store: each job's line map is saved before it is submitted, so a
        # resumed run polls the jobs it already has (``_adopt``) instead of submitting again.
        journal = processor._journal
        store = processor.artifact_store if journal is not None else None
        self.store = store if store is not None and store.supports_batch_jobs else None
        self.open_jobs: dict[str, dict[str, Any]] = {}
        self.adoptable: dict[tuple[str, str], tuple[str, str]] = {}
        if self.store is not None and journal is not None and journal.replaying:
            for key, text in self.store.load_batch_jobs().items():
                entry = json.loads(text)
                if entry.get("state") == "collected":
                    continue
                self.open_jobs[key] = entry
                for custom_id, (item_id, fingerprint) in entry["lines"].items():
                    self.adoptable[(item_id, fingerprint)] = (key, custom_id)

    # ----------------------------------------------------------------------------- run

    async def run(self) -> None:
        """Process every item; online fallbacks go back on the queue for the workers."""
        p = self.p
        leftover: list[_Pending] = []  # items no job finished: the batch stopped
        fallback: list[_Pending] = []
        # A lazy source (process_stream) holds at most feed.capacity unreleased items: take
        # them in waves of that size, each finished (and published) before the next.
        while wave := await self._take_items():
            leftover, wave_fallback = await self._rounds(wave)
            if p._feed is not None:
                for entry in wave_fallback:  # their feed slots must be freed before the next wave
                    leftover.extend(await self._online(entry))
            else:
                fallback.extend(wave_fallback)
            if leftover or self.guard.termination is not None or p._halt is not None:
                break
        stop = self.guard.termination
        for entry in [*leftover, *fallback]:
            if stop is not None:
                await self._finish(entry, self._stopped_result(entry, stop))
            else:
                p._queue.append(entry.item)  # online fallback; or _fail_unstarted (store halt)

    async def _rounds(self, pending: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """Rounds of jobs until every item is final; return ``(unfinished, online fallback)``."""
        p = self.p
        slot = self.guard.slot(self.worker_id)
        slot.item = self  # a stop (batch timeout, fail-fast) interrupts this task
        fallback: list[_Pending] = []
        try:
            while pending and self.guard.termination is None and p._halt is None:
                again = await self._round(pending)
                if self.online:
                    fallback.extend(again)
                    again = []
                pending = again
        except asyncio.CancelledError:
            why = slot.interrupt
            if why is None or slot.task.uncancel() > 0:
                await self._cancel_jobs_quietly()
                raise
            slot.interrupt = None
            await self._stopped(why)
            return [], fallback
        finally:
            slot.item = None
        return pending, fallback

    async def _online(self, entry: _Pending) -> list[_Pending]:
        """Send one fallback item online now (lazy sources); ``[entry]`` if the batch stopped."""
        p = self.p
        if self.guard.termination is not None or p._halt is not None:
            return [entry]
        result = await p._process_item(entry.item, self.worker_id)
        journal = p._journal
        if journal is not None:
            journal.submit(entry.item, result, p._deferred.pop(entry.item.item_id, None))
        else:
            p._record(result)
            if p.post_processor is not None:
                await p._run_post_processor(result)
        return []

    async def _take_items(self) -> list[_Pending]:
        """The next wave of items to send: not replayed from the store, at most a feed's
        capacity; ``[]`` once there are none left."""
        p = self.p
        journal = p._journal
        feed = p._feed
        while True:
            items: list[LLMWorkItem[Any, Any, Any]] = list(p._queue)
            p._queue.clear()
            if feed is not None:
                while len(items) < feed.capacity and (pulled := await feed.get()) is not None:
                    items.append(pulled)
            pending = []
            for item in items:
                if journal is not None and journal.replaying:
                    replayed = journal.replay(item)
                    if replayed is not None:
                        p._publish(replayed, journal.replay_event(replayed))
                        continue
                pending.append(_Pending(item))
            if pending or not items or feed is None:
                return pending
            # the whole wave was replayed: take the next one

    async def _round(self, pending: list[_Pending]) -> list[_Pending]:
        """Submit one job per group and size limit, wait for all, map results back."""
        adopted, fresh = await self._adopt(pending)
        planned = await self._plan(fresh)
        jobs = [*adopted, *planned]
        self.active = jobs
        for job in planned:
            await self._submit(job)
        await self._wait(jobs)
        again: list[_Pending] = []
        for job in jobs:
            again.extend(await self._collect(job))
            await self._save(job, "collected")
        self.active = []
        refused = [job for job in jobs if job.job_id is None and job.error is not None]
        if again and refused:  # a job could not be submitted: do not resubmit at once
            await self.clock.sleep(max(job.backend.poll_interval for job in refused))
        return again

    async def _adopt(self, pending: list[_Pending]) -> tuple[list[_Job], list[_Pending]]:
        """Split off the items a job of an earlier run already holds: that job is polled."""
        if not self.adoptable:
            return [], pending
        journal = self.p._journal
        assert journal is not None
        jobs: dict[str, _Job] = {}
        fresh: list[_Pending] = []
        for entry in pending:
            found = self.adoptable.pop((entry.item.item_id, journal.fingerprint(entry.item)), None)
            strategy: Any = entry.item.strategy
            if found is None or not supports_batch(strategy):
                fresh.append(entry)
                continue
            key, custom_id = found
            job = jobs.get(key)
            if job is None:
                job = jobs[key] = _Job(strategy.batch_backend(), key)
                job.job_id = self.open_jobs[key].get("job_id")
            job.lines[custom_id] = entry
            entry.rounds = max(entry.rounds, 1)
        now = self.clock.time()
        adopted = []
        for job in jobs.values():
            if job.job_id is None:  # the run crashed while submitting: did the job get made?
                try:
                    job.job_id = await job.backend.find(job.key)
                except Exception as exc:
                    logger.warning("looking for batch job %s failed (%r)", job.key, exc)
            if job.job_id is None:
                for entry in job.lines.values():
                    entry.rounds -= 1  # never sent: this round plans it afresh
                fresh.extend(job.lines.values())
                continue
            await self._save(job, "submitted")
            job.interval = job.backend.poll_interval
            job.next_at = now  # read its state at once
            job.submitted_at = now
            adopted.append(job)
        return adopted, fresh

    async def _save(self, job: _Job, state: str) -> None:
        """Commit the job's entry (line map, id, state) to the artifact store, if any."""
        store = self.store
        journal = self.p._journal
        if store is None or journal is None or not job.key:
            return
        if state == "collected":
            await journal.drain()  # its results are committed before the job is let go
        entry = {
            "provider": job.backend.provider,
            "job_id": job.job_id,
            "state": state,
            "lines": {
                custom_id: [item.item.item_id, journal.fingerprint(item.item)]
                for custom_id, item in job.lines.items()
            },
        }
        text = json.dumps(entry, separators=(",", ":"))
        await asyncio.to_thread(store.save_batch_job, job.key, text)

    # ----------------------------------------------------------------------------- jobs

    async def _plan(self, pending: list[_Pending]) -> list[_Job]:
        groups: dict[
            tuple[Hashable, str], tuple[BatchBackend, list[tuple[BatchLine, _Pending]]]
        ] = {}
        for entry in pending:
            strategy: Any = entry.item.strategy
            entry.rounds += 1
            self._line_counter += 1
            custom_id = f"abl-{self._run_tag}-{self._line_counter}"  # unique across runs
            if not supports_batch(strategy):  # an item of a lazy source
                await self._fail(entry, _unsupported(strategy), "bad_request")
                continue
            try:
                backend: BatchBackend = strategy.batch_backend()
                line: BatchLine = strategy.batch_line(custom_id, entry.item.prompt)
            except Exception as exc:
                await self._fail(entry, exc, "bad_request")
                continue
            limit = backend.limits.line_limit()
            if line.size > limit:
                await self._fail(
                    entry,
                    ValueError(
                        f"the request takes {line.size} bytes, more than the {limit} bytes one "
                        f"line of a {backend.provider} batch job may take"
                    ),
                    "bad_request",
                )
                continue
            key = (backend.key, line.group)
            groups.setdefault(key, (backend, []))[1].append((line, entry))
        jobs: list[_Job] = []
        for backend, lines in groups.values():
            limits = backend.limits
            job = _Job(backend)
            size = 0
            for line, entry in lines:
                if job.lines and (
                    len(job.lines) >= limits.max_requests or size + line.size > limits.max_bytes
                ):
                    jobs.append(job)
                    job, size = _Job(backend), 0
                job.lines[line.custom_id] = entry
                job.requests.append(line)
                size += line.size
            if job.lines:
                jobs.append(job)
        return jobs

    async def _submit(self, job: _Job) -> None:
        self._job_counter += 1
        job.key = f"{self._run_tag}-{self._job_counter}"
        await self._save(job, "submitting")  # before the provider sees it (never sent twice)
        try:
            job.job_id = await job.backend.submit(job.requests, job.key)
        except Exception as exc:
            job.error = exc
            await self._save(job, "collected")
            return
        await self._save(job, "submitted")
        job.submitted_at = self.clock.time()
        job.interval = job.backend.poll_interval
        job.next_at = job.submitted_at + job.interval
        await self._job_event(ExtendedEvent.BATCH_JOB_SUBMITTED, job)

    async def _wait(self, jobs: list[_Job]) -> None:
        while True:
            running = [job for job in jobs if not job.done]
            if not running:
                return
            now = self.clock.time()
            soonest = min(job.next_at for job in running)
            if soonest > now:
                await self.clock.sleep(soonest - now)
                now = self.clock.time()
            for job in running:
                if job.next_at <= now:
                    await self._poll(job, now)

    async def _poll(self, job: _Job, now: float) -> None:
        assert job.job_id is not None
        try:
            status = await job.backend.status(job.job_id)
        except Exception as exc:
            job.poll_errors += 1
            logger.warning("reading batch job %s failed (%r)", job.job_id, exc)
            if job.poll_errors >= _MAX_POLL_ERRORS:
                job.error = exc
        else:
            job.poll_errors = 0
            before = job.status
            job.status = status
            if not status.done and (
                before is None
                or (before.state, before.completed, before.failed)
                != (status.state, status.completed, status.failed)
            ):
                await self._job_event(ExtendedEvent.BATCH_JOB_PROGRESS, job)
        job.interval = min(job.interval * _BACKOFF, job.backend.max_poll_interval)
        job.next_at = now + job.interval

    async def _collect(self, job: _Job) -> list[_Pending]:
        """Map a finished job's lines back to their items; return the ones to send again."""
        again: list[_Pending] = []
        outcomes: dict[str, LineOutcome] = {}
        error = job.error
        if error is None and job.status is not None and job.status.state == "failed":
            error = BatchJobFailedError(
                f"{job.backend.provider} batch job {job.job_id} failed: {job.status.error}"
            )
        if error is None:
            assert job.job_id is not None
            for attempt in range(1, _MAX_POLL_ERRORS + 1):
                try:
                    outcomes = {o.custom_id: o for o in await job.backend.results(job.job_id)}
                except Exception as exc:  # a failed download: try again, the lines are paid for
                    logger.warning("downloading batch job %s failed (%r)", job.job_id, exc)
                    if attempt == _MAX_POLL_ERRORS:
                        error = exc
                    else:
                        await self.clock.sleep(job.backend.poll_interval)
                else:
                    break
        if job.job_id is not None:
            await self._job_event(ExtendedEvent.BATCH_JOB_COMPLETED, job)
        for custom_id, entry in job.lines.items():
            outcome = outcomes.get(custom_id)
            if error is not None:
                failure: Exception = error
            elif outcome is None:
                state = job.status.state if job.status is not None else "unknown"
                failure = (
                    BatchLineExpiredError(f"the batch job ended ({state}) before this line ran")
                    if state in ("expired", "cancelled")
                    else BatchLineMissingError(f"batch job {job.job_id} returned no result")
                )
            elif outcome.error is not None:
                failure = outcome.error
            else:
                assert outcome.body is not None
                try:
                    output, usage = entry.item.strategy.batch_output(outcome.body)  # type: ignore[attr-defined]
                except Exception as exc:
                    failure = exc
                else:
                    await self._succeed(entry, output, usage, job)
                    continue
            if await self._retry_or_fail(entry, failure, job):
                again.append(entry)
        return again

    async def _retry_or_fail(self, entry: _Pending, exc: Exception, job: _Job) -> bool:
        """Account a failed line; return whether the item goes to the next round."""
        usage = usage_from_exception(exc)
        if usage:
            self._spend(entry, usage)
        info = self.p._classify(exc, entry.item.item_id)
        category = item_category(exc, info)
        not_run = isinstance(exc, BatchLineExpiredError | BatchLineMissingError)
        retryable = not_run or info.is_retryable or info.is_rate_limit or info.is_timeout
        entry.last_error = exc
        if category in self.guard.abort_on:
            self.guard.fail_fast(category, entry.item.item_id, exc)
        if not_run and self.guard.termination is not None:
            return True  # the stop's own result is given to it
        if (
            retryable
            and self.guard.termination is None
            and (self.online or entry.rounds < self.max_rounds)
        ):
            return True
        await self._fail(entry, exc, category, job)
        return False

    # ----------------------------------------------------------------------------- results

    def _spend(self, entry: _Pending, usage: Mapping[str, Any]) -> None:
        for key in ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens"):
            if key in usage or key != "cached_input_tokens":  # as online: only when reported
                entry.spent[key] = entry.spent.get(key, 0) + int(usage.get(key, 0) or 0)
        ledger = self.guard.ledger
        if ledger is None:
            return
        charge = Charge(model_name(entry.item.strategy), "", -1, 0, 0.0)
        try:
            entry.cost += ledger.settle(charge, usage, ran=True, batch=True)
        except CostFunctionError:
            logger.exception("pricing a batch line of item %s failed", entry.item.item_id)
        budget = ledger.budget
        if budget is not None:
            passed = budget.try_reserve(0, 0.0)
            if passed is not None:
                self.guard.stop("budget_exceeded", f"{passed} reached by batch results")

    def _usage(self, entry: _Pending) -> TokenUsage:
        spent = entry.spent
        usage: TokenUsage = {
            "input_tokens": spent.get("input_tokens", 0),
            "output_tokens": spent.get("output_tokens", 0),
            "total_tokens": spent.get("total_tokens", 0),
        }
        if "cached_input_tokens" in spent:
            usage["cached_input_tokens"] = spent["cached_input_tokens"]
        return usage

    async def _succeed(self, entry: _Pending, output: Any, usage: TokenUsage, job: _Job) -> None:
        self._spend(entry, usage)
        item = entry.item
        result: WorkItemResult[Any, Any] = WorkItemResult(
            item.item_id, True, output, None, item.context, self._usage(entry)
        )
        if self.guard.priced:
            result.cost = entry.cost
        data = {
            "item_id": item.item_id,
            "duration": self.clock.time() - job.submitted_at,
            "tokens": result.token_usage.get("total_tokens", 0),
            "batch_job_id": job.job_id,
        }
        await self._finish(entry, result, (ProcessingEvent.ITEM_COMPLETED, data))

    async def _fail(
        self, entry: _Pending, exc: Exception, category: str, job: _Job | None = None
    ) -> None:
        item = entry.item
        result: WorkItemResult[Any, Any] = WorkItemResult(
            item_id=item.item_id,
            success=False,
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
            context=item.context,
            token_usage=self._usage(entry),
            error_category=category,
        )
        if self.guard.priced:
            result.cost = entry.cost
        data: dict[str, Any] = {"item_id": item.item_id, "error_type": type(exc).__name__}
        if job is not None:
            data["batch_job_id"] = job.job_id
        await self._finish(entry, result, (ProcessingEvent.ITEM_FAILED, data))

    async def _finish(
        self,
        entry: _Pending,
        result: WorkItemResult[Any, Any],
        event: tuple[ProcessingEvent, dict[str, Any]] | None = None,
    ) -> None:
        """Hand a final result over exactly as a worker does (journal first when storing)."""
        p = self.p
        if not p.observers:
            event = None
        journal = p._journal
        if journal is not None:
            journal.submit(entry.item, result, event)
            return
        if event is not None:
            await p._emit(event[0], event[1])
        p._record(result)
        if p.post_processor is not None:
            await p._run_post_processor(result)

    async def _job_event(self, event: ExtendedEvent, job: _Job) -> None:
        """A job's event (``ExtendedEvent``: only observers with ``extended_events`` get it)."""
        if not self.p.observers:
            return
        status = job.status
        await self.p._emit(
            event,
            {
                "job_id": job.job_id,
                "provider": job.backend.provider,
                "requests": len(job.lines),
                "state": status.state if status is not None else "validating",
                "completed": status.completed if status is not None else 0,
                "failed": status.failed if status is not None else 0,
            },
        )

    # ----------------------------------------------------------------------------- stopping

    async def _stopped(self, why: BatchTermination) -> None:
        """The batch was stopped: cancel running jobs, keep what they finished, fail the rest."""
        jobs = self.active
        self.active = []
        running = [job for job in jobs if job.job_id is not None and not job.done]
        for job in running:
            try:
                assert job.job_id is not None
                await job.backend.cancel(job.job_id)
            except Exception as exc:
                logger.warning("cancelling batch job %s failed (%r)", job.job_id, exc)
        deadline = self.clock.time() + _CANCEL_WAIT
        while any(not job.done for job in running) and self.clock.time() < deadline:
            now = self.clock.time()
            for job in running:
                if not job.done:
                    job.next_at = now
                    await self._poll(job, now)
            if any(not job.done for job in running):
                await self.clock.sleep(min(job.interval for job in running if not job.done))
        for job in jobs:
            if job.job_id is None:
                left = list(job.lines.values())
            elif job.done:
                left = await self._collect(job)
            else:
                left = list(job.lines.values())
            for entry in left:
                await self._finish(entry, self._stopped_result(entry, why))

    def _stopped_result(self, entry: _Pending, why: BatchTermination) -> WorkItemResult[Any, Any]:
        result: WorkItemResult[Any, Any] = self.guard.stopped_result(entry.item, why)
        result.token_usage = self._usage(entry) if entry.spent else {}
        if self.guard.priced:
            result.cost = entry.cost
        return result

    async def _cancel_quietly(self, job: _Job) -> None:
        assert job.job_id is not None
        try:
            await job.backend.cancel(job.job_id)
        except Exception as exc:
            logger.warning("cancelling batch job %s failed (%r)", job.job_id, exc)

    async def _cancel_jobs_quietly(self) -> None:
        """The batch task is being cancelled: ask the provider to cancel its running jobs."""
        running = [job for job in self.active if job.job_id is not None and not job.done]
        if not running:
            return
        cancelling = asyncio.ensure_future(
            asyncio.gather(*(self._cancel_quietly(job) for job in running))
        )
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(cancelling), timeout=10.0)


class BatchJobFailedError(ValueError):
    """The provider refused a whole job (its input did not validate): not retried."""
