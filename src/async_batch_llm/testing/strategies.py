"""Shortcut from a :class:`MockAgent` to a ready strategy."""

from __future__ import annotations

from async_batch_llm._strategies.pydantic_ai import PydanticAIStrategy
from async_batch_llm._types import TOutput
from async_batch_llm.testing.mocks import MockAgent

__all__ = ["mock_strategy"]


def mock_strategy(mock_agent: MockAgent[TOutput]) -> PydanticAIStrategy[TOutput]:
    """Wrap ``mock_agent`` in a :class:`PydanticAIStrategy`.

    Args:
        mock_agent: the fake agent the strategy will call.

    Returns:
        ``PydanticAIStrategy(agent=mock_agent)``.

    Raises:
        ImportError: if pydantic-ai is not installed (``PydanticAIStrategy`` requires it).
    """
    return PydanticAIStrategy(agent=mock_agent)
