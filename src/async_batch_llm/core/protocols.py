"""Structural protocols: models the strategies call and agent shapes for typing."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from async_batch_llm._types import LLMResponse

__all__ = ["AgentLike", "LLMModel", "ManagedLLMModel", "ResultLike", "TOutput", "UsageLike"]

TOutput = TypeVar("TOutput", bound=BaseModel, covariant=True)


@runtime_checkable
class LLMModel(Protocol):
    """A model that turns a prompt into an :class:`LLMResponse`."""

    async def generate(
        self,
        prompt: str | list[Any],
        *,
        temperature: float = 0.0,
        system_instruction: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> LLMResponse:
        """Generate a response; ``config`` entries are merged into the provider request."""
        ...


@runtime_checkable
class ManagedLLMModel(LLMModel, Protocol):
    """An :class:`LLMModel` holding a resource that is prepared once and cleaned up once."""

    async def prepare(self) -> None:
        """Acquire the resource (idempotent)."""
        ...

    async def cleanup(self) -> None:
        """Release the resource (idempotent)."""
        ...


class UsageLike(Protocol):
    """Legacy pydantic-ai usage shape."""

    @property
    def request_tokens(self) -> int: ...

    @property
    def response_tokens(self) -> int: ...

    @property
    def total_tokens(self) -> int: ...


class ResultLike(Protocol[TOutput]):
    """Legacy pydantic-ai run result shape."""

    @property
    def output(self) -> TOutput: ...

    def usage(self) -> UsageLike | None: ...

    def all_messages(self) -> list[Any]: ...


class AgentLike(Protocol[TOutput]):
    """Anything with ``async run(prompt, **kwargs)`` returning a :class:`ResultLike`."""

    async def run(self, prompt: str, **kwargs: Any) -> ResultLike[TOutput]: ...
