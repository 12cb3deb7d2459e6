"""The built-in ``OpenAIStrategy`` against the local OpenAI server, with the real ``openai`` SDK.

The server counts words: the prompt ``"question number 3"`` is 3 input tokens and the reply
``"echo: question number 3"`` 4 output tokens. Clients use ``max_retries=0``, so one attempt of
the processor is one HTTP request and request counts are exact. Unless a test says otherwise,
the processor uses its default classifier: the strategy converts SDK errors so that the
default rules decide right.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, assert_type

import httpx2
import openai
import pytest
from pydantic import BaseModel, Field, ValidationError

from async_batch_llm import BatchResult, OpenAIStrategy, WorkItemResult
from async_batch_llm._internal.rate_limit_headers import HEADER_SINK
from async_batch_llm._strategies._http_api import (
    ProviderAPIError,
    ProviderConnectionError,
    ProviderRateLimitError,
    ProviderRequestError,
    ProviderTimeoutError,
    error_for_status,
)
from async_batch_llm._strategies.openai import _converted, strict_json_schema
from async_batch_llm.classifiers import OpenAIErrorClassifier
from async_batch_llm.llm_strategies import OpenAIStrategy as FromStrategies
from async_batch_llm.strategies import DefaultErrorClassifier, ErrorInfo
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

from ._support import info, run

pytestmark = pytest.mark.timeout(15)

GPT = "gpt-4o-mini"
DEFAULT = DefaultErrorClassifier()
OPENAI = OpenAIErrorClassifier()


class City(BaseModel):
    """A city and how many people live there."""

    name: str
    population: int = Field(ge=0)
    country: str | None = None


def by_id(result: BatchResult[Any, None]) -> dict[str, WorkItemResult[Any, None]]:
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


@pytest.fixture
def headers() -> Iterator[list[dict[str, str]]]:
    """Every header set the strategy reports, names lower-cased, in order."""
    seen: list[dict[str, str]] = []
    token = HEADER_SINK.set(lambda answer: seen.append({k.lower(): v for k, v in answer.items()}))
    yield seen
    HEADER_SINK.reset(token)


# --------------------------------------------------------------------------- text output


async def test_text_output_and_exact_usage(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    strategy = OpenAIStrategy(client, GPT, temperature=0.5, max_completion_tokens=50)

    output, usage = await strategy.execute("question number 3", 1, 10.0)

    assert output == "echo: question number 3"
    assert usage == {
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
        "cached_input_tokens": 0,
    }
    [request] = server.requests
    assert request.body["model"] == GPT
    assert request.body["messages"] == [{"role": "user", "content": "question number 3"}]
    assert request.body["temperature"] == 0.5
    assert request.body["max_completion_tokens"] == 50
    assert "response_format" not in request.body
    assert request.headers["x-stainless-read-timeout"] == "10.0"  # timeout reached the SDK


async def test_a_list_of_messages_is_sent_as_the_messages(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]

    output, usage = await OpenAIStrategy(client, GPT).execute(messages, 1, 10.0)

    assert output == "echo: hello there"
    assert server.requests[0].body["messages"] == messages
    assert usage["input_tokens"] == 4  # every message's words


async def test_cached_prompt_tokens_are_reported(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    system = {"role": "system", "content": "word " * 1300}
    strategy = OpenAIStrategy(client, GPT)

    _, first = await strategy.execute([system, {"role": "user", "content": "q0"}], 1, 10.0)
    _, second = await strategy.execute([system, {"role": "user", "content": "q1"}], 1, 10.0)

    assert first["cached_input_tokens"] == 0
    # 1300 shared words round down to 1024 + 2 * 128, OpenAI's caching granularity.
    assert second == {
        "input_tokens": 1301,
        "output_tokens": 2,
        "total_tokens": 1303,
        "cached_input_tokens": 1280,
    }


# --------------------------------------------------------------------------- structured output


async def test_structured_output_is_requested_strictly_and_validated(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.respond = lambda request: {"name": request.prompt, "population": 7, "country": None}
    strategy = OpenAIStrategy(client, GPT, output_type=City)

    output, usage = await strategy.execute("Oslo", 1, 10.0)

    assert output == City(name="Oslo", population=7)
    assert usage["input_tokens"] == 1
    response_format = server.requests[0].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "City"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name", "population", "country"]  # strict: every property
    assert "default" not in schema["properties"]["country"]


async def test_a_given_response_format_replaces_the_generated_one(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.respond = lambda request: '{"name": "Oslo", "population": 7}'
    strategy = OpenAIStrategy(
        client, GPT, output_type=City, response_format={"type": "json_object"}
    )

    output, _ = await strategy.execute("Oslo", 1, 10.0)

    assert output == City(name="Oslo", population=7)
    assert server.requests[0].body["response_format"] == {"type": "json_object"}


def test_strict_schema_closes_nested_objects_and_keeps_names() -> None:
    class Inner(BaseModel):
        default: int = 3  # a property named like the keyword

    class Outer(BaseModel):
        inner: Inner
        tags: dict[str, int] = {}

    schema = strict_json_schema(Outer.model_json_schema())

    inner = schema["$defs"]["Inner"]
    assert inner["additionalProperties"] is False
    assert inner["required"] == ["default"]
    assert "default" in inner["properties"]  # the property stays...
    assert "default" not in inner["properties"]["default"]  # ...its default value goes
    assert schema["properties"]["tags"]["additionalProperties"] == {"type": "integer"}
    assert schema["required"] == ["inner", "tags"]


async def test_invalid_output_is_retried_and_every_attempt_counted(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    def respond(request: ProviderRequest) -> Reply:
        city = {"name": request.prompt, "population": 7}
        # Distinct numbers per request, so the sum shows which attempts were counted.
        return Reply(
            text=json.dumps(city),
            input_tokens=100 + request.index,
            output_tokens=10 + request.index,
        )

    server.respond = respond
    server.script(Malformed(), Malformed())

    result = await run(OpenAIStrategy(client, GPT, output_type=City), ["Oslo"])  # default rules

    [item] = result.results
    assert item.success is True
    assert item.output == City(name="Oslo", population=7)
    assert item.token_usage["input_tokens"] == 100 + 101 + 102
    assert item.token_usage["output_tokens"] == 10 + 11 + 12
    assert item.token_usage["total_tokens"] == 303 + 33
    assert (result.total_input_tokens, result.total_output_tokens) == (303, 33)
    assert server.request_count == 3


async def test_exhausted_invalid_output_fails_with_what_it_cost(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.respond = lambda request: Reply(text="{}", input_tokens=50, output_tokens=5)
    server.script(Malformed(), Malformed())

    result = await run(OpenAIStrategy(client, GPT, output_type=City), ["Oslo"], attempts=2)

    [item] = result.results
    assert item.success is False
    assert item.error is not None
    assert item.error.startswith("ValidationError: ")
    assert item.token_usage["input_tokens"] == 100
    assert item.token_usage["output_tokens"] == 10
    assert item.token_usage["total_tokens"] == 110
    assert server.request_count == 2


async def test_validation_error_carries_the_usage_of_the_reply(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.respond = lambda request: Reply(text="not json", input_tokens=9, output_tokens=2)

    with pytest.raises(ValidationError) as caught:
        await OpenAIStrategy(client, GPT, output_type=City).execute("Oslo", 1, 10.0)

    assert caught.value.__dict__["_failed_token_usage"] == {
        "input_tokens": 9,
        "output_tokens": 2,
        "total_tokens": 11,
        "cached_input_tokens": 0,
    }
    assert DEFAULT.classify(caught.value) == info("validation_error", True)
    assert OPENAI.classify(caught.value) == info("validation_error", True)


# --------------------------------------------------------------------------- headers


async def test_headers_of_a_success_are_reported(
    server: OpenAIServer, client: openai.AsyncOpenAI, headers: list[dict[str, str]]
) -> None:
    server.respond = lambda request: Reply(
        text="hi", headers={"x-ratelimit-remaining-requests": "499"}
    )

    await OpenAIStrategy(client, GPT).execute("hello", 1, 10.0)

    [answer] = headers
    assert answer["x-ratelimit-remaining-requests"] == "499"
    assert answer["x-request-id"].startswith("req_")


async def test_headers_of_a_rate_limit_are_reported_before_it_is_raised(
    server: OpenAIServer, client: openai.AsyncOpenAI, headers: list[dict[str, str]]
) -> None:
    server.script(RateLimited(retry_after=2.0))

    with pytest.raises(ProviderRateLimitError):
        await OpenAIStrategy(client, GPT).execute("hello", 1, 10.0)

    [answer] = headers
    assert answer["x-ratelimit-limit-requests"] == "500"
    assert answer["x-ratelimit-remaining-requests"] == "0"
    assert answer["x-ratelimit-reset-requests"] == "2s"
    assert answer["retry-after-ms"] == "2000"


async def test_headers_of_every_error_answer_are_reported(
    server: OpenAIServer, client: openai.AsyncOpenAI, headers: list[dict[str, str]]
) -> None:
    server.script(ServerError(503), ErrorResponse(400))
    strategy = OpenAIStrategy(client, GPT)

    for _ in range(2):
        with pytest.raises(ProviderAPIError):
            await strategy.execute("hello", 1, 10.0)
    await strategy.execute("hello", 1, 10.0)

    assert len(headers) == 3
    assert all(answer["x-request-id"].startswith("req_") for answer in headers)


async def test_reporting_outside_a_processor_is_a_no_op(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    assert HEADER_SINK.get() is None
    output, _ = await OpenAIStrategy(client, GPT).execute("hello", 1, 10.0)
    assert output == "echo: hello"


# --------------------------------------------------------------------------- errors


async def test_client_errors_are_not_retried_by_the_default_classifier(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.script(ErrorResponse(401), ErrorResponse(401), ErrorResponse(401))

    result = await run(OpenAIStrategy(client, GPT), ["hello"])

    [item] = result.results
    assert item.success is False
    assert item.error == (
        "ProviderRequestError: OpenAI API authentication failed (HTTP 401): "
        "Incorrect API key provided."
    )
    assert server.request_count == 1
    assert server.pending_faults() == 2


async def test_server_errors_are_retried(server: OpenAIServer, client: openai.AsyncOpenAI) -> None:
    server.script(ServerError(500), ServerError(503))

    result = await run(OpenAIStrategy(client, GPT), ["hello"])

    [item] = result.results
    assert (item.success, item.output) == (True, "echo: hello")
    assert server.status_counts == {500: 1, 503: 1, 200: 1}


async def test_a_rate_limit_pauses_for_the_retry_after_then_retries(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.script(RateLimited(retry_after=0.3))  # the cooldown itself is 0 in these tests

    started = time.monotonic()
    result = await run(OpenAIStrategy(client, GPT), ["hello"])
    elapsed = time.monotonic() - started

    [item] = result.results
    assert (item.success, item.output) == (True, "echo: hello")
    assert server.status_counts == {429: 1, 200: 1}
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.3
    assert elapsed >= 0.3


RATE_LIMIT = info("rate_limit", True, rate_limit=True, wait=2.0)
NOT_RETRIED = info("logic_error", False)  # what the neutral rules say of a ValueError
CLIENT_ERROR = info("client_error", False)

# fault → (raised class, DefaultErrorClassifier, OpenAIErrorClassifier).
CLASSIFICATION: dict[str, tuple[Fault, type[ProviderAPIError], ErrorInfo, ErrorInfo]] = {
    "429": (
        RateLimited(retry_after=2.0),
        ProviderRateLimitError,
        info("rate_limit", True, rate_limit=True, wait=300.0),
        RATE_LIMIT,
    ),
    "400": (ErrorResponse(400), ProviderRequestError, NOT_RETRIED, CLIENT_ERROR),
    "401": (ErrorResponse(401), ProviderRequestError, NOT_RETRIED, CLIENT_ERROR),
    "403": (ErrorResponse(403), ProviderRequestError, NOT_RETRIED, CLIENT_ERROR),
    "404": (ErrorResponse(404), ProviderRequestError, NOT_RETRIED, CLIENT_ERROR),
    "422": (ErrorResponse(422), ProviderRequestError, NOT_RETRIED, CLIENT_ERROR),
    "400-with-timeout-words": (
        ErrorResponse(400, message="invalid 'timeout': connection settings"),
        ProviderRequestError,
        NOT_RETRIED,
        CLIENT_ERROR,
    ),
    "408": (
        ErrorResponse(408),
        ProviderTimeoutError,
        info("api_timeout", True, timeout=True),
        info("api_timeout", True, timeout=True),
    ),
    "409": (
        ErrorResponse(409),
        ProviderAPIError,
        info("unknown", True),
        info("client_error", True),
    ),
    "500": (ServerError(500), ProviderAPIError, info("unknown", True), info("server_error", True)),
    "503": (ServerError(503), ProviderAPIError, info("unknown", True), info("server_error", True)),
    "504": (
        ServerError(504),
        ProviderTimeoutError,
        info("api_timeout", True, timeout=True),
        info("server_timeout", True, timeout=True),
    ),
    "timeout": (
        Hang(),
        ProviderTimeoutError,
        info("api_timeout", True, timeout=True),
        info("api_timeout", True, timeout=True),
    ),
    "connection": (
        Disconnect(),
        ProviderConnectionError,
        info("connection_error", True),
        info("connection_error", True),
    ),
    "unreadable": (
        Malformed(raw_body=True),
        ProviderAPIError,
        info("unknown", True),
        info("unknown", True),
    ),
}


@pytest.mark.parametrize(
    ("fault", "raised", "default", "ours"), CLASSIFICATION.values(), ids=CLASSIFICATION.keys()
)
async def test_classification_of_converted_errors(
    server: OpenAIServer,
    fault: Fault,
    raised: type[ProviderAPIError],
    default: ErrorInfo,
    ours: ErrorInfo,
) -> None:
    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=0.2
    )
    server.script(fault)
    try:
        with pytest.raises(ProviderAPIError) as caught:
            await OpenAIStrategy(client, GPT).execute("x", 1, 0.2)
    finally:
        await client.close()

    error = caught.value
    assert type(error) is raised
    assert error.provider == "openai"
    assert DEFAULT.classify(error) == default
    if isinstance(fault, Malformed):  # an unreadable 200: no SDK error behind it
        assert not isinstance(error.__cause__, openai.APIError)
        assert error.category == "invalid_response"
    else:
        assert isinstance(error.__cause__, openai.APIError)
        # The provider classifier sees the SDK error through __cause__, as if unconverted.
        assert OPENAI.classify(error) == OPENAI.classify(error.__cause__)
    assert OPENAI.classify(error) == ours
    assert error.retryable is default.is_retryable is ours.is_retryable
    assert server.request_count == 1


async def test_converted_errors_keep_what_the_api_said(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    server.script(RateLimited(retry_after=1.5))

    with pytest.raises(ProviderRateLimitError) as caught:
        await OpenAIStrategy(client, GPT).execute("x", 1, 10.0)

    error = caught.value
    assert (error.status_code, error.category, error.retry_after) == (429, "rate_limit", 1.5)
    assert error.request_id is not None
    assert error.request_id.startswith("req_")
    assert error.provider_message == (
        "Rate limit reached for requests per min (RPM). Please try again later."
    )
    assert str(error) == (
        "OpenAI API rate limit (HTTP 429): "
        "Rate limit reached for requests per min (RPM). Please try again later."
    )


def sdk_error(status: int, body: Mapping[str, Any]) -> openai.APIStatusError:
    """An error as the SDK raises it, for answers the server cannot send (a custom code)."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, request=request, headers={"x-request-id": "req_1"})
    kind = openai.RateLimitError if status == 429 else openai.APIStatusError
    return kind(f"Error code: {status}", response=response, body=dict(body))


