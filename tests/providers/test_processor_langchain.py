"""``ParallelBatchProcessor`` driving LangChain's ``ChatOpenAI`` against the local OpenAI server.

The strategies are what a user writes around ``ChatOpenAI.ainvoke``; usage comes from the
message's ``usage_metadata`` (``input_token_details.cache_read`` for cached prompt tokens).
``max_retries=0`` keeps one HTTP request per processor attempt.

LangChain caveat found here: with ``with_structured_output(..., method="json_schema")`` (the
default) the ``openai`` SDK validates the reply itself and raises ``ValidationError`` before
LangChain sees the usage, so a user strategy cannot report what that failed call cost. The
structured strategy below uses ``method="function_calling"`` with ``include_raw=True``, which
returns the raw message (and its usage) alongside the parsing error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models import base
from pydantic import BaseModel, SecretStr

from async_batch_llm import (
    LLMCallStrategy,
    RetryState,
    TokenUsage,
)
from async_batch_llm.classifiers import OpenAIErrorClassifier
from async_batch_llm.testing.servers import (
    ErrorResponse,
    Hang,
    OpenAIServer,
    ProviderRequest,
    Reply,
    ServerError,
    ToolCall,
)

from ._support import run

pytestmark = pytest.mark.timeout(15)

GPT = "gpt-4o-mini"
OPENAI = OpenAIErrorClassifier()


class City(BaseModel):
    name: str
    population: int


class EmptyOutputError(Exception):
    """The model's reply held no structured output at all."""


def usage_of(message: AIMessage) -> TokenUsage:
    usage = message.usage_metadata
    assert usage is not None
    tokens: TokenUsage = {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    cached = usage.get("input_token_details", {}).get("cache_read", 0)
    if cached:
        tokens["cached_input_tokens"] = cached
    return tokens


class ChatStrategy(LLMCallStrategy[str]):
    """``ChatOpenAI.ainvoke`` once per attempt."""

    def __init__(self, llm: ChatOpenAI, system: str | None = None) -> None:
        self.llm = llm
        self.system = system

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        messages: list[tuple[str, str]] = [("human", prompt)]
        if self.system is not None:
            messages.insert(0, ("system", self.system))
        message = await self.llm.ainvoke(messages)
        assert isinstance(message.content, str)
        return message.content, usage_of(message)


class CityStrategy(LLMCallStrategy[City]):
    """Structured output; a parsing failure is raised with the tokens its call cost."""

    def __init__(self, llm: ChatOpenAI) -> None:
        self.structured: Runnable[Any, Any] = llm.with_structured_output(
            City, method="function_calling", include_raw=True
        )

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[City, TokenUsage]:
        result = await self.structured.ainvoke(prompt)
        tokens = usage_of(result["raw"])
        error = result["parsing_error"]
        if error is None and not isinstance(result["parsed"], City):
            error = EmptyOutputError(f"no City in the reply to {prompt!r}")
        if error is not None:
            error.__dict__["_failed_token_usage"] = tokens  # spec §4.7: the attempt's cost
            raise error
        return result["parsed"], tokens


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as running:
        yield running


@pytest.fixture
async def llm(server: OpenAIServer) -> AsyncIterator[ChatOpenAI]:
    chat = ChatOpenAI(base_url=server.base_url, api_key=SecretStr("test"), model=GPT, max_retries=0)
    yield chat
    await chat.root_async_client.close()


async def test_batch_outputs_tokens_and_request_counts(
    server: OpenAIServer, llm: ChatOpenAI
) -> None:
    prompts = [f"question number {i}" for i in range(12)]
    server.latency = 0.02  # long enough for the four workers to overlap

    result = await run(ChatStrategy(llm), prompts, workers=4, classifier=OPENAI)

    assert (result.succeeded, result.failed) == (12, 0)
    for item in result.results:
        assert item.output == f"echo: {item.item_id}"
        assert item.token_usage == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert (result.total_input_tokens, result.total_output_tokens) == (36, 48)
    assert server.counts == {"chat_completions": 12}
    assert server.max_in_flight == 4


async def test_cached_prompt_tokens_reach_the_batch_totals(
    server: OpenAIServer, llm: ChatOpenAI
) -> None:
    strategy = ChatStrategy(llm, system="word " * 1300)

    result = await run(strategy, ["q0", "q1", "q2"], classifier=OPENAI)

    assert [r.token_usage.get("cached_input_tokens", 0) for r in result.results] == [
        0,
        1280,
        1280,
    ]
    assert result.total_input_tokens == 3 * 1301
    assert result.total_cached_tokens == 2 * 1280
    assert server.counts == {"chat_completions": 3}


async def test_invalid_structured_output_is_retried_and_every_attempt_counted(
    server: OpenAIServer, llm: ChatOpenAI
) -> None:
    reported: list[tuple[int, int]] = []

    def respond(request: ProviderRequest) -> Reply:
        tokens = (40 + request.index, 4 + request.index)
        reported.append(tokens)
        population: object = "many" if request.index == 0 else 709_000  # invalid, then valid
        tool = request.forced_tool
        assert tool is not None
        call = ToolCall(tool.name, {"name": request.prompt, "population": population})
        return Reply(tool_calls=(call,), input_tokens=tokens[0], output_tokens=tokens[1])

    server.respond = respond

    result = await run(CityStrategy(llm), ["Oslo"], classifier=OPENAI)

    [item] = result.results
    assert item.output == City(name="Oslo", population=709_000)
    assert reported == [(40, 4), (41, 5)]
    assert item.token_usage == {"input_tokens": 81, "output_tokens": 9, "total_tokens": 90}
    assert server.request_count == 2


async def test_transient_errors_are_retried_with_the_openai_classifier(
    server: OpenAIServer,
) -> None:
    chat = ChatOpenAI(
        base_url=server.base_url, api_key=SecretStr("test"), model=GPT, max_retries=0, timeout=0.3
    )
    server.script(ServerError(503), Hang())
    try:
        result = await run(ChatStrategy(chat), ["one two"], classifier=OPENAI)
    finally:
        await chat.root_async_client.close()

    [item] = result.results
    assert item.output == "echo: one two"
    assert item.token_usage == {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
    assert server.request_count == 3
    assert server.status_counts == {503: 1, 200: 1}  # the hung request got no answer


async def test_client_error_is_not_retried(server: OpenAIServer, llm: ChatOpenAI) -> None:
    server.script(*[ErrorResponse(400)] * 3)

    result = await run(ChatStrategy(llm), ["x"], classifier=OPENAI)

    [item] = result.results
    assert item.success is False
    assert item.error is not None
    # LangChain re-raises the SDK error as its own subclass of openai.BadRequestError.
    assert item.error.startswith("OpenAIInvalidRequestError: Error code: 400 - ")
    assert server.request_count == 1


def test_langchain_errors_subclass_the_sdk_errors() -> None:
    assert issubclass(base.OpenAIRateLimitError, openai.RateLimitError)
    assert issubclass(base.OpenAITimeoutError, openai.APITimeoutError)
