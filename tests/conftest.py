"""Shared fixtures and scripted test doubles for the processor conformance tests.

What is here, and why:

- ``fake_clock``: a :class:`FakeClock`, so cooldowns, backoff waits, slow start and quota
  admission run instantly and exactly (pass it as ``ParallelBatchProcessor(clock=...)``).
- :class:`ScriptedStrategy`: an ``LLMCallStrategy[str]`` whose calls follow a per-prompt script
  of outcomes (an output, an ``(output, usage)`` pair, or an exception to raise) and which
  records every call, ``prepare``/``cleanup``/``on_error`` included.
- :class:`EventRecorder`: an observer that keeps every ``(event, payload)`` it receives.
- :func:`make_config` / :func:`make_processor`: a config with fast, deterministic defaults (one
  worker, no jitter, 8 s cooldown, no slow start) that tests override field by field.
- :func:`drive`: await a coroutine while advancing the fake clock whenever everything is idle.

Test modules import these names from ``tests.conftest``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from async_batch_llm import (
    BaseObserver,
    BatchResult,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.observers import ExtendedEvent
from async_batch_llm.testing.clock import FakeClock

T = TypeVar("T")

USAGE: TokenUsage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
"""What a :class:`ScriptedStrategy` reports for a scripted plain-output success."""

Outcome = str | BaseException | tuple[str, TokenUsage]
"""One scripted call: return this output, raise this exception, or return ``(output, usage)``."""

Processor = ParallelBatchProcessor[str, str, Any]


@pytest.fixture
def fake_clock() -> FakeClock:
    """Virtual time starting at 0.0."""
    return FakeClock()


class RateLimitError(Exception):
    """A provider rate-limit error (``429`` in the message, so every classifier sees it).

    Args:
        message: the error text.
        retry_after: seconds the provider asked for, exposed as the ``retry_after`` attribute.
    """

    def __init__(self, message: str = "429 Too Many Requests", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Call:
    """One recorded ``execute``/``dry_run`` call."""

    prompt: str
    attempt: int
    timeout: float
    state: RetryState | None
    at: float
    """The processor clock's time when the call started (0.0 without a clock)."""


class ScriptedStrategy(LLMCallStrategy[str]):
    """Plays a script of outcomes per prompt and records everything the processor asks of it.

    Each call of ``execute(prompt, ...)`` takes the next outcome scripted for ``prompt``; once a
    prompt's script is used up (or it has none) the call succeeds with ``"ok:<prompt>"`` and
    :data:`USAGE`. Before taking its outcome a call awaits ``gate`` (if given) and then sleeps
    ``latency`` seconds on ``clock`` (if given), so tests control when calls end.

    Args:
        script: outcomes per prompt, consumed in order.
        clock: the clock whose time is recorded in :attr:`calls` (and used for ``latency``).
        latency: seconds each call takes on ``clock``.
        gate: an event every call waits for before producing its outcome.
        usage: the usage reported with plain-output successes.

    Attributes:
        calls: every ``execute`` call, in start order.
        dry_runs: every ``dry_run`` call, in start order.
        errors: ``(exception, attempt, state)`` of every ``on_error`` call.
        prepared / cleaned: how many times ``prepare`` / ``cleanup`` ran.
        log: a shared timeline of ``"prepare"``, ``"cleanup"``, ``"start:<prompt>"``,
            ``"end:<prompt>"`` and ``"cancelled:<prompt>"`` entries.
    """

    def __init__(
        self,
        script: Mapping[str, Sequence[Outcome]] | None = None,
        *,
        clock: FakeClock | None = None,
        latency: float = 0.0,
        gate: asyncio.Event | None = None,
        usage: TokenUsage = USAGE,
    ) -> None:
        self.script = {prompt: list(outcomes) for prompt, outcomes in (script or {}).items()}
        self.clock = clock
        self.latency = latency
        self.gate = gate
        self.usage = usage
        self.calls: list[Call] = []
        self.dry_runs: list[Call] = []
        self.errors: list[tuple[Exception, int, RetryState | None]] = []
        self.prepared = 0
        self.cleaned = 0
        self.log: list[str] = []

    def now(self) -> float:
        return self.clock.time() if self.clock is not None else 0.0

    def calls_for(self, prompt: str) -> list[Call]:
        return [call for call in self.calls if call.prompt == prompt]

    async def prepare(self) -> None:
        self.prepared += 1
        self.log.append("prepare")

    async def cleanup(self) -> None:
        self.cleaned += 1
        self.log.append("cleanup")

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        self.errors.append((exception, attempt, state))

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.calls.append(Call(prompt, attempt, timeout, state, self.now()))
        self.log.append(f"start:{prompt}")
        try:
            if self.gate is not None:
                await self.gate.wait()
            latency = self.latency_for(prompt, attempt)
            if latency > 0 and self.clock is not None:
                await self.clock.sleep(latency)
        except asyncio.CancelledError:
            self.log.append(f"cancelled:{prompt}")
            raise
        self.log.append(f"end:{prompt}")
        return self.next_outcome(prompt)

    def latency_for(self, prompt: str, attempt: int) -> float:
        """Seconds of ``clock`` time this call takes (override for per-call latencies)."""
        return self.latency

    def next_outcome(self, prompt: str) -> tuple[str, TokenUsage]:
        steps = self.script.get(prompt)
        outcome: Outcome = steps.pop(0) if steps else f"ok:{prompt}"
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, tuple):
            return outcome
        return outcome, self.usage.copy()


