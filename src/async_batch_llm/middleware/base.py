"""The middleware interface: hooks before, after and on the failure of a work item's attempt."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic

from async_batch_llm._types import LLMWorkItem, TContext, TInput, TOutput, WorkItemResult

__all__ = ["BaseMiddleware", "Middleware"]


class Middleware(ABC, Generic[TInput, TOutput, TContext]):
    """Hooks the processor runs around every attempt of a work item.

    With ``middlewares=[a, b]`` the processor calls ``a.before_process``, ``b.before_process``,
    then (on success) ``b.after_process``, ``a.after_process``. A hook that raises is logged and
    skipped; cancellation is never swallowed. Subclass :class:`BaseMiddleware` to override only
    the hooks you need.
    """

    @abstractmethod
    async def before_process(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext]
    ) -> LLMWorkItem[TInput, TOutput, TContext] | None:
        """Prepare an attempt; runs before every attempt, in list order.

        Args:
            work_item: the item as returned by the previous middleware (it may be modified in
                place, for example its ``prompt``).

        Returns:
            The item to process (the same object or a replacement), or ``None`` to skip the item:
            it then fails with the error ``"Skipped by middleware"``.
        """

    @abstractmethod
    async def after_process(
        self, result: WorkItemResult[TOutput, TContext]
    ) -> WorkItemResult[TOutput, TContext]:
        """Post-process the result of a successful attempt; runs in reverse list order.

        Args:
            result: the result as returned by the previous middleware.

        Returns:
            The result to keep (the same object or a replacement).
        """

    @abstractmethod
    async def on_error(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext], error: Exception
    ) -> WorkItemResult[TOutput, TContext] | None:
        """Offer a result for an item that is about to fail; runs in list order.

        It is called for errors that will not be retried. The first middleware returning a
        result wins and the remaining ones are not asked.

        Args:
            work_item: the failing item.
            error: the exception of the failed attempt.

        Returns:
            A result to use instead of the default failure (it may even report success), or
            ``None`` to let the item fail.
        """


class BaseMiddleware(Middleware[TInput, TOutput, TContext]):
    """A middleware that changes nothing: items and results pass through, errors are not handled."""

    async def before_process(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext]
    ) -> LLMWorkItem[TInput, TOutput, TContext] | None:
        """Return ``work_item`` unchanged."""
        return work_item

    async def after_process(
        self, result: WorkItemResult[TOutput, TContext]
    ) -> WorkItemResult[TOutput, TContext]:
        """Return ``result`` unchanged."""
        return result

    async def on_error(
        self, work_item: LLMWorkItem[TInput, TOutput, TContext], error: Exception
    ) -> WorkItemResult[TOutput, TContext] | None:
        """Return ``None``: the item fails as it would without middleware."""
        return None
