"""Shared machinery of the reliability suite: scripted faults, their oracle, and task checks.

A *plan* gives every item a script: what the provider does on attempt 1, 2, ... (succeed, fail
retryably, rate-limit, time out, hang, fail fatally, return garbage) and how many tokens it
reports for each attempt. :func:`expected_outcome` is the oracle: from the script and
``max_attempts`` alone it derives the item's outcome, the exact number of calls and the exact
token spend. :class:`ScriptedStrategy` plays the scripts and records every call, so a test can
compare what happened with what had to happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from async_batch_llm import (
    BatchResult,
    ErrorClassifier,
    LLMCallStrategy,
    LLMWorkItem,
    Middleware,
    ParallelBatchProcessor,
    PostProcessorFunc,
    ProcessingEvent,
    ProcessorConfig,
    ProcessorObserver,
    ProgressCallbackFunc,
    RateLimitConfig,
    RateLimitStrategy,
    RetryConfig,
    RetryState,
    TokenTrackingError,
    TokenUsage,
    WorkItemResult,
)
from async_batch_llm.observers import ExtendedEvent
from async_batch_llm.testing.clock import FakeClock

T = TypeVar("T")

TOKEN_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens")


class Step(enum.Enum):
    """What the provider does on one attempt."""

    OK = "ok"
    RETRYABLE = "retryable"  # connection reset / 503: the default classifier retries it
    RATE_LIMIT = "rate_limit"  # a 429: shared cooldown, then retried
    TIMEOUT = "timeout"  # the provider's own timeout error: retried
    HANG = "hang"  # never returns: cut by timeout_per_item, retried
    FATAL = "fatal"  # a ValueError: never retried
    BAD_RETURN = "bad_return"  # execute returns something other than (output, usage)


RETRYABLE_STEPS = frozenset({Step.RETRYABLE, Step.RATE_LIMIT, Step.TIMEOUT, Step.HANG})

DEFAULT_WEIGHTS: dict[Step, float] = {
    Step.OK: 0.55,
    Step.RETRYABLE: 0.15,
    Step.RATE_LIMIT: 0.07,
    Step.TIMEOUT: 0.08,
    Step.HANG: 0.02,
    Step.FATAL: 0.07,
    Step.BAD_RETURN: 0.06,
}

# The ways a failed attempt can report what it cost (spec §4.7), chosen per attempt.
USAGE_VIA_ATTACHMENT = "attachment"  # exc.__dict__["_failed_token_usage"]
USAGE_VIA_TOKEN_ERROR = "token_error"  # TokenTrackingError(..., token_usage=...)
USAGE_VIA_ATTRIBUTE = "attribute"  # exc.usage with input/output/total (no cached key)
USAGE_NONE = "none"

BAD_RETURNS: tuple[object, ...] = (
    "just the text",
    None,
    ("output",),
    ("output", {"input_tokens": 1}, "extra"),
    ["output", {"input_tokens": 1}],
    ("output", None),
    ("output", 42),
)


@dataclass(frozen=True)
class Attempt:
    """One scripted attempt: the step, the usage the provider reports, how it reports it."""

    step: Step
    usage: dict[str, int]
    via: str = USAGE_NONE
    bad_return: int = 0


@dataclass(frozen=True)
class ItemPlan:
    item_id: str
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True)
class Expected:
    """What the oracle says must happen to one item."""

    success: bool
    calls: int
    usage: dict[str, int]
    error_prefix: str | None  # class name that must start the error string of a failure
    last_step: Step


def _random_usage(rng: random.Random, *, cached: bool) -> dict[str, int]:
    input_tokens = rng.randint(1, 4000)
    output_tokens = rng.randint(0, 800)
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if cached and rng.random() < 0.4:
        usage["cached_input_tokens"] = rng.randint(0, input_tokens)
    return usage


def make_attempt(rng: random.Random, step: Step) -> Attempt:
    """A scripted attempt of kind ``step`` with randomly chosen token reporting."""
    if step is Step.OK:
        return Attempt(step, _random_usage(rng, cached=True))
    if step in (Step.HANG, Step.BAD_RETURN):
        # A cancelled call reports nothing; a garbage return value carries no readable usage.
        return Attempt(step, {}, bad_return=rng.randrange(len(BAD_RETURNS)))
    if step is Step.TIMEOUT and rng.random() < 0.5:
        return Attempt(step, {})
    via = rng.choice((USAGE_VIA_ATTACHMENT, USAGE_VIA_TOKEN_ERROR, USAGE_VIA_ATTRIBUTE, USAGE_NONE))
    if via == USAGE_NONE:
        return Attempt(step, {}, via)
    usage = _random_usage(rng, cached=via != USAGE_VIA_ATTRIBUTE)
    return Attempt(step, usage, via)


def make_plans(
    n: int,
    *,
    seed: int,
    max_attempts: int,
    weights: dict[Step, float] | None = None,
    prefix: str = "item",
) -> list[ItemPlan]:
    """``n`` item scripts drawn from ``weights`` with a seeded generator (deterministic)."""
    rng = random.Random(seed)
    table = weights or DEFAULT_WEIGHTS
    steps = list(table)
    cumulative = list(table.values())
    plans = []
    for index in range(n):
        drawn = rng.choices(steps, weights=cumulative, k=max_attempts)
        attempts = tuple(make_attempt(rng, step) for step in drawn)
        plans.append(ItemPlan(f"{prefix}-{index:06d}", attempts))
    return plans


def _error_class(attempt: Attempt) -> str:
    step = attempt.step
    if step is Step.FATAL:
        return "ValueError"
    if step is Step.BAD_RETURN:
        return "TypeError"
    if step is Step.HANG:
        return "FrameworkTimeoutError"
    if step is Step.TIMEOUT:
        return "TimeoutError"
    if step is Step.RATE_LIMIT:
        return "ProviderRateLimitError"
    if attempt.via == USAGE_VIA_TOKEN_ERROR:
        return "TokenTrackingError"
    return "ProviderConnectionError"


def expected_outcome(
    plan: ItemPlan, max_attempts: int, retryable: frozenset[Step] = RETRYABLE_STEPS
) -> Expected:
    """The oracle: outcome, exact call count and exact token spend of one scripted item.

    ``retryable`` is what the error classifier in use retries (the default classifier retries
    connection errors, 503s, 429s and timeouts).
    """
    spent: Counter[str] = Counter()
    for number, attempt in enumerate(plan.attempts[:max_attempts], start=1):
        spent.update(attempt.usage)
        if attempt.step is Step.OK:
            return Expected(True, number, dict(spent), None, attempt.step)
        if attempt.step not in retryable or number == max_attempts:
            return Expected(False, number, dict(spent), _error_class(attempt), attempt.step)
    raise AssertionError(f"plan of {plan.item_id} is shorter than max_attempts={max_attempts}")


class ProviderConnectionError(ConnectionError):
    """A retryable transport failure (the default classifier retries connection errors)."""


class ProviderRateLimitError(Exception):
    """A 429 (the default classifier sees "429" in the message)."""


class _UsageReport:
    def __init__(self, usage: dict[str, int]) -> None:
        self.input_tokens = usage.get("input_tokens", 0)
        self.output_tokens = usage.get("output_tokens", 0)
        self.total_tokens = usage.get("total_tokens", 0)


def _build_error(attempt: Attempt, number: int) -> Exception:
    step = attempt.step
    # The item id stays out of the message: the default classifier reads messages, and an id
    # such as "item-000429" would turn any error into a rate limit.
    text = f"attempt {number}"
    exc: Exception
    if step is Step.RATE_LIMIT:
        exc = ProviderRateLimitError(f"429 Too Many Requests ({text})")
    elif step is Step.TIMEOUT:
        exc = TimeoutError(f"upstream deadline exceeded ({text})")
    elif step is Step.FATAL:
        exc = ValueError(f"request rejected as invalid ({text})")
    elif attempt.via == USAGE_VIA_TOKEN_ERROR:
        return TokenTrackingError(f"upstream 503 ({text})", token_usage=attempt.usage)
    else:
        exc = ProviderConnectionError(f"connection reset by peer ({text})")
    if attempt.via == USAGE_VIA_ATTACHMENT:
        exc.__dict__["_failed_token_usage"] = dict(attempt.usage)
    elif attempt.via == USAGE_VIA_ATTRIBUTE:
        exc.__dict__["usage"] = _UsageReport(attempt.usage)
    elif attempt.via == USAGE_VIA_TOKEN_ERROR:
        exc.__dict__["_failed_token_usage"] = dict(attempt.usage)
    return exc


@dataclass
class CallLog:
    """Everything :class:`ScriptedStrategy` saw."""

    calls: Counter[str] = field(default_factory=Counter)
    succeeded: set[str] = field(default_factory=set)
    calls_after_success: list[str] = field(default_factory=list)
    wrong_attempt_numbers: list[tuple[str, int, int]] = field(default_factory=list)
    shared_states: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: int = 0
    started_seq: list[int] = field(default_factory=list)
    ended_seq: list[int] = field(default_factory=list)
    seq: int = 0

    def tick(self) -> int:
        self.seq += 1
        return self.seq


class ScriptedStrategy(LLMCallStrategy[str]):
    """Plays each item's script; the prompt is the item id. One object serves every item."""

    def __init__(self, plans: Iterable[ItemPlan], log: CallLog | None = None) -> None:
        self.plans = {plan.item_id: plan for plan in plans}
        self.log = log if log is not None else CallLog()
        self.prepared = 0
        self.cleaned_up = 0
        self._states: dict[int, tuple[str, RetryState]] = {}
        self._state_of: dict[str, RetryState] = {}

    async def prepare(self) -> None:
        self.prepared += 1

    async def cleanup(self) -> None:
        self.cleaned_up += 1

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        log = self.log
        item_id = prompt
        if item_id in log.succeeded:
            log.calls_after_success.append(item_id)
        log.calls[item_id] += 1
        number = log.calls[item_id]
        if attempt != number:
            log.wrong_attempt_numbers.append((item_id, attempt, number))
        if state is not None:
            # One RetryState per item, the same one on every attempt (held strongly, so ids
            # are never reused).
            owner, _ = self._states.setdefault(id(state), (item_id, state))
            first = self._state_of.setdefault(item_id, state)
            if owner != item_id or first is not state:
                log.shared_states.append(item_id)
        scripted = self.plans[item_id].attempts[number - 1]
        log.in_flight += 1
        log.max_in_flight = max(log.max_in_flight, log.in_flight)
        log.started_seq.append(log.tick())
        try:
            # One real suspension per call, as with any network request.
            await asyncio.sleep(0)
            step = scripted.step
            if step is Step.OK:
                log.succeeded.add(item_id)
                return f"output of {item_id}", dict(scripted.usage)  # type: ignore[return-value]  # plain dict of TokenUsage keys
            if step is Step.HANG:
                await asyncio.Event().wait()
            if step is Step.BAD_RETURN:
                return BAD_RETURNS[scripted.bad_return]  # type: ignore[return-value]  # deliberately malformed
            raise _build_error(scripted, number)
        except asyncio.CancelledError:
            log.cancelled += 1
            raise
        finally:
            log.in_flight -= 1
            log.ended_seq.append(log.tick())