class EventRecorder(BaseObserver):
    """Keeps every event it receives, in order (the 0.6.0 events: see FullEventRecorder)."""

    def __init__(self) -> None:
        self.events: list[tuple[ProcessingEvent, dict[str, Any]]] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.events.append((event, dict(data)))

    def of(self, event: ProcessingEvent) -> list[dict[str, Any]]:
        """The payloads of every ``event`` received, in order."""
        return [data for kind, data in self.events if kind is event]

    def kinds(self) -> list[ProcessingEvent]:
        return [kind for kind, _ in self.events]


class FullEventRecorder(BaseObserver):
    """Keeps every event in order, the ones added after 0.6.0 (ExtendedEvent) included."""

    extended_events = True

    def __init__(self) -> None:
        self.events: list[tuple[ProcessingEvent | ExtendedEvent, dict[str, Any]]] = []

    async def on_event(self, event: ProcessingEvent | ExtendedEvent, data: dict[str, Any]) -> None:
        self.events.append((event, dict(data)))

    def of(self, event: ProcessingEvent | ExtendedEvent) -> list[dict[str, Any]]:
        """The payloads of every ``event`` received, in order."""
        return [data for kind, data in self.events if kind is event]

    def kinds(self) -> list[ProcessingEvent | ExtendedEvent]:
        return [kind for kind, _ in self.events]


def make_config(**overrides: Any) -> ProcessorConfig:
    """A ``ProcessorConfig`` with test defaults, any field overridable by keyword.

    Defaults: 1 worker; ``RetryConfig(max_attempts=3, initial_wait=1.0, max_wait=60.0,
    jitter=False)``; ``RateLimitConfig(cooldown_seconds=8.0, backoff_multiplier=1.5,
    slow_start_items=0)``. ``retry_*`` / ``rate_*`` keywords set fields of the nested configs
    (``retry_max_attempts=5``, ``rate_cooldown_seconds=2.0``).
    """
    retry: dict[str, Any] = {
        "max_attempts": 3,
        "initial_wait": 1.0,
        "max_wait": 60.0,
        "jitter": False,
    }
    rate: dict[str, Any] = {
        "cooldown_seconds": 8.0,
        "backoff_multiplier": 1.5,
        "slow_start_items": 0,
        "slow_start_initial_delay": 0.0,
        "slow_start_final_delay": 0.0,
    }
    fields: dict[str, Any] = {"max_workers": 1}
    for key, value in overrides.items():
        if key in ("retry", "rate_limit"):
            fields[key] = value
        elif key.startswith("retry_"):
            retry[key.removeprefix("retry_")] = value
        elif key.startswith("rate_"):
            rate[key.removeprefix("rate_")] = value
        else:
            fields[key] = value
    fields.setdefault("retry", RetryConfig(**retry))
    fields.setdefault("rate_limit", RateLimitConfig(**rate))
    return ProcessorConfig(**fields)


def make_processor(
    clock: FakeClock | None = None,
    *,
    config: ProcessorConfig | None = None,
    **kwargs: Any,
) -> Processor:
    """A ``ParallelBatchProcessor[str, str, Any]`` on ``config`` (default :func:`make_config`).

    Extra keywords go to the constructor (``observers=``, ``middlewares=`` ...).
    """
    return ParallelBatchProcessor(
        config=config if config is not None else make_config(), clock=clock, **kwargs
    )


def items(
    strategy: LLMCallStrategy[str], *prompts: str, context: Any = None
) -> list[LLMWorkItem[str, str, Any]]:
    """One work item per prompt; each item's id is its prompt."""
    return [
        LLMWorkItem(item_id=prompt, strategy=strategy, prompt=prompt, context=context)
        for prompt in prompts
    ]


async def add_all(processor: Processor, work: Iterable[LLMWorkItem[str, str, Any]]) -> None:
    for item in work:
        await processor.add_work(item)


async def drive(clock: FakeClock, awaitable: Awaitable[T], *, real_limit: float = 5.0) -> T:
    """Await ``awaitable``, jumping virtual time to the next sleeper whenever all tasks idle.

    Between idle points it also gives real time a chance (1 ms steps) to let real timeouts and
    worker threads finish.

    Raises:
        AssertionError: when it has not finished after ``real_limit`` real seconds (a deadlock).
    """
    task = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + real_limit
    try:
        while not task.done():
            await clock.run_until_idle()
            if not task.done():
                await asyncio.wait({task}, timeout=0.001)
            assert loop.time() < deadline, f"not finished after {real_limit}s of real time"
    finally:
        if not task.done():
            task.cancel()
    return task.result()


async def run_batch(
    processor: Processor,
    work: Iterable[LLMWorkItem[str, str, Any]],
    clock: FakeClock | None = None,
) -> BatchResult[str, Any]:
    """Add ``work`` and run ``process_all()`` (under :func:`drive` when ``clock`` is given)."""
    await add_all(processor, work)
    if clock is None:
        return await processor.process_all()
    return await drive(clock, processor.process_all())