def test_out_of_credit_is_not_a_rate_limit_under_either_classifier() -> None:
    # OpenAI answers 429 with code "insufficient_quota" when the account has no credit left.
    error = _converted(
        sdk_error(429, {"message": "You exceeded your current quota", "code": "insufficient_quota"})
    )

    assert type(error) is ProviderRequestError
    assert error.category == "insufficient_quota"
    assert error.provider_message == "You exceeded your current quota"
    assert str(error) == "OpenAI API out of credit"  # no "429" or "quota" for the neutral rules
    assert DEFAULT.classify(error) == info("logic_error", False)
    assert error.__cause__ is None  # _converted builds; execute raises it ``from`` the SDK error


STATUS_TABLE = [
    (400, False, ProviderRequestError, "bad_request"),
    (401, False, ProviderRequestError, "authentication"),
    (403, False, ProviderRequestError, "authentication"),
    (404, False, ProviderRequestError, "model_not_found"),
    (408, False, ProviderTimeoutError, "timeout"),
    (409, False, ProviderAPIError, "conflict"),
    (413, False, ProviderRequestError, "bad_request"),
    (422, False, ProviderRequestError, "bad_request"),
    (429, False, ProviderRateLimitError, "rate_limit"),
    (429, True, ProviderRequestError, "insufficient_quota"),
    (402, True, ProviderRequestError, "insufficient_quota"),
    (500, False, ProviderAPIError, "server_error"),
    (504, False, ProviderTimeoutError, "timeout"),
    (529, False, ProviderAPIError, "server_error"),
]