class EventCounter(ProcessorObserver):
    """Counts events (the added ``ExtendedEvent`` ones too), and ``ITEM_FAILED`` per item."""

    extended_events = True

    def __init__(self) -> None:
        self.counts: Counter[ProcessingEvent | ExtendedEvent] = Counter()
        self.failed_items: Counter[str] = Counter()

    async def on_event(self, event: ProcessingEvent | ExtendedEvent, data: dict[str, Any]) -> None:
        self.counts[event] += 1
        if event is ProcessingEvent.ITEM_FAILED:
            self.failed_items[data["item_id"]] += 1


def usage_sum(usages: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for usage in usages:
        total.update(usage)
    return {key: total.get(key, 0) for key in TOKEN_KEYS}


def normalised(usage: object) -> dict[str, int]:
    """A result's token usage with all four keys (absent keys are 0)."""
    assert hasattr(usage, "get"), f"token_usage is not a mapping: {usage!r}"
    return {key: int(usage.get(key, 0)) for key in TOKEN_KEYS}


@dataclass
class Verdict:
    """The comparison of a batch with its oracle; empty lists mean the guarantees held."""

    lost: list[str]
    duplicated: list[str]
    unknown: list[str]
    wrong_outcome: list[str]
    wrong_calls: list[str]
    wrong_tokens: list[str]
    wrong_error: list[str]
    expected_tokens: dict[str, int]
    reported_tokens: dict[str, int]

    def problems(self) -> dict[str, list[str]]:
        found = {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unknown": self.unknown,
            "wrong_outcome": self.wrong_outcome,
            "wrong_calls": self.wrong_calls,
            "wrong_tokens": self.wrong_tokens,
            "wrong_error": self.wrong_error,
        }
        return {name: ids[:10] for name, ids in found.items() if ids}


def judge(
    plans: Sequence[ItemPlan],
    result: BatchResult[Any, Any],
    log: CallLog,
    max_attempts: int,
    retryable: frozenset[Step] = RETRYABLE_STEPS,
) -> Verdict:
    """Compare a finished batch with the oracle, item by item."""
    expected = {plan.item_id: expected_outcome(plan, max_attempts, retryable) for plan in plans}
    seen: Counter[str] = Counter(r.item_id for r in result.results)
    lost = sorted(set(expected) - set(seen))
    duplicated = sorted(item_id for item_id, n in seen.items() if n > 1)
    unknown = sorted(set(seen) - set(expected))
    wrong_outcome, wrong_calls, wrong_tokens, wrong_error = [], [], [], []
    for r in result.results:
        want = expected.get(r.item_id)
        if want is None:
            continue
        if r.success != want.success:
            wrong_outcome.append(r.item_id)
        if log.calls[r.item_id] != want.calls:
            wrong_calls.append(r.item_id)
        if normalised(r.token_usage) != usage_sum([want.usage]):
            wrong_tokens.append(r.item_id)
        if not want.success:
            error = r.error or ""
            ok = error.startswith(f"{want.error_prefix}: ")
            if want.last_step is Step.HANG:
                ok = ok and "timeout" in error.lower()
            if not ok:
                wrong_error.append(r.item_id)
    return Verdict(
        lost=lost,
        duplicated=duplicated,
        unknown=unknown,
        wrong_outcome=wrong_outcome,
        wrong_calls=wrong_calls,
        wrong_tokens=wrong_tokens,
        wrong_error=wrong_error,
        expected_tokens=usage_sum(w.usage for w in expected.values()),
        reported_tokens={
            "input_tokens": result.total_input_tokens,
            "output_tokens": result.total_output_tokens,
            "total_tokens": sum(r.token_usage.get("total_tokens", 0) for r in result.results),
            "cached_input_tokens": result.total_cached_tokens,
        },
    )


# ----------------------------------------------------------------------------- running batches


async def add_all(
    processor: ParallelBatchProcessor[str, str, Any],
    plans: Iterable[ItemPlan],
    strategy: LLMCallStrategy[str],
) -> None:
    for index, plan in enumerate(plans):
        await processor.add_work(
            LLMWorkItem(item_id=plan.item_id, strategy=strategy, prompt=plan.item_id, context=index)
        )


async def drive(clock: FakeClock, awaitable: Awaitable[T], *, real_timeout: float = 30.0) -> T:
    """Await ``awaitable`` while jumping ``clock`` past every virtual sleep.

    Hung provider calls wait in real time (``timeout_per_item`` is enforced by the event loop),
    so between jumps the driver also lets real time pass. A batch still running after
    ``real_timeout`` real seconds is cancelled and reported as hung.
    """
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + real_timeout
    try:
        while not task.done():
            await clock.run_until_idle()
            if task.done():
                break
            if loop.time() > deadline:
                raise AssertionError(f"batch still running after {real_timeout}s: hung")
            await asyncio.wait({task}, timeout=0.002)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result()


def pending_tasks(exclude: Iterable[asyncio.Task[Any]] = ()) -> list[asyncio.Task[Any]]:
    """Tasks of the running loop that are not done, except the caller's and ``exclude``."""
    current = asyncio.current_task()
    skip = {current, *exclude}
    return [task for task in asyncio.all_tasks() if task not in skip and not task.done()]


def describe_tasks(tasks: Iterable[asyncio.Task[Any]]) -> str:
    return "; ".join(f"{task.get_name()}: {task.get_coro()!r}" for task in tasks)


def assert_no_pending_tasks(exclude: Iterable[asyncio.Task[Any]] = ()) -> None:
    """Fail if any task other than the caller (and ``exclude``) is still pending. No yielding."""
    leaked = pending_tasks(exclude)
    assert not leaked, f"{len(leaked)} task(s) still pending: {describe_tasks(leaked)}"


@contextlib.asynccontextmanager
async def no_task_left_behind() -> AsyncIterator[None]:
    """Fail the block if it leaves a pending task behind (leaked tasks are then cancelled)."""
    before = set(asyncio.all_tasks())
    yield
    leaked = [task for task in pending_tasks() if task not in before]
    if leaked:
        description = describe_tasks(leaked)
        for task in leaked:
            task.cancel()
        await asyncio.wait(leaked, timeout=2.0)
        raise AssertionError(f"{len(leaked)} task(s) left pending: {description}")


@dataclass
class BatchRun:
    """A finished scripted batch and everything observed while it ran."""

    plans: list[ItemPlan]
    max_attempts: int
    result: BatchResult[str, Any]
    log: CallLog
    strategy: ScriptedStrategy
    events: EventCounter
    stats: dict[str, Any]
    post_processed: Counter[str]
    retryable: frozenset[Step] = RETRYABLE_STEPS

    def verdict(self) -> Verdict:
        return judge(self.plans, self.result, self.log, self.max_attempts, self.retryable)


def scripted_config(
    *,
    workers: int,
    max_attempts: int,
    timeout: float = 0.25,
    rpm: float | None = None,
    progress_interval: int = 10,
    progress_callback_timeout: float | None = 5.0,
) -> ProcessorConfig:
    """Settings for scripted batches: short real timeouts, long virtual waits and cooldowns."""
    return ProcessorConfig(
        max_workers=workers,
        timeout_per_item=timeout,
        retry=RetryConfig(max_attempts=max_attempts, initial_wait=1.0, max_wait=30.0),
        rate_limit=RateLimitConfig(
            cooldown_seconds=60.0,
            slow_start_items=5,
            slow_start_initial_delay=2.0,
            slow_start_final_delay=0.5,
        ),
        max_requests_per_minute=rpm,
        progress_interval=progress_interval,
        progress_callback_timeout=progress_callback_timeout,
    )


async def run_scripted_batch(
    plans: list[ItemPlan],
    config: ProcessorConfig,
    *,
    seed: int = 0,
    observers: Sequence[ProcessorObserver] = (),
    middlewares: Sequence[Middleware[str, str, Any]] = (),
    post_processor: PostProcessorFunc[str, Any] | None = None,
    progress_callback: ProgressCallbackFunc | None = None,
    rate_limit_strategy: RateLimitStrategy | None = None,
    error_classifier: ErrorClassifier | None = None,
    retryable: frozenset[Step] = RETRYABLE_STEPS,
    strategy: ScriptedStrategy | None = None,
    post_counter: Counter[str] | None = None,
    real_timeout: float = 45.0,
) -> BatchRun:
    """Run ``plans`` through a processor on a :class:`FakeClock` and collect what happened.

    Without ``post_processor``, a counting one fills ``BatchRun.post_processed``; a caller that
    passes its own counts into ``post_counter``. Asserts on the way out that the ``async with``
    block left no task pending.
    """
    clock = FakeClock()
    strategy = strategy if strategy is not None else ScriptedStrategy(plans)
    events = EventCounter()
    post_processed: Counter[str] = post_counter if post_counter is not None else Counter()

    async def count_post(result: WorkItemResult[str, Any]) -> None:
        post_processed[result.item_id] += 1

    post = post_processor if post_processor is not None else count_post

    processor: ParallelBatchProcessor[str, str, Any] = ParallelBatchProcessor(
        config=config,
        post_processor=post,
        observers=[*observers, events],
        middlewares=list(middlewares),
        progress_callback=progress_callback,
        rate_limit_strategy=rate_limit_strategy,
        error_classifier=error_classifier,
        clock=clock,
    )
    processor._random = random.Random(seed).random

    async def body() -> tuple[BatchResult[str, Any], dict[str, Any]]:
        async with processor:
            await add_all(processor, plans, strategy)
            result = await processor.process_all()
            stats = await processor.get_stats()
        return result, stats

    result, stats = await drive(clock, body(), real_timeout=real_timeout)
    assert_no_pending_tasks()
    return BatchRun(
        plans=plans,
        max_attempts=config.retry.max_attempts,
        result=result,
        log=strategy.log,
        strategy=strategy,
        events=events,
        stats=stats,
        post_processed=post_processed,
        retryable=retryable,
    )


def assert_batch_matches_oracle(run: BatchRun) -> None:
    """Every guarantee a scripted batch can be held to, in one place."""
    result = run.result
    plans = run.plans
    n = len(plans)
    verdict = run.verdict()
    assert verdict.problems() == {}, verdict.problems()

    # G1: exactly one result per item, counts consistent.
    assert result.total_items == len(result.results) == n
    assert result.succeeded + result.failed == n
    ids = [r.item_id for r in result.results]
    assert len(set(ids)) == n
    assert set(ids) == {plan.item_id for plan in plans}

    # G2: retries only as the classifier and max_attempts allow, never after a success.
    assert run.log.calls_after_success == []
    assert run.log.wrong_attempt_numbers == []
    assert run.log.shared_states == []
    assert sum(run.log.calls.values()) == sum(
        expected_outcome(plan, run.max_attempts, run.retryable).calls for plan in plans
    )

    # G4: totals are the exact provider spend over all attempts, in the result and the stats.
    assert verdict.reported_tokens == verdict.expected_tokens
    stats = run.stats
    assert stats["processed"] == stats["total"] == n
    assert stats["succeeded"] == result.succeeded
    assert stats["failed"] == result.failed
    assert stats["total_input_tokens"] == verdict.expected_tokens["input_tokens"]
    assert stats["total_output_tokens"] == verdict.expected_tokens["output_tokens"]
    assert stats["total_tokens"] == verdict.expected_tokens["total_tokens"]
    assert stats["cached_input_tokens"] == verdict.expected_tokens["cached_input_tokens"]

    # Contexts travel with their items; every result was post-processed exactly once.
    contexts = {plan.item_id: index for index, plan in enumerate(plans)}
    assert all(r.context == contexts[r.item_id] for r in result.results)
    assert run.post_processed == Counter(ids)

    # Observers saw every attempt and exactly one ITEM_FAILED per failed item (spec D3).
    counts = run.events.counts
    failed_ids = {r.item_id for r in result.results if not r.success}
    assert run.events.failed_items == Counter(failed_ids)
    assert counts[ProcessingEvent.ITEM_STARTED] == sum(run.log.calls.values())
    assert counts[ProcessingEvent.ITEM_COMPLETED] == result.succeeded
    # Every attempt ends in exactly one ITEM_COMPLETED or ATTEMPT_FAILED.
    assert counts[ProcessingEvent.ITEM_STARTED] == (
        counts[ProcessingEvent.ITEM_COMPLETED] + counts[ExtendedEvent.ATTEMPT_FAILED]
    )
    rate_limited = sum(
        1
        for plan in plans
        for attempt in plan.attempts[: run.log.calls[plan.item_id]]
        if attempt.step is Step.RATE_LIMIT
    )
    assert counts[ProcessingEvent.RATE_LIMIT_HIT] == rate_limited == stats["rate_limit_count"]
    assert counts[ProcessingEvent.BATCH_COMPLETED] == 1
    assert counts[ProcessingEvent.WORKER_STOPPED] == counts[ProcessingEvent.WORKER_STARTED]

    # Nothing is left running: every in-flight call has ended.
    assert run.log.in_flight == 0
