"""Middleware (abstract hooks) and BaseMiddleware (pass-through defaults)."""

from __future__ import annotations

import pytest

import async_batch_llm.middleware as middleware_pkg
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._types import LLMWorkItem, RetryState, TokenUsage, WorkItemResult
from async_batch_llm.middleware import BaseMiddleware, Middleware
from async_batch_llm.middleware import base as middleware_base


class EchoStrategy(LLMCallStrategy[str]):
    async def execute(
        self,
        prompt: str,
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[str, TokenUsage]:
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


def make_item(prompt: str = "hello") -> LLMWorkItem[str, str, dict[str, int]]:
    return LLMWorkItem(item_id="item-1", strategy=EchoStrategy(), prompt=prompt, context={"n": 1})


def test_module_exports() -> None:
    assert middleware_pkg.__all__ == ["BaseMiddleware", "Middleware"]
    assert middleware_base.__all__ == ["BaseMiddleware", "Middleware"]
    assert middleware_base.Middleware is Middleware
    assert middleware_base.BaseMiddleware is BaseMiddleware


def test_middleware_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        Middleware()  # type: ignore[abstract]


def test_all_three_hooks_are_abstract() -> None:
    assert Middleware.__abstractmethods__ == frozenset(
        {"before_process", "after_process", "on_error"}
    )


def test_subclass_missing_a_hook_cannot_be_instantiated() -> None:
    class Partial(Middleware[str, str, None]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, None]
        ) -> LLMWorkItem[str, str, None] | None:
            return work_item

        async def after_process(
            self, result: WorkItemResult[str, None]
        ) -> WorkItemResult[str, None]:
            return result

    with pytest.raises(TypeError, match="on_error"):
        Partial()  # type: ignore[abstract]


async def test_full_subclass_of_middleware_works() -> None:
    class Upper(Middleware[str, str, dict[str, int]]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, dict[str, int]]
        ) -> LLMWorkItem[str, str, dict[str, int]] | None:
            work_item.prompt = work_item.prompt.upper()
            return work_item

        async def after_process(
            self, result: WorkItemResult[str, dict[str, int]]
        ) -> WorkItemResult[str, dict[str, int]]:
            return result

        async def on_error(
            self, work_item: LLMWorkItem[str, str, dict[str, int]], error: Exception
        ) -> WorkItemResult[str, dict[str, int]] | None:
            return WorkItemResult(item_id=work_item.item_id, success=False, error=str(error))

    middleware = Upper()
    item = make_item()
    processed = await middleware.before_process(item)
    assert processed is item
    assert item.prompt == "HELLO"
    handled = await middleware.on_error(item, RuntimeError("boom"))
    assert handled == WorkItemResult(item_id="item-1", success=False, error="boom")


async def test_base_middleware_passes_item_through_unchanged() -> None:
    middleware: BaseMiddleware[str, str, dict[str, int]] = BaseMiddleware()
    assert isinstance(middleware, Middleware)
    item = make_item()
    returned = await middleware.before_process(item)
    assert returned is item
    assert item.prompt == "hello"
    assert item.context == {"n": 1}


async def test_base_middleware_passes_result_through_unchanged() -> None:
    middleware: BaseMiddleware[str, str, None] = BaseMiddleware()
    result: WorkItemResult[str, None] = WorkItemResult(item_id="a", success=True, output="x")
    returned = await middleware.after_process(result)
    assert returned is result
    assert returned == WorkItemResult(item_id="a", success=True, output="x")


async def test_base_middleware_does_not_handle_errors() -> None:
    middleware: BaseMiddleware[str, str, dict[str, int]] = BaseMiddleware()
    assert await middleware.on_error(make_item(), ValueError("bad")) is None


async def test_base_middleware_subclass_overrides_only_what_it_needs() -> None:
    class SkipEmpty(BaseMiddleware[str, str, dict[str, int]]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, dict[str, int]]
        ) -> LLMWorkItem[str, str, dict[str, int]] | None:
            return work_item if work_item.prompt else None

    middleware = SkipEmpty()
    assert await middleware.before_process(make_item(prompt="")) is None
    item = make_item()
    assert await middleware.before_process(item) is item
    result: WorkItemResult[str, dict[str, int]] = WorkItemResult(item_id="a", success=True)
    assert await middleware.after_process(result) is result
    assert await middleware.on_error(item, RuntimeError()) is None
