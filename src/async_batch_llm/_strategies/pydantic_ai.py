"""``PydanticAIStrategy``: run a pydantic-ai ``Agent`` (or any agent with ``async run``)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, cast

from pydantic import BaseModel

from async_batch_llm._internal.tokens import FAILED_USAGE_ATTR
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._types import RetryState, TokenUsage, TOutput
from async_batch_llm.strategies.errors import TokenTrackingError

__all__ = ["PydanticAIStrategy"]

_INSTALL_HINT = (
    "pydantic-ai is required for PydanticAIStrategy; "
    "install it with: pip install 'async-batch-llm[pydantic-ai]'"
)


def _pydantic_ai_installed() -> bool:
    return importlib.util.find_spec("pydantic_ai") is not None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _usage_counts(usage: Any) -> TokenUsage:
    """Input, output and total tokens of one usage object, current or legacy attribute names.

    Cached input tokens (pydantic-ai's ``cache_read_tokens``, already part of ``input_tokens``)
    are added as ``cached_input_tokens`` when non-zero, so cache hit rates and effective cost are
    right; the three keys of the published API are always present.
    """
    input_tokens = _int_or_none(getattr(usage, "input_tokens", None))
    if input_tokens is None:
        input_tokens = _int_or_none(getattr(usage, "request_tokens", None)) or 0
    output_tokens = _int_or_none(getattr(usage, "output_tokens", None))
    if output_tokens is None:
        output_tokens = _int_or_none(getattr(usage, "response_tokens", None)) or 0
    total = _int_or_none(getattr(usage, "total_tokens", None)) or 0
    counts: TokenUsage = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": total,
    }
    cached = _int_or_none(getattr(usage, "cache_read_tokens", None))
    if cached:
        counts["cached_input_tokens"] = cached
    return counts


def read_usage(result: object) -> TokenUsage:
    """Token usage of an agent run, for both the legacy and the current pydantic-ai shapes.

    ``result.usage`` is called when it is a method (legacy ``request_tokens``/``response_tokens``
    and :class:`~async_batch_llm.testing.MockResult`) and read when it is a property (pydantic-ai
    2.x ``RunUsage`` with ``input_tokens``/``output_tokens``).
    """
    usage: Any = getattr(result, "usage", None)
    if callable(usage):
        usage = usage()
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return _usage_counts(usage)


def usage_of_messages(messages: list[Any]) -> TokenUsage:
    """Tokens of every model response among a run's messages (what a failed run still cost).

    Args:
        messages: the messages ``pydantic_ai.capture_run_messages()`` captured; responses are the
            ones whose ``kind`` is ``"response"``.

    Returns:
        ``input_tokens``, ``output_tokens`` and ``total_tokens`` summed over the responses.
    """
    spent: TokenUsage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    for message in messages:
        if getattr(message, "kind", None) != "response":
            continue
        usage = getattr(message, "usage", None)
        if usage is None:
            continue
        counts = _usage_counts(usage)
        spent["input_tokens"] += counts["input_tokens"]
        spent["output_tokens"] += counts["output_tokens"]
        spent["total_tokens"] += counts["total_tokens"]
        cached = counts.get("cached_input_tokens", 0)
        if cached:
            spent["cached_input_tokens"] = spent.get("cached_input_tokens", 0) + cached
    return spent


def _run_capture(agent: object) -> Callable[[], AbstractContextManager[list[Any]]] | None:
    """pydantic-ai's ``capture_run_messages`` when ``agent`` is a pydantic-ai agent, else ``None``.

    A real agent implies that pydantic-ai is loaded, so :data:`sys.modules` answers without
    importing anything; duck-typed agents (``MockAgent``) get ``None`` and never pay for it.
    """
    module = sys.modules.get("pydantic_ai")
    if module is None:
        return None
    agent_module = sys.modules.get("pydantic_ai.agent")
    agent_type = getattr(agent_module, "AbstractAgent", None) or getattr(module, "Agent", None)
    capture = getattr(module, "capture_run_messages", None)
    if isinstance(agent_type, type) and callable(capture) and isinstance(agent, agent_type):
        return cast("Callable[[], AbstractContextManager[list[Any]]]", capture)
    return None


class PydanticAIStrategy(LLMCallStrategy[TOutput], Generic[TOutput]):
    """Call a pydantic-ai ``Agent`` once per attempt and return its validated output.

    Args:
        agent: a ``pydantic_ai.Agent`` or any object with ``async run(prompt)`` whose result has
            ``output`` and ``usage`` (for example :class:`async_batch_llm.testing.MockAgent`).

    Raises:
        ImportError: when pydantic-ai is not installed.
    """

    def __init__(self, agent: Any) -> None:
        if not _pydantic_ai_installed():
            raise ImportError(_INSTALL_HINT)
        self.agent = agent

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[TOutput, TokenUsage]:
        """Run the agent once and return its output and token usage.

        Usage is read before the output, so a failing output still reports it. When a
        pydantic-ai run itself raises (for example ``UnexpectedModelBehavior`` after the agent's
        own output retries, or a ``ModelHTTPError`` after some responses), the tokens of every
        model response of that run are attached to the exception under ``_failed_token_usage``
        (spec §4.7, D9), unless the exception already carries an attachment.
        """
        capture = _run_capture(self.agent)
        if capture is None:
            result = await self.agent.run(prompt)
        else:
            with capture() as messages:
                try:
                    result = await self.agent.run(prompt)
                except Exception as exc:
                    _attach_run_usage(exc, usage_of_messages(messages))
                    raise
        usage = read_usage(result)
        try:
            output: TOutput = result.output
        except Exception as exc:
            if hasattr(exc, "__dict__"):
                exc.__dict__[FAILED_USAGE_ATTR] = usage
                raise
            raise TokenTrackingError(str(exc), token_usage=usage) from exc
        return output, usage

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """A model-shaped placeholder when the agent declares a pydantic output type."""
        try:
            for name in ("result_type", "output_type"):
                declared = getattr(self.agent, name, None)
                if isinstance(declared, type) and issubclass(declared, BaseModel):
                    words = len(prompt.split())
                    placeholder: Any = declared.model_construct()
                    usage: TokenUsage = {
                        "input_tokens": words,
                        "output_tokens": 50,
                        "total_tokens": words + 50,
                    }
                    return placeholder, usage
        except Exception:  # fall back to the generic placeholder, as documented
            pass
        return await super().dry_run(prompt)

    def __repr__(self) -> str:
        return f"PydanticAIStrategy(agent={self.agent!r})"


def _attach_run_usage(exc: Exception, usage: TokenUsage) -> None:
    """Attach what a failed run cost, unless it cost nothing or the exception has an attachment.

    The exception keeps its type (its classification depends on it), so an exception object
    that cannot take attributes goes without.
    """
    attributes: Any = getattr(exc, "__dict__", None)
    if any(usage.values()) and isinstance(attributes, dict):
        attributes.setdefault(FAILED_USAGE_ATTR, usage)