@pytest.mark.parametrize(
    ("status", "out_of_credit", "kind", "category"),
    STATUS_TABLE,
    ids=[f"{s}{'-out-of-credit' if o else ''}" for s, o, _, _ in STATUS_TABLE],
)
def test_status_mapping_and_messages_the_neutral_rules_read_right(
    status: int, out_of_credit: bool, kind: type[ProviderAPIError], category: str
) -> None:
    cause = RuntimeError("sdk error")
    # A provider message full of words the neutral rules look for.
    message = "429 quota rate limit timeout connection"

    error = error_for_status(
        status,
        label="OpenAI",
        provider="openai",
        provider_message=message,
        out_of_credit=out_of_credit,
        request_id="req_429",
        cause=cause,
    )

    assert (type(error), error.category, error.status_code) == (kind, category, status)
    assert (error.provider_message, error.request_id) == (message, "req_429")
    classified = DEFAULT.classify(error)
    assert classified.is_rate_limit is (kind is ProviderRateLimitError)
    assert classified.is_retryable is error.retryable
    if kind is ProviderRequestError:
        assert classified == NOT_RETRIED


# --------------------------------------------------------------------------- batches


async def test_a_batch_of_fifty_items_has_exact_token_totals(
    server: OpenAIServer, client: openai.AsyncOpenAI
) -> None:
    prompts = [f"question number {i}" + " extra" * (i % 5) for i in range(50)]
    server.latency = 0.005
    server.script(ServerError(500), RateLimited(retry_after=0.0), ErrorResponse(409))

    result = await run(OpenAIStrategy(client, GPT), prompts, workers=8)

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
    assert server.request_count == 53  # three failed attempts, each retried once
    assert server.status_counts == {200: 50, 500: 1, 429: 1, 409: 1}
    assert server.max_in_flight <= 8


