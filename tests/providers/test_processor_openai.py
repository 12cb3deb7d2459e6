"""``ParallelBatchProcessor`` driving ``openai.AsyncOpenAI`` against the local OpenAI server.

The strategies here are what a user writes (README "custom strategy"): a few lines around
``client.chat.completions.create``. Token counts are exact because the server counts words:
the prompt ``"question number 3"`` is 3 input tokens and the reply ``"echo: question number 3"``
is 4 output tokens. Clients use ``max_retries=0`` so that every HTTP request is one attempt of
the processor and request counts are exact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from async_batch_llm import (
    BatchResult,
    LLMCallStrategy,
    RetryState,
    TokenUsage,
)
from async_batch_llm.classifiers import GeminiErrorClassifier, OpenAIErrorClassifier
from async_batch_llm.strategies import DefaultErrorClassifier, ErrorInfo
from async_batch_llm.strategies.errors import DEFAULT_RATE_LIMIT_WAIT, FrameworkTimeoutError
from async_batch_llm.testing.servers import (
    Disconnect,
    ErrorResponse,
    Fault,
    Hang,
    Malformed,
    OpenAIServer,
    ProviderRequest,
    RateLimited,
    Reply,
    ServerError,
)

from ._support import UNKNOWN, info, run

pytestmark = pytest.mark.timeout(15)

GPT = "gpt-4o-mini"
OPENAI = OpenAIErrorClassifier()
SYSTEM = "word " * 1300  # a shared prefix long enough for OpenAI's automatic prompt caching


class City(BaseModel):
    name: str
    population: int


class ChatStrategy(LLMCallStrategy[str]):
    """One chat completion per attempt; usage as the API reports it, cached tokens included."""

    def __init__(self, client: openai.AsyncOpenAI, system: str | None = None) -> None:
        self.client = client
        self.system = system

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        messages: list[Any] = [{"role": "user", "content": prompt}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        response = await self.client.chat.completions.create(model=GPT, messages=messages)
        return response.choices[0].message.content or "", usage_of(response.usage)


class CityStrategy(LLMCallStrategy[City]):
    """Structured output validated by pydantic; a failed validation still reports its tokens."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[City, TokenUsage]:
        response = await self.client.chat.completions.create(
            model=GPT,
            messages=[{"role": "user", "content": prompt}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "City", "schema": City.model_json_schema()},
            },
        )
        tokens = usage_of(response.usage)
        try:
            return City.model_validate_json(response.choices[0].message.content or ""), tokens
        except ValidationError as exc:
            exc.__dict__["_failed_token_usage"] = tokens  # spec §4.7: the attempt's cost
            raise


def usage_of(usage: Any) -> TokenUsage:
    tokens: TokenUsage = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    details = usage.prompt_tokens_details
    if details is not None and details.cached_tokens:
        tokens["cached_input_tokens"] = details.cached_tokens
    return tokens


def by_id(result: BatchResult[Any, None]) -> dict[str, Any]:
    return {r.item_id: r for r in result.results}


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as running:
        yield running


