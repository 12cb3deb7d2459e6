"""Data types shared by every part of the library.

The public home of these names is :mod:`async_batch_llm.base`; they live here so that the
strategies, observers and middleware modules can import them without importing the processor.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypedDict, TypeVar

if TYPE_CHECKING:
    from async_batch_llm._strategies.base import LLMCallStrategy

__all__ = [
    "BatchResult",
    "BatchTermination",
    "LLMResponse",
    "LLMWorkItem",
    "PostProcessorFunc",
    "ProcessingStats",
    "ProgressCallbackFunc",
    "RetryState",
    "TContext",
    "TInput",
    "TOutput",
    "TerminationKind",
    "TokenUsage",
    "WorkItemResult",
]

TInput = TypeVar("TInput")
TOutput = TypeVar("TOutput")
TContext = TypeVar("TContext")


class TokenUsage(TypedDict, total=False):
    """Token counts of one call or one item. Every key is optional; read with ``.get(key, 0)``."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int


def _zero_usage() -> TokenUsage:
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


@dataclass
class RetryState:
    """Scratch pad that one work item carries across its attempts.

    The processor creates one per item before the first attempt and hands the same object to
    every ``execute()`` and ``on_error()`` call of that item. Items never share one.
    """

    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value stored under ``key``, or ``default``."""
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        self.data[key] = value

    def delete(self, key: str, raise_if_missing: bool = False) -> None:
        """Remove ``key``.

        Raises:
            KeyError: if the key is absent and ``raise_if_missing`` is true.
        """
        if key in self.data:
            del self.data[key]
        elif raise_if_missing:
            raise KeyError(key)

    def clear(self) -> None:
        """Remove every key."""
        self.data.clear()

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __repr__(self) -> str:
        return f"RetryState({self.data!r})"


@dataclass
class LLMResponse:
    """Provider-neutral result of :meth:`LLMModel.generate`.

    Attributes:
        text: the generated text.
        input_tokens, output_tokens, total_tokens, cached_input_tokens: token counts.
        metadata: provider extras (for Gemini ``safety_ratings`` and ``finish_reason``).
        raw: the untouched provider response.
    """

    text: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int = 0
    metadata: dict[str, Any] | None = None
    raw: Any = None

    @property
    def token_usage(self) -> TokenUsage:
        """A new :class:`TokenUsage`; ``cached_input_tokens`` only when non-zero."""
        usage: TokenUsage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_input_tokens:
            usage["cached_input_tokens"] = self.cached_input_tokens
        return usage


@dataclass
class LLMWorkItem(Generic[TInput, TOutput, TContext]):
    """One unit of work: an id, the strategy that calls the model, the prompt and a context.

    Raises:
        ValueError: if ``item_id`` is not a non-empty string, or is only whitespace.
    """

    item_id: str
    strategy: LLMCallStrategy[TOutput]
    prompt: str = ""
    context: TContext | None = None

    def __post_init__(self) -> None:
        item_id: object = self.item_id
        if not isinstance(item_id, str) or not item_id:
            raise ValueError(
                f"item_id must be a non-empty string, got {type(item_id).__name__} {item_id!r}"
            )
        if not item_id.strip():
            raise ValueError(f"item_id cannot be whitespace only, got {item_id!r}")
        strategy: object = self.strategy
        if isinstance(strategy, type):
            raise TypeError(
                f"strategy of item {item_id!r} must be an LLMCallStrategy instance, got the class "
                f"{strategy.__name__} itself (did you mean {strategy.__name__}(...)?)"
            )
        if not callable(getattr(strategy, "execute", None)):
            raise TypeError(
                f"strategy of item {item_id!r} must be an LLMCallStrategy (an object with an async "
                f"execute(prompt, attempt, timeout, state) method), got "
                f"{type(strategy).__name__}: {strategy!r:.100}"
            )
        prompt: object = self.prompt
        if prompt is None:
            raise TypeError(
                f'prompt of item {item_id!r} must be a str (use "" for an empty prompt), got None'
            )


@dataclass
class WorkItemResult(Generic[TOutput, TContext]):
    """The outcome of one work item: its output on success, its error string on failure."""

    item_id: str
    success: bool
    output: TOutput | None = None
    error: str | None = None
    context: TContext | None = None
    token_usage: TokenUsage = field(default_factory=_zero_usage)
    gemini_safety_ratings: dict[str, str] | None = None
    replayed_from_artifact: bool = False
    """``True`` when this result was read back from an artifact store instead of being computed
    in this run (no call was made for it; ``token_usage`` is what the original run spent)."""
    error_category: str | None = None
    """Why the item failed, as one short label (``None`` on success): ``"rate_limit"``,
    ``"timeout"``, ``"validation"``, ``"authentication"``, ``"insufficient_quota"``,
    ``"model_not_found"``, ``"bad_request"``, ``"server_error"``, ``"connection"``,
    ``"logic_error"``, ``"budget_exceeded"``, ``"batch_timeout"``, ``"item_timeout"``,
    ``"fail_fast"``, ``"cancelled"`` or ``"unknown"`` (docs/guardrails.md)."""
    cost: float | None = None
    """What the item's attempts cost in dollars, priced by ``GuardrailConfig.cost_function``;
    ``None`` when no cost function is configured."""


TerminationKind = Literal["completed", "batch_timeout", "budget_exceeded", "fail_fast", "cancelled"]
"""Why a batch ended (:attr:`BatchTermination.kind`)."""


@dataclass(frozen=True)
class BatchTermination:
    """Why a batch ended.

    Attributes:
        kind: ``"completed"`` (every item ran), ``"batch_timeout"``
            (``GuardrailConfig.batch_timeout`` passed), ``"budget_exceeded"`` (an attempt would
            have passed ``max_total_tokens`` or ``max_total_cost``), ``"fail_fast"`` (an answer
            whose category is in ``abort_on_error_categories``) or ``"cancelled"`` (the batch
            stopped taking items for another reason, such as a failing artifact store).
        reason: one human-readable sentence.
        error_category: the category that stopped the batch (for ``"fail_fast"`` the triggering
            answer's, e.g. ``"authentication"``); ``None`` when the batch completed.
        triggering_item_id: the item whose answer or attempt stopped the batch, if any.
    """

    kind: TerminationKind
    reason: str
    error_category: str | None = None
    triggering_item_id: str | None = None


COMPLETED = BatchTermination("completed", "every item was processed")


@dataclass
class BatchResult(Generic[TOutput, TContext]):
    """Every result of a batch plus totals recomputed from them.

    The summary fields are always derived from ``results``; values passed for them are ignored.
    Token totals cover successful and failed items alike.
    """

    results: list[WorkItemResult[TOutput, TContext]]
    total_items: int = 0
    succeeded: int = 0
    failed: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cached_tokens: int = 0
    termination: BatchTermination = COMPLETED
    """Why the batch ended (``kind == "completed"`` unless a guardrail stopped it)."""
    total_cost: float | None = None
    """The sum of the results' ``cost``; ``None`` when no result carries one. Derived."""

    def __post_init__(self) -> None:
        succeeded = input_tokens = output_tokens = cached = 0
        cost: float | None = None
        for result in self.results:
            if result.success:
                succeeded += 1
            usage = result.token_usage
            input_tokens += usage.get("input_tokens", 0)
            output_tokens += usage.get("output_tokens", 0)
            cached += usage.get("cached_input_tokens", 0)
            if result.cost is not None:
                cost = result.cost if cost is None else cost + result.cost
        self.total_cost = cost
        self.total_items = len(self.results)
        self.succeeded = succeeded
        self.failed = self.total_items - succeeded
        self.total_input_tokens = input_tokens
        self.total_output_tokens = output_tokens
        self.total_cached_tokens = cached

    def to_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every result to ``path`` as JSON Lines (one result per line); returns the count.

        Outputs are written as the artifact stores hold them (strings, JSON values, pydantic
        models as their fields); contexts are not written.

        Raises:
            UnstorableOutputError: an output has no JSON form (the message names the item).
        """
        from async_batch_llm._internal.artifacts.results_io import write_results

        return write_results(self.results, path)

    @classmethod
    def from_jsonl(
        cls, path: str | os.PathLike[str], *, output_type: type | None = None
    ) -> BatchResult[Any, None]:
        """Read a file written by :meth:`to_jsonl` back into a ``BatchResult``.

        Args:
            path: the JSON Lines file.
            output_type: the pydantic model of model outputs (else they come back as dicts).
        """
        from async_batch_llm._internal.artifacts.results_io import read_results

        return BatchResult(results=list(read_results(path, output_type)))

    def cache_hit_rate(self) -> float:
        """Cached input tokens as a percentage (0..100) of input tokens; 0.0 with no input."""
        if self.total_input_tokens == 0:
            return 0.0
        return (self.total_cached_tokens / self.total_input_tokens) * 100.0

    def effective_input_tokens(self) -> int:
        """Input tokens with cached tokens billed at 10%: ``input - int(cached * 0.9)``."""
        return self.total_input_tokens - int(self.total_cached_tokens * 0.9)


@dataclass
class ProcessingStats:
    """Live counters of a processor; :meth:`copy` is what ``get_stats()`` returns."""

    total: int = 0
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    start_time: float | None = None
    error_counts: dict[str, int] = field(default_factory=dict)
    rate_limit_count: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    total_cached_tokens: int = 0

    def copy(self) -> dict[str, Any]:
        """A plain dict of the twelve counters (``error_counts`` copied)."""
        return {
            "total": self.total,
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "start_time": self.start_time,
            "error_counts": dict(self.error_counts),
            "rate_limit_count": self.rate_limit_count,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "total_cached_tokens": self.total_cached_tokens,
        }


PostProcessorFunc = Callable[[WorkItemResult[TOutput, TContext]], Awaitable[None] | None]
"""Called once per result, success or failure; plain function or coroutine function."""

ProgressCallbackFunc = Callable[[int, int, str], Awaitable[None] | None]
"""Called with ``(completed, total, current_item_id)`` every ``progress_interval`` items."""