# --------------------------------------------------------------------------- identity


def test_quota_scope_names_the_provider_and_model(client: openai.AsyncOpenAI) -> None:
    assert OpenAIStrategy(client, GPT).quota_scope == "openai:gpt-4o-mini"
    assert OpenAIStrategy(client, "gpt-4.1", output_type=City).quota_scope == "openai:gpt-4.1"


def test_fingerprint_is_stable_and_tracks_the_configuration(client: openai.AsyncOpenAI) -> None:
    first = OpenAIStrategy(client, GPT, output_type=City, temperature=0.2, seed=7)
    again = OpenAIStrategy(client, GPT, output_type=City, seed=7, temperature=0.2)

    fingerprint = first.fingerprint()
    assert fingerprint == again.fingerprint()
    assert json.loads(json.dumps(fingerprint)) == fingerprint  # JSON data, nothing else
    assert fingerprint["provider"] == "openai"
    assert fingerprint["model"] == GPT
    assert fingerprint["output_type"] == f"{__name__}.City"
    assert fingerprint["request_params"] == {"seed": 7, "temperature": 0.2}
    assert isinstance(fingerprint["output_schema"], str)

    others: list[OpenAIStrategy[Any]] = [
        OpenAIStrategy(client, GPT, output_type=City, temperature=0.3, seed=7),
        OpenAIStrategy(client, "gpt-4.1", output_type=City, temperature=0.2, seed=7),
        OpenAIStrategy(client, GPT, temperature=0.2, seed=7),
    ]
    assert all(other.fingerprint() != fingerprint for other in others)
    assert OpenAIStrategy(client, GPT).fingerprint() == {
        "provider": "openai",
        "model": GPT,
        "output_type": None,
        "output_schema": None,
        "request_params": {},
    }