@pytest.fixture
async def client(server: OpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    yield sdk
    await sdk.close()


# --------------------------------------------------------------------------- batches


async def test_batch_outputs_tokens_and_request_counts(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    prompts = [f"question number {i}" for i in range(12)]
    server.latency = 0.02  # long enough for the four workers to overlap

    result = await run(ChatStrategy(client), prompts, workers=4)

    assert (result.succeeded, result.failed) == (12, 0)
    results = by_id(result)
    for prompt in prompts:
        assert results[prompt].output == f"echo: {prompt}"
        assert results[prompt].token_usage == {
            "input_tokens": 3,
            "output_tokens": 4,
            "total_tokens": 7,
        }
    assert (result.total_input_tokens, result.total_output_tokens) == (12 * 3, 12 * 4)
    assert result.total_cached_tokens == 0
    assert server.request_count == 12
    assert server.counts == {"chat_completions": 12}
    assert server.max_in_flight == 4
    assert sorted(r.prompt for r in server.requests) == sorted(prompts)


async def test_cached_prompt_tokens_reach_the_batch_totals(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    prompts = ["q0", "q1", "q2", "q3"]

    result = await run(ChatStrategy(client, system=SYSTEM), prompts)  # one worker: in order

    # 1300 system words + 1 question word; the 1300 shared words round down to 1024 + 2 * 128.
    assert [r.token_usage for r in result.results] == [
        {"input_tokens": 1301, "output_tokens": 2, "total_tokens": 1303},
        *[
            {
                "input_tokens": 1301,
                "output_tokens": 2,
                "total_tokens": 1303,
                "cached_input_tokens": 1280,
            }
        ]
        * 3,
    ]
    assert result.total_input_tokens == 4 * 1301
    assert result.total_cached_tokens == 3 * 1280
    assert result.cache_hit_rate() == (3 * 1280) / (4 * 1301) * 100.0
    assert server.counts == {"chat_completions": 4}


async def test_transient_errors_are_retried_and_each_request_counted(
    server: OpenAIServer,
) -> None:
    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=0.3
    )
    # Item "a b": 503, dropped connection, reply. "c d": client timeout, 529, reply. "e f": 500.
    server.script(
        ServerError(503), Disconnect(), None, Hang(), ServerError(529), None, ServerError(500)
    )
    try:
        result = await run(ChatStrategy(client), ["a b", "c d", "e f"], classifier=OPENAI)
    finally:
        await client.close()

    assert (result.succeeded, result.failed) == (3, 0)
    assert [r.output for r in result.results] == ["echo: a b", "echo: c d", "echo: e f"]
    # Failed attempts cost nothing here (no response body), so each item reports one reply.
    assert all(
        r.token_usage == {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
        for r in result.results
    )
    assert server.request_count == 3 + 5
    assert [r.prompt for r in server.requests] == ["a b"] * 3 + ["c d"] * 3 + ["e f"] * 2
    assert server.status_counts == {200: 3, 503: 1, 529: 1, 500: 1}
    assert server.fault_counts == {"ServerError": 3, "Disconnect": 1, "Hang": 1}


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (422, "UnprocessableEntityError"),
    ],
)
async def test_client_errors_fail_at_once(
    server: OpenAIServer, client: openai.AsyncOpenAI, status: int, error_class: str
) -> None:
    server.script(ErrorResponse(status), ErrorResponse(status), ErrorResponse(status))

    result = await run(ChatStrategy(client), ["bad request"], classifier=OPENAI)

    [failed] = result.results
    assert failed.success is False
    assert failed.error is not None
    assert failed.error.startswith(f"{error_class}: Error code: {status} - ")
    assert server.request_count == 1  # not retried: it could only fail again
    assert server.pending_faults() == 2


async def test_default_classifier_retries_a_bad_request(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.script(ErrorResponse(400), ErrorResponse(400), ErrorResponse(400))

    result = await run(ChatStrategy(client), ["bad request"])

    assert result.failed == 1
    assert result.results[0].error == "BadRequestError: Error code: 400 - Invalid request."
    assert server.request_count == 3  # DefaultErrorClassifier: an unknown error, retried


async def test_invalid_structured_output_is_retried_and_every_attempt_counted(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    reported: list[tuple[int, int]] = []

    def respond(request: ProviderRequest) -> Reply:
        tokens = (100 + request.index, 10 + request.index)  # distinct numbers per request
        reported.append(tokens)
        city = {"name": request.prompt, "population": 7}
        return Reply(text=json.dumps(city), input_tokens=tokens[0], output_tokens=tokens[1])

    server.respond = respond
    server.script(Malformed(), Malformed())

    result = await run(CityStrategy(client), ["Oslo"], classifier=OPENAI)

    [item] = result.results
    assert item.output == City(name="Oslo", population=7)
    assert reported == [(100, 10), (101, 11), (102, 12)]
    assert item.token_usage == {"input_tokens": 303, "output_tokens": 33, "total_tokens": 336}
    assert (result.total_input_tokens, result.total_output_tokens) == (303, 33)
    assert server.request_count == 3


async def test_exhausted_item_reports_what_every_attempt_cost(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.respond = lambda request: Reply(text="{}", input_tokens=50, output_tokens=5)
    server.script(Malformed(), Malformed())

    result = await run(CityStrategy(client), ["Oslo"], attempts=2, classifier=OPENAI)

    [item] = result.results
    assert item.success is False
    assert item.error is not None
    assert item.error.startswith("ValidationError: ")
    assert item.token_usage == {
        "input_tokens": 100,
        "output_tokens": 10,
        "total_tokens": 110,
        "cached_input_tokens": 0,
    }
    assert server.request_count == 2


# --------------------------------------------------------------------------- classification


RATE_LIMIT = info("rate_limit", True, rate_limit=True, wait=2.0)

# fault → (OpenAIErrorClassifier, DefaultErrorClassifier, GeminiErrorClassifier). The last two
# columns document what the provider-neutral rules (spec §7.3, §7.4) make of real openai errors.
CLASSIFICATION: dict[str, tuple[Fault, ErrorInfo, ErrorInfo, ErrorInfo]] = {
    "429-retry-after": (
        RateLimited(retry_after=2.0),
        RATE_LIMIT,
        info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
        info("rate_limit", False, rate_limit=True, wait=2.0),
    ),
    "429": (
        RateLimited(retry_after=None),
        info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
        info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
        info("rate_limit", False, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
    ),
    "500": (ServerError(500), info("server_error", True), UNKNOWN, UNKNOWN),
    "502": (ServerError(502), info("server_error", True), UNKNOWN, UNKNOWN),
    "503": (ServerError(503), info("server_error", True), UNKNOWN, UNKNOWN),
    "503-retry-after": (
        ServerError(503, retry_after=3.0),
        info("server_error", True, wait=3.0),
        UNKNOWN,
        UNKNOWN,
    ),
    "504": (
        ServerError(504),
        info("server_timeout", True, timeout=True),
        info("api_timeout", True, timeout=True),  # "Gateway timeout." in the message
        info("timeout", True, timeout=True),
    ),
    "529": (ServerError(529), info("server_error", True), UNKNOWN, UNKNOWN),
    "400": (ErrorResponse(400), info("client_error", False), UNKNOWN, UNKNOWN),
    "401": (ErrorResponse(401), info("client_error", False), UNKNOWN, UNKNOWN),
    "403": (ErrorResponse(403), info("client_error", False), UNKNOWN, UNKNOWN),
    "404": (ErrorResponse(404), info("client_error", False), UNKNOWN, UNKNOWN),
    "422": (ErrorResponse(422), info("client_error", False), UNKNOWN, UNKNOWN),
    "408": (ErrorResponse(408), info("api_timeout", True, timeout=True), UNKNOWN, UNKNOWN),
    "409": (ErrorResponse(409), info("client_error", True), UNKNOWN, UNKNOWN),
    "timeout": (
        Hang(),
        info("api_timeout", True, timeout=True),
        UNKNOWN,  # "Request timed out." has no "timeout" in it
        UNKNOWN,
    ),
    "connection": (
        Disconnect(),
        info("connection_error", True),
        info("connection_error", True),
        UNKNOWN,
    ),
}


@pytest.mark.parametrize(
    ("fault", "ours", "default", "gemini"), CLASSIFICATION.values(), ids=CLASSIFICATION.keys()
)
async def test_classification_of_real_openai_errors(
    server: OpenAIServer, fault: Fault, ours: ErrorInfo, default: ErrorInfo, gemini: ErrorInfo
) -> None:
    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=0.2
    )
    server.script(fault)
    try:
        with pytest.raises(openai.APIError) as caught:
            await ChatStrategy(client).execute("x", 1, 10.0)
    finally:
        await client.close()

    error = caught.value
    assert OPENAI.classify(error) == ours
    assert DefaultErrorClassifier().classify(error) == default
    assert GeminiErrorClassifier().classify(error) == gemini
    assert server.request_count == 1


def rate_limit_error(body: dict[str, Any]) -> openai.RateLimitError:
    """A 429 error as the SDK raises it (the server cannot send a custom error code)."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(429, request=request)
    return openai.RateLimitError("Error code: 429", response=response, body=body)


def test_out_of_quota_is_not_a_rate_limit() -> None:
    # OpenAI answers 429 with code "insufficient_quota" when the account is out of credit:
    # waiting cannot help, so the item fails instead of cooling every worker down again.
    error = rate_limit_error(
        {"message": "You exceeded your current quota", "code": "insufficient_quota"}
    )

    assert error.code == "insufficient_quota"
    assert OPENAI.classify(error) == info("client_error", False)
    assert DefaultErrorClassifier().classify(error).is_rate_limit  # the neutral rules cannot tell


async def test_wrapped_sdk_errors_are_seen_through(server: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    agent = Agent(OpenAIChatModel(GPT, provider=OpenAIProvider(openai_client=client)))
    llm = ChatOpenAI(base_url=server.base_url, api_key=SecretStr("test"), model=GPT, max_retries=0)
    server.script(ErrorResponse(400), ErrorResponse(400))
    try:
        with pytest.raises(ModelHTTPError) as wrapped:  # pydantic-ai: raised from the SDK error
            await agent.run("x")
        with pytest.raises(openai.BadRequestError) as subclassed:  # LangChain: a subclass of it
            await llm.ainvoke("x")
    finally:
        await client.close()
        await llm.root_async_client.close()

    assert isinstance(wrapped.value.__cause__, openai.BadRequestError)
    assert type(subclassed.value) is not openai.BadRequestError
    assert OPENAI.classify(wrapped.value) == info("client_error", False)
    assert OPENAI.classify(subclassed.value) == info("client_error", False)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            FrameworkTimeoutError("Framework timeout after 1.0s (limit: 1.0s)"),
            info("framework_timeout", True, timeout=True),
            id="framework-timeout",
        ),
        pytest.param(
            ValidationError.from_exception_data("City", []),
            info("validation_error", True),
            id="validation-error",
        ),
        pytest.param(ValueError("bad value"), info("logic_error", False), id="fallback-logic"),
        pytest.param(
            RuntimeError("429 quota"),
            info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
            id="fallback-rate-limit",
        ),
    ],
)
def test_non_sdk_errors(error: Exception, expected: ErrorInfo) -> None:
    assert OPENAI.classify(error) == expected
