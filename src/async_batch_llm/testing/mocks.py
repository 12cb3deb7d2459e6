"""A fake pydantic-ai agent for tests: scripted latency, rate limits, timeouts and failures."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, cast, overload

from async_batch_llm._types import TOutput

__all__ = ["ClientError", "MockAgent", "MockResult", "MockUsage"]

_TIMEOUT_SLEEP_SECONDS = 999.0


class ClientError(Exception):
    """The rate-limit error :class:`MockAgent` raises on ``rate_limit_on_call``.

    Its message is ``429 RESOURCE_EXHAUSTED``. It is not google-genai's ``ClientError``; error
    classifiers recognise it by its class name and message, like a real Gemini rate limit.
    """


@dataclass
class MockUsage:
    """Token usage in the legacy pydantic-ai shape (``request_tokens``/``response_tokens``).

    Attributes:
        request_tokens: input tokens.
        response_tokens: output tokens.
        total_tokens: their sum, computed at construction.
    """

    request_tokens: int = 100
    response_tokens: int = 50
    total_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_tokens = self.request_tokens + self.response_tokens

    @property
    def input_tokens(self) -> int:
        """Alias of ``request_tokens`` (the current pydantic-ai name)."""
        return self.request_tokens

    @property
    def output_tokens(self) -> int:
        """Alias of ``response_tokens`` (the current pydantic-ai name)."""
        return self.response_tokens


class MockResult(Generic[TOutput]):
    """A fake agent run result.

    Attributes:
        output: the run's output.
        usage_info: the usage that :meth:`usage` returns.
    """

    def __init__(self, output: TOutput, usage_info: MockUsage | None = None) -> None:
        """Create a result.

        Args:
            output: the output of the run.
            usage_info: its token usage; ``None`` means ``MockUsage()`` (100 in, 50 out).
        """
        self.output = output
        self.usage_info = usage_info if usage_info is not None else MockUsage()

    def __repr__(self) -> str:
        return f"MockResult(output={self.output!r}, usage_info={self.usage_info!r})"

    def usage(self) -> MockUsage:
        """Return the token usage of the run (a method, as in legacy pydantic-ai)."""
        return self.usage_info

    def all_messages(self) -> list[Any]:
        """Return the run's message history: always empty."""
        return []


def _default_response(prompt: str) -> dict[str, str]:
    return {"response": "Mock response to: " + prompt[:50]}


