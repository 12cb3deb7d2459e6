"""The built-in ``AnthropicStrategy`` against the local Anthropic server, with the real SDK.

The server counts words: the prompt ``"question number 3"`` is 3 input tokens and the reply
``"echo: question number 3"`` 4 output tokens. Anthropic reports prompt-cache reads and writes
apart from ``input_tokens``; the strategy counts them as input, so ``input_tokens`` is the whole
prompt and ``cached_input_tokens`` the part read from the cache. Clients use ``max_retries=0``:
one attempt is one HTTP request. Unless a test says otherwise, the processor uses its default
classifier.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, assert_type

import anthropic
import pytest
from pydantic import BaseModel, Field, ValidationError

from async_batch_llm import AnthropicStrategy, BatchResult, WorkItemResult
from async_batch_llm._internal.rate_limit_headers import HEADER_SINK
from async_batch_llm._strategies._http_api import (
    ProviderAPIError,
    ProviderConnectionError,
    ProviderRateLimitError,
    ProviderRequestError,
    ProviderTimeoutError,
)
from async_batch_llm.classifiers import AnthropicErrorClassifier
from async_batch_llm.llm_strategies import AnthropicStrategy as FromStrategies
from async_batch_llm.strategies import DefaultErrorClassifier, ErrorInfo
from async_batch_llm.testing.servers import (
    AnthropicServer,
    Disconnect,
    ErrorResponse,
    Fault,
    Hang,
    Malformed,
    ProviderRequest,
    RateLimited,
    Reply,
    ServerError,
    ToolCall,
)

from ._support import info, run

pytestmark = pytest.mark.timeout(15)

CLAUDE = "claude-haiku-4-5"
DEFAULT = DefaultErrorClassifier()
ANTHROPIC = AnthropicErrorClassifier()


class City(BaseModel):
    """A city and how many people live there."""

    name: str
    population: int = Field(ge=0)


def by_id(result: BatchResult[Any, None]) -> dict[str, WorkItemResult[Any, None]]:
    return {r.item_id: r for r in result.results}


@pytest.fixture
async def server() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as running:
        yield running


@pytest.fixture
async def client(server: AnthropicServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
def headers() -> Iterator[list[dict[str, str]]]:
    """Every header set the strategy reports, names lower-cased, in order."""
    seen: list[dict[str, str]] = []
    token = HEADER_SINK.set(lambda answer: seen.append({k.lower(): v for k, v in answer.items()}))
    yield seen
    HEADER_SINK.reset(token)


# --------------------------------------------------------------------------- text output


async def test_text_output_and_exact_usage(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    strategy = AnthropicStrategy(
        client, CLAUDE, max_tokens=64, stop_sequences=["###"], system="be nice"
    )

    output, usage = await strategy.execute("question number 3", 1, 10.0)

    assert output == "echo: question number 3"
    assert usage == {
        "input_tokens": 5,  # "be nice" and the three prompt words
        "output_tokens": 4,
        "total_tokens": 9,
        "cached_input_tokens": 0,
    }
    [request] = server.requests
    assert request.body["model"] == CLAUDE
    assert request.body["max_tokens"] == 64
    assert request.body["messages"] == [{"role": "user", "content": "question number 3"}]
    assert request.body["stop_sequences"] == ["###"]
    assert request.body["system"] == "be nice"
    assert "tools" not in request.body


async def test_text_blocks_are_concatenated(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.respond = lambda request: Reply(
        text="the answer", tool_calls=(ToolCall("lookup", {"q": "x"}),)
    )

    output, _ = await AnthropicStrategy(client, CLAUDE).execute("hello", 1, 10.0)

    assert output == "the answer"  # the tool_use block has no text


async def test_a_list_of_messages_is_sent_as_the_messages(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "how are you"},
    ]

    output, usage = await AnthropicStrategy(client, CLAUDE).execute(messages, 1, 10.0)

    assert server.requests[0].body["messages"] == messages
    assert output == "echo: hello\nhow are you"
    assert usage["input_tokens"] == 5


async def test_cache_reads_and_writes_count_as_input(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    system = [{"type": "text", "text": "word " * 1100, "cache_control": {"type": "ephemeral"}}]
    strategy = AnthropicStrategy(client, CLAUDE, system=system)

    _, first = await strategy.execute("q0", 1, 10.0)  # writes the cache
    _, second = await strategy.execute("q1", 1, 10.0)  # reads it

    assert first == {
        "input_tokens": 1101,
        "output_tokens": 2,
        "total_tokens": 1103,
        "cached_input_tokens": 0,
    }
    assert second == {
        "input_tokens": 1101,
        "output_tokens": 2,
        "total_tokens": 1103,
        "cached_input_tokens": 1100,
    }


# --------------------------------------------------------------------------- structured output


async def test_structured_output_uses_a_forced_tool(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.respond = lambda request: {"name": request.prompt, "population": 7}

    output, usage = await AnthropicStrategy(client, CLAUDE, output_type=City).execute(
        "Oslo", 1, 10.0
    )

    assert output == City(name="Oslo", population=7)
    assert usage["output_tokens"] > 0
    body = server.requests[0].body
    [tool] = body["tools"]
    assert tool["name"] == "City"
    assert tool["description"] == "A city and how many people live there."
    assert tool["input_schema"] == City.model_json_schema()
    assert body["tool_choice"] == {"type": "tool", "name": "City"}


async def test_a_reply_without_the_tool_has_its_text_validated(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.respond = lambda request: Reply(text='{"name": "Oslo", "population": 3}')

    output, _ = await AnthropicStrategy(client, CLAUDE, output_type=City).execute("Oslo", 1, 10.0)

    assert output == City(name="Oslo", population=3)


async def test_invalid_output_is_retried_and_every_attempt_counted(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    def respond(request: ProviderRequest) -> Reply:
        city = {"name": request.prompt, "population": 7}
        return Reply(
            tool_calls=(ToolCall("City", city),),
            input_tokens=100 + request.index,
            output_tokens=10 + request.index,
        )

    server.respond = respond
    server.script(Malformed(), Malformed())  # the tool input becomes {}

    result = await run(AnthropicStrategy(client, CLAUDE, output_type=City), ["Oslo"])

    [item] = result.results
    assert item.success is True
    assert item.output == City(name="Oslo", population=7)
    assert item.token_usage["input_tokens"] == 100 + 101 + 102
    assert item.token_usage["output_tokens"] == 10 + 11 + 12
    assert item.token_usage["total_tokens"] == 303 + 33
    assert (result.total_input_tokens, result.total_output_tokens) == (303, 33)
    assert server.request_count == 3


async def test_validation_error_carries_the_usage_of_the_reply(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.respond = lambda request: Reply(
        tool_calls=(ToolCall("City", {"name": "Oslo", "population": -1}),),
        input_tokens=9,
        output_tokens=2,
        cached_tokens=4,
    )

    with pytest.raises(ValidationError) as caught:
        await AnthropicStrategy(client, CLAUDE, output_type=City).execute("Oslo", 1, 10.0)

    # The server reports 9 - 4 uncached input tokens plus 4 read from the cache.
    assert caught.value.__dict__["_failed_token_usage"] == {
        "input_tokens": 9,
        "output_tokens": 2,
        "total_tokens": 11,
        "cached_input_tokens": 4,
    }
    assert DEFAULT.classify(caught.value) == info("validation_error", True)
    assert ANTHROPIC.classify(caught.value) == info("validation_error", True)


# --------------------------------------------------------------------------- headers


async def test_headers_of_a_success_are_reported(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, headers: list[dict[str, str]]
) -> None:
    server.respond = lambda request: Reply(
        text="hi", headers={"anthropic-ratelimit-input-tokens-remaining": "39000"}
    )

    await AnthropicStrategy(client, CLAUDE).execute("hello", 1, 10.0)

    [answer] = headers
    assert answer["anthropic-ratelimit-input-tokens-remaining"] == "39000"
    assert answer["request-id"].startswith("req_")


async def test_headers_of_a_rate_limit_are_reported_before_it_is_raised(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, headers: list[dict[str, str]]
) -> None:
    server.script(RateLimited(retry_after=2.0))

    with pytest.raises(ProviderRateLimitError):
        await AnthropicStrategy(client, CLAUDE).execute("hello", 1, 10.0)

    [answer] = headers
    assert answer["anthropic-ratelimit-requests-limit"] == "50"
    assert answer["anthropic-ratelimit-requests-remaining"] == "0"
    assert answer["retry-after"] == "2"


async def test_headers_of_every_error_answer_are_reported(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, headers: list[dict[str, str]]
) -> None:
    server.script(ServerError(529), ErrorResponse(400))
    strategy = AnthropicStrategy(client, CLAUDE)

    for _ in range(2):
        with pytest.raises(ProviderAPIError):
            await strategy.execute("hello", 1, 10.0)
    await strategy.execute("hello", 1, 10.0)

    assert len(headers) == 3
    assert all(answer["request-id"].startswith("req_") for answer in headers)


# --------------------------------------------------------------------------- errors


async def test_client_errors_are_not_retried_by_the_default_classifier(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.script(ErrorResponse(401), ErrorResponse(401), ErrorResponse(401))

    result = await run(AnthropicStrategy(client, CLAUDE), ["hello"])

    [item] = result.results
    assert item.success is False
    assert item.error == (
        "ProviderRequestError: Anthropic API authentication failed (HTTP 401): invalid x-api-key"
    )
    assert server.request_count == 1
    assert server.pending_faults() == 2


async def test_overloaded_and_server_errors_are_retried(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.script(ServerError(529), ServerError(500))

    result = await run(AnthropicStrategy(client, CLAUDE), ["hello"])

    [item] = result.results
    assert (item.success, item.output) == (True, "echo: hello")
    assert server.status_counts == {529: 1, 500: 1, 200: 1}


async def test_a_rate_limit_pauses_for_the_retry_after_then_retries(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.script(RateLimited(retry_after=0.3))  # the cooldown itself is 0 in these tests

    started = time.monotonic()
    result = await run(AnthropicStrategy(client, CLAUDE), ["hello"])
    elapsed = time.monotonic() - started

    [item] = result.results
    assert (item.success, item.output) == (True, "echo: hello")
    assert server.status_counts == {429: 1, 200: 1}
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.3
    assert elapsed >= 0.3


NOT_RETRIED = info("logic_error", False)  # what the neutral rules say of a ValueError
CLIENT_ERROR = info("client_error", False)
RETRIED = info("unknown", True)
SERVER_ERROR = info("server_error", True)

# fault → (raised class, category, DefaultErrorClassifier, AnthropicErrorClassifier).
CLASSIFICATION: dict[str, tuple[Fault, type[ProviderAPIError], str, ErrorInfo, ErrorInfo]] = {
    "429": (
        RateLimited(retry_after=2.0),
        ProviderRateLimitError,
        "rate_limit",
        info("rate_limit", True, rate_limit=True, wait=300.0),
        info("rate_limit", True, rate_limit=True, wait=2.0),
    ),
    "400": (ErrorResponse(400), ProviderRequestError, "bad_request", NOT_RETRIED, CLIENT_ERROR),
    "401": (
        ErrorResponse(401),
        ProviderRequestError,
        "authentication",
        NOT_RETRIED,
        CLIENT_ERROR,
    ),
    "402": (
        ErrorResponse(402),
        ProviderRequestError,
        "insufficient_quota",
        NOT_RETRIED,
        CLIENT_ERROR,
    ),
    "403": (
        ErrorResponse(403),
        ProviderRequestError,
        "authentication",
        NOT_RETRIED,
        CLIENT_ERROR,
    ),
    "404": (
        ErrorResponse(404),
        ProviderRequestError,
        "model_not_found",
        NOT_RETRIED,
        CLIENT_ERROR,
    ),
    "413": (ErrorResponse(413), ProviderRequestError, "bad_request", NOT_RETRIED, CLIENT_ERROR),
    "500": (ServerError(500), ProviderAPIError, "server_error", RETRIED, SERVER_ERROR),
    "503": (ServerError(503), ProviderAPIError, "server_error", RETRIED, SERVER_ERROR),
    "529": (ServerError(529), ProviderAPIError, "server_error", RETRIED, SERVER_ERROR),
    "504": (
        ServerError(504),
        ProviderTimeoutError,
        "timeout",
        info("api_timeout", True, timeout=True),
        info("server_timeout", True, timeout=True),
    ),
    "timeout": (
        Hang(),
        ProviderTimeoutError,
        "timeout",
        info("api_timeout", True, timeout=True),
        info("api_timeout", True, timeout=True),
    ),
    "connection": (
        Disconnect(),
        ProviderConnectionError,
        "connection",
        info("connection_error", True),
        info("connection_error", True),
    ),
}


@pytest.mark.parametrize(
    ("fault", "raised", "category", "default", "ours"),
    CLASSIFICATION.values(),
    ids=CLASSIFICATION.keys(),
)
async def test_classification_of_converted_errors(
    server: AnthropicServer,
    fault: Fault,
    raised: type[ProviderAPIError],
    category: str,
    default: ErrorInfo,
    ours: ErrorInfo,
) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=server.url, api_key="test", max_retries=0, timeout=0.2
    )
    server.script(fault)
    try:
        with pytest.raises(ProviderAPIError) as caught:
            await AnthropicStrategy(client, CLAUDE).execute("x", 1, 0.2)
    finally:
        await client.close()

    error = caught.value
    assert type(error) is raised
    assert (error.provider, error.category) == ("anthropic", category)
    assert isinstance(error.__cause__, anthropic.APIError)
    assert DEFAULT.classify(error) == default
    # The provider classifier sees the SDK error through __cause__, as if unconverted.
    assert ANTHROPIC.classify(error) == ours == ANTHROPIC.classify(error.__cause__)
    assert error.retryable is default.is_retryable is ours.is_retryable
    assert server.request_count == 1


async def test_out_of_credit_hides_words_the_neutral_rules_would_misread(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.script(ErrorResponse(402, message="Your credit balance is too low (quota)."))

    with pytest.raises(ProviderRequestError) as caught:
        await AnthropicStrategy(client, CLAUDE).execute("x", 1, 10.0)

    error = caught.value
    assert str(error) == "Anthropic API out of credit (HTTP 402)"
    assert error.provider_message == "Your credit balance is too low (quota)."
    assert DEFAULT.classify(error) == NOT_RETRIED


async def test_an_unreadable_answer_is_retried(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.script(Malformed(raw_body=True))

    result = await run(AnthropicStrategy(client, CLAUDE), ["hello"])

    [item] = result.results
    assert (item.success, item.output) == (True, "echo: hello")
    assert server.request_count == 2


# --------------------------------------------------------------------------- batches


async def test_a_batch_of_fifty_items_has_exact_token_totals() -> None:
    # The server enforces a generous request limit, so its 429 reports that real limit. Without
    # one it reports Anthropic's fixed tier-1 figures (50 a minute, none remaining), which the
    # processor learns and honours: 50 items would then take about a minute.
    async with AnthropicServer(requests_per_minute=60_000) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)
        try:
            result = await _fifty_items(server, client)
        finally:
            await client.close()
    assert (result.succeeded, result.failed) == (50, 0)
    assert server.request_count == 53
    assert server.status_counts == {200: 50, 529: 1, 429: 1, 500: 1}
    assert server.max_in_flight <= 8


async def _fifty_items(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> BatchResult[str, None]:
    prompts = [f"question number {i}" + " extra" * (i % 5) for i in range(50)]
    server.latency = 0.005
    server.script(ServerError(529), RateLimited(retry_after=0.0), ServerError(500))

    result = await run(AnthropicStrategy(client, CLAUDE), prompts, workers=8)

    assert (result.succeeded, result.failed) == (50, 0)
    results = by_id(result)
    for i, prompt in enumerate(prompts):
        words = 3 + i % 5
        assert results[prompt].output == f"echo: {prompt}"
        assert results[prompt].token_usage["input_tokens"] == words
        assert results[prompt].token_usage["output_tokens"] == words + 1
    expected_input = sum(3 + i % 5 for i in range(50))
    assert result.total_input_tokens == expected_input
    assert result.total_output_tokens == expected_input + 50
    assert result.total_cached_tokens == 0
    return result


# --------------------------------------------------------------------------- identity


def test_quota_scope_names_the_provider_and_model(client: anthropic.AsyncAnthropic) -> None:
    assert AnthropicStrategy(client, CLAUDE).quota_scope == "anthropic:claude-haiku-4-5"


def test_fingerprint_is_stable_and_tracks_the_configuration(
    client: anthropic.AsyncAnthropic,
) -> None:
    system = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]
    first = AnthropicStrategy(
        client, CLAUDE, output_type=City, system=system, stop_sequences=["###"]
    )
    again = AnthropicStrategy(
        client, CLAUDE, output_type=City, stop_sequences=["###"], system=system
    )

    fingerprint = first.fingerprint()
    assert fingerprint == again.fingerprint()
    assert json.loads(json.dumps(fingerprint)) == fingerprint  # JSON data, nothing else
    assert fingerprint["provider"] == "anthropic"
    assert fingerprint["model"] == CLAUDE
    assert fingerprint["max_tokens"] == 1024
    assert fingerprint["output_type"] == f"{__name__}.City"
    assert fingerprint["request_params"] == {"stop_sequences": ["###"], "system": system}

    others: list[AnthropicStrategy[Any]] = [
        AnthropicStrategy(client, CLAUDE, max_tokens=2048, output_type=City, system=system),
        AnthropicStrategy(client, "claude-opus-5", output_type=City, system=system),
        AnthropicStrategy(client, CLAUDE, system=system, stop_sequences=["###"]),
        AnthropicStrategy(
            client, CLAUDE, output_type=City, system="be brief", stop_sequences=["###"]
        ),
    ]
    assert all(other.fingerprint() != fingerprint for other in others)


# --------------------------------------------------------------------------- construction


def test_is_exported_from_llm_strategies() -> None:
    assert FromStrategies is AnthropicStrategy


def test_the_output_type_sets_the_type_parameter(client: anthropic.AsyncAnthropic) -> None:
    # Checked by mypy: what users' editors infer.
    assert_type(AnthropicStrategy(client, CLAUDE), AnthropicStrategy[str])
    assert_type(AnthropicStrategy(client, CLAUDE, output_type=City), AnthropicStrategy[City])


def test_repr_shows_the_model_and_parameter_names(client: anthropic.AsyncAnthropic) -> None:
    strategy = AnthropicStrategy(client, CLAUDE, max_tokens=99, system="s")
    assert repr(strategy) == (
        "AnthropicStrategy(model='claude-haiku-4-5', max_tokens=99, output_type=None, "
        "request_params=['system'])"
    )


def test_a_sync_client_is_refused() -> None:
    sync = anthropic.Anthropic(api_key="test")
    try:
        with pytest.raises(TypeError, match=r"anthropic\.AsyncAnthropic .*got Anthropic"):
            AnthropicStrategy(sync, CLAUDE)  # type: ignore[call-overload]  # the misuse under test
    finally:
        sync.close()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"model": ""}, ValueError, "model must be a non-empty model name, got ''"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be >= 1, got 0"),
        ({"max_tokens": 1.5}, TypeError, "max_tokens must be an int, got float"),
        ({"max_tokens": True}, TypeError, "max_tokens must be an int, got bool"),
        ({"output_type": str}, TypeError, "output_type must be a pydantic BaseModel subclass"),
        ({"messages": []}, ValueError, "AnthropicStrategy sets 'messages' itself"),
        ({"timeout": 3}, ValueError, "AnthropicStrategy sets 'timeout' itself"),
        (
            {"output_type": City, "tools": []},
            ValueError,
            "AnthropicStrategy sets 'tools' itself",
        ),
        (
            {"output_type": City, "tool_choice": {"type": "auto"}},
            ValueError,
            "AnthropicStrategy sets 'tool_choice' itself",
        ),
    ],
    ids=[
        "empty-model",
        "zero-max-tokens",
        "float-max-tokens",
        "bool-max-tokens",
        "output-type",
        "messages",
        "timeout",
        "tools",
        "tool-choice",
    ],
)
def test_bad_arguments_are_refused_at_construction(
    client: anthropic.AsyncAnthropic,
    arguments: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    model = arguments.pop("model", CLAUDE)
    with pytest.raises(error, match=message):
        AnthropicStrategy(client, model, **arguments)


def test_a_parameter_the_sdk_does_not_take_is_refused_at_construction(
    client: anthropic.AsyncAnthropic,
) -> None:
    # anthropic 2.x's messages.create has no ``temperature``: every call would fail with it.
    with pytest.raises(TypeError, match="create\\(\\) takes no parameter 'temperature'"):
        AnthropicStrategy(client, CLAUDE, temperature=0.5)


def test_tools_are_allowed_without_an_output_type(client: anthropic.AsyncAnthropic) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    assert AnthropicStrategy(client, CLAUDE, tools=tools).request_params == {"tools": tools}


async def test_dry_run_is_shaped_like_the_output(client: anthropic.AsyncAnthropic) -> None:
    city, usage = await AnthropicStrategy(client, CLAUDE, output_type=City).dry_run("one two")
    assert isinstance(city, City)
    assert usage["input_tokens"] == 2
