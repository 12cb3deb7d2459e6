"""The strategy base class: how one work item calls a model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Generic

from async_batch_llm._types import RetryState, TokenUsage, TOutput

__all__ = ["LLMCallStrategy"]


class LLMCallStrategy(ABC, Generic[TOutput]):
    """How a work item calls an LLM.

    Subclasses implement :meth:`execute`; the other hooks have no-op defaults. One strategy
    object may be shared by many items: :meth:`prepare` then runs once per processor (before the
    first attempt that uses it) and :meth:`cleanup` once when the processor exits.

    ``execute`` and ``on_error`` may omit the ``state`` parameter; the processor passes it only
    to methods that accept it.

    Attributes:
        quota_scope: items of strategies with the same scope share quota limits (see
            :mod:`async_batch_llm.quota`); override as a class attribute or a property.
    """

    if TYPE_CHECKING:
        # Typed as a read-only property so subclasses may override it with either a class
        # attribute or a property; at run time it is the class attribute below.
        @property
        def quota_scope(self) -> str:
            """The quota scope whose limits this strategy's attempts count against."""
            ...
    else:
        quota_scope = "default"

    async def prepare(self) -> None:
        """Acquire shared resources (a context cache, a client) before the first call."""

    @abstractmethod
    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[TOutput, TokenUsage]:
        """Call the model once.

        Args:
            prompt: the work item's prompt.
            attempt: 1-based attempt number.
            timeout: the per-attempt limit in seconds (the processor enforces it).
            state: the item's :class:`RetryState`, shared across its attempts.

        Returns:
            The parsed output and the token usage of this call.

        Raises:
            Exception: any failure; the processor's error classifier decides whether to retry.
        """

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        """Observe a failed attempt (for example to adjust ``state`` before the next one)."""

    async def cleanup(self) -> None:
        """Release what :meth:`prepare` acquired; runs once when the processor exits."""

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """Return a placeholder output instead of calling the model (``ProcessorConfig.dry_run``).

        The default returns a string; subclasses with a structured output should override it.
        """
        output = f"[DRY-RUN] Mock output for prompt: {prompt[:50]}..."
        usage: TokenUsage = {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}
        return output, usage  # type: ignore[return-value]  # default output is a str