class MockAgent(Generic[TOutput]):
    """A stand-in for a pydantic-ai ``Agent``, to use with ``PydanticAIStrategy``.

    Each :meth:`run` call counts itself, sleeps ``latency`` seconds through ``asyncio.sleep``
    (patch it, or pass ``latency=0``, for instant tests), then may raise a scripted error, and
    finally returns ``response_factory(prompt)`` with ``tokens_per_call`` as its usage.

    The scripted call numbers are compared with ``call_count`` *after* the latency sleep, so with
    concurrent callers a number can be skipped: two simultaneous first calls both see
    ``call_count == 2`` and ``rate_limit_on_call=1`` never fires. This mirrors async-batch-llm
    0.6.0 on purpose.

    Attributes:
        response_factory: builds the output from the prompt.
        latency: seconds each call sleeps before answering.
        failure_rate: probability (0.0 to 1.0) that a call raises ``Exception``.
        rate_limit_on_call: call number that raises :class:`ClientError` once, or ``None``.
        timeout_on_call: call number that sleeps 999 s once (to trip a timeout), or ``None``.
        tokens_per_call: usage of each call; ``input_tokens`` and ``output_tokens`` are read,
            ``total_tokens`` is ignored (the total is their sum).
        call_count: how many times :meth:`run` was called.

    Example:
        >>> agent = MockAgent(response_factory=lambda p: p.upper(), latency=0.0)
        >>> # strategy = PydanticAIStrategy(agent=agent)
    """

    @overload
    def __init__(
        self: MockAgent[dict[str, str]],
        response_factory: None = None,
        latency: float = 0.1,
        failure_rate: float = 0.0,
        rate_limit_on_call: int | None = None,
        timeout_on_call: int | None = None,
        tokens_per_call: dict[str, int] | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        response_factory: Callable[[str], TOutput],
        latency: float = 0.1,
        failure_rate: float = 0.0,
        rate_limit_on_call: int | None = None,
        timeout_on_call: int | None = None,
        tokens_per_call: dict[str, int] | None = None,
    ) -> None: ...

    def __init__(
        self,
        response_factory: Callable[[str], Any] | None = None,
        latency: float = 0.1,
        failure_rate: float = 0.0,
        rate_limit_on_call: int | None = None,
        timeout_on_call: int | None = None,
        tokens_per_call: dict[str, int] | None = None,
    ) -> None:
        """Create an agent.

        Args:
            response_factory: builds each output from the prompt; exceptions it raises
                propagate unchanged. Default: ``{"response": "Mock response to: " + prompt[:50]}``.
            latency: seconds each call sleeps before answering.
            failure_rate: probability (0.0 to 1.0, drawn with ``random.random()``) that a call
                raises ``Exception("Random failure on call <n>")``.
            rate_limit_on_call: call number that raises ``ClientError("429 RESOURCE_EXHAUSTED")``
                (at most once per agent).
            timeout_on_call: call number that sleeps 999 seconds so the processor's per-item
                timeout fires (at most once per agent).
            tokens_per_call: usage of every call. Default: 10 input and 20 output tokens.
        """
        # The overloads tie the default factory to MockAgent[dict[str, str]].
        self.response_factory = cast(
            "Callable[[str], TOutput]",
            response_factory if response_factory is not None else _default_response,
        )
        self.latency = latency
        self.failure_rate = failure_rate
        self.rate_limit_on_call = rate_limit_on_call
        self.timeout_on_call = timeout_on_call
        self.tokens_per_call: dict[str, int] = (
            tokens_per_call
            if tokens_per_call is not None
            else {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
        )
        self.call_count = 0
        self._rate_limit_fired = False
        self._timeout_fired = False

    def __repr__(self) -> str:
        return (
            f"MockAgent(latency={self.latency!r}, failure_rate={self.failure_rate!r}, "
            f"rate_limit_on_call={self.rate_limit_on_call!r}, "
            f"timeout_on_call={self.timeout_on_call!r}, call_count={self.call_count})"
        )

    async def run(self, prompt: str, **kwargs: Any) -> MockResult[TOutput]:
        """Answer one prompt, as ``Agent.run`` does.

        Args:
            prompt: the prompt.
            **kwargs: accepted and ignored.

        Returns:
            ``MockResult(response_factory(prompt), usage)`` with the usage of
            ``tokens_per_call``.

        Raises:
            ClientError: on the ``rate_limit_on_call``-th call (see the class docstring).
            Exception: with probability ``failure_rate``, or whatever ``response_factory``
                raises.
        """
        self.call_count += 1
        await asyncio.sleep(self.latency)
        # call_count is read after the sleep on purpose (see the class docstring).
        if (
            self.rate_limit_on_call is not None
            and not self._rate_limit_fired
            and self.call_count == self.rate_limit_on_call
        ):
            self._rate_limit_fired = True
            raise ClientError("429 RESOURCE_EXHAUSTED")
        if (
            self.timeout_on_call is not None
            and not self._timeout_fired
            and self.call_count == self.timeout_on_call
        ):
            self._timeout_fired = True
            await asyncio.sleep(_TIMEOUT_SLEEP_SECONDS)
        # Skip the draw when failures are off so the global random sequence is left untouched.
        if self.failure_rate > 0 and random.random() < self.failure_rate:
            raise Exception(f"Random failure on call {self.call_count}")
        output = self.response_factory(prompt)
        usage = MockUsage(
            request_tokens=self.tokens_per_call.get("input_tokens", 10),
            response_tokens=self.tokens_per_call.get("output_tokens", 20),
        )
        return MockResult(output, usage)