def test_fingerprint_changes_when_the_output_model_changes(client: openai.AsyncOpenAI) -> None:
    class Town(BaseModel):
        name: str

    before = OpenAIStrategy(client, GPT, output_type=Town).fingerprint()

    class Town(BaseModel):  # type: ignore[no-redef]  # the same name, another schema
        name: str
        mayor: str

    after = OpenAIStrategy(client, GPT, output_type=Town).fingerprint()
    assert before["output_type"] == after["output_type"]
    assert before["output_schema"] != after["output_schema"]


# --------------------------------------------------------------------------- construction


def test_is_exported_from_llm_strategies() -> None:
    assert FromStrategies is OpenAIStrategy


def test_the_output_type_sets_the_type_parameter(client: openai.AsyncOpenAI) -> None:
    # Checked by mypy: what users' editors infer.
    assert_type(OpenAIStrategy(client, GPT), OpenAIStrategy[str])
    assert_type(OpenAIStrategy(client, GPT, output_type=City), OpenAIStrategy[City])


def test_repr_shows_the_model_and_parameter_names(client: openai.AsyncOpenAI) -> None:
    strategy = OpenAIStrategy(client, GPT, output_type=City, temperature=0.0)
    assert repr(strategy) == (
        "OpenAIStrategy(model='gpt-4o-mini', output_type=City, request_params=['temperature'])"
    )


