"""Bad input is rejected at the moment it is given, naming the field, the value and what is
allowed (guarantee G8).

One table lists every mistake. Each row is the single operation that makes the mistake (a
constructor call, ``add_work``), the exception it must raise right there, and fragments its
message must contain. A strategy whose ``execute`` returns the wrong shape cannot be caught
before it runs; its item fails with a clear error and the batch goes on.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from async_batch_llm import (
    BaseMiddleware,
    BaseObserver,
    DefaultErrorClassifier,
    FixedDelayStrategy,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.clock import FakeClock

USAGE: TokenUsage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}


class Echo(LLMCallStrategy[str]):
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        return prompt, USAGE


class NoExecute:
    async def prepare(self) -> None:
        pass


class ExecuteNotCallable:
    execute = "not a method"


@dataclass
class Case:
    """One mistake: the operation that makes it, and how it must be refused."""

    make_mistake: Callable[[], object]
    error: type[Exception]
    fragments: tuple[str, ...]  # each must occur in the message (field, value, what is allowed)


def item(**overrides: Any) -> Callable[[], object]:
    def make() -> object:
        kwargs: dict[str, Any] = {"item_id": "item-1", "strategy": Echo(), "prompt": "hi"}
        kwargs.update(overrides)
        return LLMWorkItem(**kwargs)

    return make


def build(factory: Callable[..., object], **kwargs: Any) -> Callable[[], object]:
    return lambda: factory(**kwargs)


def mutated_config(field: str, value: object) -> Callable[[], object]:
    """A config changed after construction is refused when handed to the processor."""

    def make() -> object:
        config = ProcessorConfig()
        setattr(config, field, value)
        return ParallelBatchProcessor(config=config)

    return make


async def _processor_with(*items: LLMWorkItem[str, str, None], **kwargs: Any) -> Any:
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(**kwargs)
    for work in items:
        await processor.add_work(work)
    return processor


def add_duplicate_id() -> Awaitable[object]:
    async def run() -> object:
        processor = await _processor_with(LLMWorkItem(item_id="dup", strategy=Echo(), prompt="a"))
        return await processor.add_work(LLMWorkItem(item_id="dup", strategy=Echo(), prompt="b"))

    return run()


def add_not_a_work_item() -> Awaitable[object]:
    async def run() -> object:
        processor = await _processor_with()
        return await processor.add_work({"item_id": "x", "prompt": "hi"})

    return run()


def add_after_process_all() -> Awaitable[object]:
    async def run() -> object:
        processor = await _processor_with(LLMWorkItem(item_id="a", strategy=Echo(), prompt="a"))
        async with processor:
            await processor.process_all()
            return await processor.add_work(LLMWorkItem(item_id="b", strategy=Echo(), prompt="b"))

    return run()


def add_beyond_a_full_bounded_queue() -> Awaitable[object]:
    async def run() -> object:
        processor = await _processor_with(
            *(LLMWorkItem(item_id=f"q{i}", strategy=Echo(), prompt="x") for i in range(2)),
            config=ProcessorConfig(max_workers=2, max_queue_size=2),
        )
        return await processor.add_work(LLMWorkItem(item_id="q2", strategy=Echo(), prompt="x"))

    return run()


# Wrong types for every config field: (config class, field, wrong value, what is allowed).
CONFIG_FIELDS: list[tuple[type, str, object, str]] = [
    (RetryConfig, "max_attempts", "3", "must be an int"),
    (RetryConfig, "max_attempts", 3.0, "must be an int"),
    (RetryConfig, "max_attempts", True, "must be an int"),
    (RetryConfig, "initial_wait", "1", "must be an int or a float"),
    (RetryConfig, "max_wait", None, "must be an int or a float"),
    (RetryConfig, "exponential_base", "2", "must be an int or a float"),
    (RetryConfig, "jitter", 1, "must be a bool"),
    (RetryConfig, "jitter", "yes", "must be a bool"),
    (RetryConfig, "jitter", None, "must be a bool"),
    (RateLimitConfig, "cooldown_seconds", "300", "must be an int or a float"),
    (RateLimitConfig, "slow_start_items", 5.0, "must be an int"),
    (RateLimitConfig, "slow_start_initial_delay", "2", "must be an int or a float"),
    (RateLimitConfig, "slow_start_final_delay", None, "must be an int or a float"),
    (RateLimitConfig, "backoff_multiplier", "1.5", "must be an int or a float"),
    (ProcessorConfig, "max_workers", "5", "must be an int"),
    (ProcessorConfig, "max_workers", 5.0, "must be an int"),
    (ProcessorConfig, "max_workers", True, "must be an int"),
    (ProcessorConfig, "timeout_per_item", "120", "must be an int or a float"),
    (ProcessorConfig, "retry", {"max_attempts": 3}, "must be a RetryConfig"),
    (ProcessorConfig, "rate_limit", None, "must be a RateLimitConfig"),
    (ProcessorConfig, "max_requests_per_minute", "60", "an int, a float or None"),
    (ProcessorConfig, "progress_interval", 1.5, "must be an int"),
    (ProcessorConfig, "progress_callback_timeout", "5", "an int, a float or None"),
    (ProcessorConfig, "enable_detailed_logging", "no", "must be a bool"),
    (ProcessorConfig, "max_queue_size", None, "must be an int"),
    (ProcessorConfig, "dry_run", 0, "must be a bool"),
    (ProcessorConfig, "max_tokens_per_minute", 1.5, "must be an int or None"),
    (ProcessorConfig, "max_input_tokens_per_minute", True, "must be an int or None"),
    (ProcessorConfig, "max_output_tokens_per_minute", "9", "must be an int or None"),
    (ProcessorConfig, "token_estimator", 4, "must be callable or None"),
    (ProcessorConfig, "quota_burst_seconds", "1", "an int, a float or None"),
    (ProcessorConfig, "quotas", 5, "must be a Mapping or None"),
    (ProcessorConfig, "guardrails", {"batch_timeout": 5}, "must be a GuardrailConfig"),
    (ProcessorConfig, "mode", 5, "must be one of 'online', 'batch'"),
    (ProcessorConfig, "batch_fallback", None, "must be one of 'batch', 'online'"),
    (ProcessorConfig, "quota_backend", "redis://127.0.0.1:6379", "must be a QuotaBackend"),
]


def _config_case(cls: type, field: str, value: object, allowed: str) -> Case:
    return Case(build(cls, **{field: value}), TypeError, (field, repr(value), allowed))


CASES: dict[str, Case] = {
    # Work items.
    "item_id-empty": Case(item(item_id=""), ValueError, ("item_id", "''", "non-empty string")),
    "item_id-whitespace": Case(
        item(item_id="  \t"), ValueError, ("item_id", r"'  \t'", "whitespace only")
    ),
    "item_id-int": Case(item(item_id=42), ValueError, ("item_id", "int 42", "non-empty string")),
    "item_id-None": Case(item(item_id=None), ValueError, ("item_id", "None", "non-empty string")),
    "item_id-bytes": Case(item(item_id=b"id"), ValueError, ("item_id", "b'id'", "string")),
    "strategy-str": Case(
        item(strategy="gemini"), TypeError, ("strategy", "'gemini'", "LLMCallStrategy")
    ),
    "strategy-None": Case(item(strategy=None), TypeError, ("strategy", "None", "LLMCallStrategy")),
    "strategy-without-execute": Case(
        item(strategy=NoExecute()), TypeError, ("strategy", "NoExecute", "execute(")
    ),
    "strategy-execute-not-callable": Case(
        item(strategy=ExecuteNotCallable()),
        TypeError,
        ("strategy", "ExecuteNotCallable", "execute("),
    ),
    "strategy-class-not-instance": Case(
        item(strategy=Echo), TypeError, ("strategy", "Echo", "instance")
    ),
    "prompt-None": Case(item(prompt=None), TypeError, ("prompt", "None", "must be a str")),
    # Queueing.
    "add_work-duplicate-item_id": Case(
        add_duplicate_id, ValueError, ("item_id", "'dup'", "unique")
    ),
    "add_work-not-a-work-item": Case(
        add_not_a_work_item, TypeError, ("work_item", "dict", "LLMWorkItem")
    ),
    "add_work-after-process_all": Case(
        add_after_process_all,
        RuntimeError,
        ("Cannot add work after process_all() has started", "new processor"),
    ),
    "add_work-bounded-queue-full": Case(
        add_beyond_a_full_bounded_queue, RuntimeError, ("max_queue_size=2", "full", "unbounded")
    ),
    # Config fields, wrong types (no silent coercion), one row each.
    **{
        f"{cls.__name__}.{field}={value!r}": _config_case(cls, field, value, allowed)
        for cls, field, value, allowed in CONFIG_FIELDS
    },
    # A config mutated after construction is refused when the processor receives it.
    "mutated-config-max_workers": Case(
        mutated_config("max_workers", "8"), TypeError, ("max_workers", "'8'", "must be an int")
    ),
    "mutated-config-retry": Case(
        mutated_config("retry", None), TypeError, ("retry", "None", "RetryConfig")
    ),
    # Processor arguments.
    "processor-config-dict": Case(
        build(ParallelBatchProcessor, config={"max_workers": 3}),
        TypeError,
        ("config", "dict", "ProcessorConfig"),
    ),
    "processor-post_processor-not-callable": Case(
        build(ParallelBatchProcessor, post_processor="print"),
        TypeError,
        ("post_processor", "'print'", "callable"),
    ),
    "processor-progress_callback-not-callable": Case(
        build(ParallelBatchProcessor, progress_callback=42),
        TypeError,
        ("progress_callback", "42", "callable"),
    ),
    "processor-error_classifier-without-classify": Case(
        build(ParallelBatchProcessor, error_classifier=object()),
        TypeError,
        ("error_classifier", "object", "classify("),
    ),
    "processor-observer-without-on_event": Case(
        build(ParallelBatchProcessor, observers=[BaseObserver(), print]),
        TypeError,
        ("observers[1]", "builtin_function_or_method", "on_event("),
    ),
    "processor-middleware-without-hooks": Case(
        build(ParallelBatchProcessor, middlewares=[BaseMiddleware(), "log"]),
        TypeError,
        ("middlewares[1]", "'log'", "before_process("),
    ),
    "processor-rate_limit_strategy-without-methods": Case(
        build(ParallelBatchProcessor, rate_limit_strategy=DefaultErrorClassifier()),
        TypeError,
        ("rate_limit_strategy", "DefaultErrorClassifier", "on_rate_limit("),
    ),
    "processor-clock-without-sleep": Case(
        build(ParallelBatchProcessor, clock=FixedDelayStrategy()),
        TypeError,
        ("clock", "FixedDelayStrategy", "sleep("),
    ),
}


async def make(case: Case) -> object:
    """Make the mistake; an ``add_work`` must fail at once, never wait (e.g. on a full queue)."""
    outcome = case.make_mistake()
    if asyncio.iscoroutine(outcome):
        return await asyncio.wait_for(outcome, timeout=5.0)
    return outcome


@pytest.mark.parametrize("name", list(CASES))
async def test_mistake_is_refused_where_it_is_made(name: str) -> None:
    case = CASES[name]
    with pytest.raises(case.error) as caught:
        await make(case)
    message = str(caught.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # The message says what went wrong in words, not just a repr.
    assert re.search(r"[a-z]{3,} [a-z]{2,}", message), message


def test_table_covers_every_config_field() -> None:
    covered = {(cls, field) for cls, field, _, _ in CONFIG_FIELDS}
    for cls in (RetryConfig, RateLimitConfig, ProcessorConfig):
        for field in cls.__dataclass_fields__:
            assert (cls, field) in covered, f"{cls.__name__}.{field} has no wrong-type row"


# ----------------------------------------------------------------------------- bad returns


class Returns(LLMCallStrategy[str]):
    """Returns ``value`` for the prompt ``"bad"``, a proper result otherwise."""

    def __init__(self, value: object) -> None:
        self.value = value

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        if prompt == "bad":
            return self.value  # type: ignore[return-value]  # deliberately malformed
        return prompt, USAGE


BAD_RETURNS: dict[str, object] = {
    "plain-string": "the answer",
    "None": None,
    "one-tuple": ("the answer",),
    "three-tuple": ("the answer", dict(USAGE), "extra"),
    "list-not-tuple": ["the answer", dict(USAGE)],
    "usage-None": ("the answer", None),
    "usage-int": ("the answer", 15),
    "usage-list": ("the answer", [("input_tokens", 3)]),
}


@pytest.mark.parametrize("name", list(BAD_RETURNS))
async def test_execute_returning_the_wrong_shape_fails_only_its_item(name: str) -> None:
    value = BAD_RETURNS[name]
    strategy = Returns(value)
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=ProcessorConfig(max_workers=2, retry=RetryConfig(max_attempts=3)),
        clock=FakeClock(),
    )
    async with processor:
        await processor.add_work(LLMWorkItem(item_id="before", strategy=strategy, prompt="ok1"))
        await processor.add_work(LLMWorkItem(item_id="bad", strategy=strategy, prompt="bad"))
        await processor.add_work(LLMWorkItem(item_id="after", strategy=strategy, prompt="ok2"))
        result = await asyncio.wait_for(processor.process_all(), 5.0)
    by_id = {r.item_id: r for r in result.results}
    assert result.total_items == 3
    assert by_id["before"].success
    assert by_id["after"].success
    bad = by_id["bad"]
    assert not bad.success
    assert bad.error is not None
    assert bad.error.startswith("TypeError: Returns.execute() must return a tuple (output, ")
    assert "token_usage" in bad.error
    assert repr(value)[:20] in bad.error
    assert result.total_input_tokens == 6  # the two good items; the malformed one reported none