def test_a_sync_client_is_refused() -> None:
    sync = openai.OpenAI(api_key="test")
    try:
        with pytest.raises(TypeError, match=r"client must be an openai\.AsyncOpenAI .*got OpenAI"):
            OpenAIStrategy(sync, GPT)  # type: ignore[call-overload]  # the misuse under test
    finally:
        sync.close()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"model": ""}, ValueError, "model must be a non-empty model name, got ''"),
        ({"model": 4}, TypeError, "model must be a str, got int"),
        ({"output_type": dict}, TypeError, "output_type must be a pydantic BaseModel subclass"),
        ({"messages": []}, ValueError, "OpenAIStrategy sets 'messages' itself"),
        ({"timeout": 3}, ValueError, "OpenAIStrategy sets 'timeout' itself"),
        ({"stream": True}, ValueError, "OpenAIStrategy sets 'stream' itself"),
    ],
    ids=["empty-model", "model-type", "output-type", "messages", "timeout", "stream"],
)
def test_bad_arguments_are_refused_at_construction(
    client: openai.AsyncOpenAI, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    model = arguments.pop("model", GPT)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        OpenAIStrategy(client, model, **arguments)


def test_a_parameter_the_sdk_does_not_take_is_refused_at_construction(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(TypeError, match="create\\(\\) takes no parameter 'temprature'"):
        OpenAIStrategy(client, GPT, temprature=0.5)


def test_a_client_without_the_chat_api_is_refused() -> None:
    with pytest.raises(TypeError, match="got object"):
        OpenAIStrategy(object(), GPT)  # type: ignore[call-overload]  # the misuse under test


async def test_a_prompt_of_another_type_is_a_type_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(TypeError, match="prompt must be a str or a list of message dicts"):
        await OpenAIStrategy(client, GPT).execute(42, 1, 10.0)  # type: ignore[arg-type]


async def test_dry_run_is_shaped_like_the_output(client: openai.AsyncOpenAI) -> None:
    city, usage = await OpenAIStrategy(client, GPT, output_type=City).dry_run("one two")
    assert isinstance(city, City)
    assert usage["input_tokens"] == 2
    text, _ = await OpenAIStrategy(client, GPT).dry_run("hello")
    assert text.startswith("[DRY-RUN]")
