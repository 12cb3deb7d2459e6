"""``ParallelBatchProcessor`` driving ``anthropic.AsyncAnthropic`` against the local server.

The strategy is what a user writes: a few lines around ``client.messages.create``. The server
counts words, so ``"question number 3"`` is 3 input tokens and ``"echo: question number 3"`` 4
output tokens. Anthropic reports prompt-cache reads and writes apart from ``input_tokens``; the
strategy adds them back, so ``input_tokens`` is the whole prompt and ``cached_input_tokens`` the
part read from the cache. Clients use ``max_retries=0``: one HTTP request per attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest

from async_batch_llm import (
    LLMCallStrategy,
    RetryState,
    TokenUsage,
)
from async_batch_llm.classifiers import AnthropicErrorClassifier, GeminiErrorClassifier
from async_batch_llm.strategies import DefaultErrorClassifier, ErrorInfo
from async_batch_llm.strategies.errors import DEFAULT_RATE_LIMIT_WAIT, FrameworkTimeoutError
from async_batch_llm.testing.servers import (
    AnthropicServer,
    Disconnect,
    ErrorResponse,
    Fault,
    Hang,
    RateLimited,
    ServerError,
)

from ._support import UNKNOWN, info, run

pytestmark = pytest.mark.timeout(15)

CLAUDE = "claude-haiku-4-5"
ANTHROPIC = AnthropicErrorClassifier()


class MessagesStrategy(LLMCallStrategy[str]):
    """One Messages API call per attempt; cache reads and writes counted as input."""

    def __init__(self, client: anthropic.AsyncAnthropic, system: str | None = None) -> None:
        self.client = client
        self.system = system

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        extra: dict[str, Any] = {}
        if self.system is not None:
            extra["system"] = [
                {"type": "text", "text": self.system, "cache_control": {"type": "ephemeral"}}
            ]
        message = await self.client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            messages=[{"role": "user", "content": prompt}],
            **extra,
        )
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        read = usage.cache_read_input_tokens or 0
        written = usage.cache_creation_input_tokens or 0
        tokens: TokenUsage = {
            "input_tokens": usage.input_tokens + read + written,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + read + written + usage.output_tokens,
        }
        if read:
            tokens["cached_input_tokens"] = read
        return text, tokens


@pytest.fixture
async def server() -> AsyncIterator[AnthropicServer]:
    async with AnthropicServer() as running:
        yield running


@pytest.fixture
async def client(server: AnthropicServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)
    yield sdk
    await sdk.close()


# --------------------------------------------------------------------------- batches


async def test_batch_outputs_tokens_and_request_counts(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    prompts = [f"question number {i}" for i in range(12)]
    server.latency = 0.02  # long enough for the four workers to overlap

    result = await run(MessagesStrategy(client), prompts, workers=4, classifier=ANTHROPIC)

    assert (result.succeeded, result.failed) == (12, 0)
    for item in result.results:
        assert item.output == f"echo: {item.item_id}"
        assert item.token_usage == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert (result.total_input_tokens, result.total_output_tokens) == (36, 48)
    assert server.request_count == 12
    assert server.counts == {"messages": 12}
    assert server.max_in_flight == 4
    assert {r.model for r in server.requests} == {CLAUDE}


async def test_prompt_cache_reads_and_writes_reach_the_batch_totals(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    strategy = MessagesStrategy(client, system="word " * 1100)

    # one worker: in order
    result = await run(strategy, ["one", "two", "three"], classifier=ANTHROPIC)

    # 1100 cached system words + 1 question word; the first call writes the cache.
    assert [r.token_usage for r in result.results] == [
        {"input_tokens": 1101, "output_tokens": 2, "total_tokens": 1103},
        {
            "input_tokens": 1101,
            "output_tokens": 2,
            "total_tokens": 1103,
            "cached_input_tokens": 1100,
        },
        {
            "input_tokens": 1101,
            "output_tokens": 2,
            "total_tokens": 1103,
            "cached_input_tokens": 1100,
        },
    ]
    assert result.total_cached_tokens == 2200
    assert result.cache_hit_rate() == 2200 / 3303 * 100.0
    assert server.counts == {"messages": 3}


async def test_overload_and_transient_errors_are_retried(
    server: AnthropicServer,
) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=server.url, api_key="test", max_retries=0, timeout=0.3
    )
    # "a b": 529 overloaded, then a reply. "c d": 503, timeout, reply. "e f": dropped, 500, reply.
    server.script(
        ServerError(529),
        None,
        ServerError(503),
        Hang(),
        None,
        Disconnect(),
        ServerError(500),
    )
    try:
        result = await run(MessagesStrategy(client), ["a b", "c d", "e f"], classifier=ANTHROPIC)
    finally:
        await client.close()

    assert [(r.item_id, r.output) for r in result.results] == [
        ("a b", "echo: a b"),
        ("c d", "echo: c d"),
        ("e f", "echo: e f"),
    ]
    assert all(
        r.token_usage == {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
        for r in result.results
    )
    assert [r.prompt for r in server.requests] == ["a b"] * 2 + ["c d"] * 3 + ["e f"] * 3
    assert server.status_counts == {200: 3, 529: 1, 503: 1, 500: 1}


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (402, "PaymentRequiredError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (413, "ContentTooLargeError"),
        (422, "UnprocessableEntityError"),
    ],
)
async def test_client_errors_fail_at_once(
    server: AnthropicServer, client: anthropic.AsyncAnthropic, status: int, error_class: str
) -> None:
    server.script(*[ErrorResponse(status)] * 3)

    result = await run(MessagesStrategy(client), ["bad request"], classifier=ANTHROPIC)

    [failed] = result.results
    assert failed.success is False
    assert failed.error is not None
    assert failed.error.startswith(f"{error_class}: Error code: {status} - ")
    assert server.request_count == 1
    assert server.pending_faults() == 2


async def test_default_classifier_retries_a_bad_request(
    server: AnthropicServer, client: anthropic.AsyncAnthropic
) -> None:
    server.script(*[ErrorResponse(400)] * 3)

    result = await run(MessagesStrategy(client), ["bad request"], classifier=None)

    assert result.failed == 1
    assert server.request_count == 3  # an "unknown" error to the neutral rules: retried


# --------------------------------------------------------------------------- classification


API_TIMEOUT = info("api_timeout", True, timeout=True)

# fault → (AnthropicErrorClassifier, DefaultErrorClassifier, GeminiErrorClassifier). The last
# two columns document what the neutral rules (spec §7.3, §7.4) make of real anthropic errors.
CLASSIFICATION: dict[str, tuple[Fault, ErrorInfo, ErrorInfo, ErrorInfo]] = {
    "429-retry-after": (
        RateLimited(retry_after=1.5),
        info("rate_limit", True, rate_limit=True, wait=1.5),  # retry-after-ms: 1500
        info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
        info("rate_limit", False, rate_limit=True, wait=2.0),  # whole-second retry-after: 2
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
    "504": (
        ServerError(504),
        info("server_timeout", True, timeout=True),
        API_TIMEOUT,  # the body's "timeout_error" type is in the message
        info("timeout", True, timeout=True),
    ),
    "529-overloaded": (ServerError(529), info("server_error", True), UNKNOWN, UNKNOWN),
    "400": (ErrorResponse(400), info("client_error", False), UNKNOWN, UNKNOWN),
    "401": (ErrorResponse(401), info("client_error", False), UNKNOWN, UNKNOWN),
    "403": (ErrorResponse(403), info("client_error", False), UNKNOWN, UNKNOWN),
    "404": (ErrorResponse(404), info("client_error", False), UNKNOWN, UNKNOWN),
    "413": (ErrorResponse(413), info("client_error", False), UNKNOWN, UNKNOWN),
    "422": (ErrorResponse(422), info("client_error", False), UNKNOWN, UNKNOWN),
    "408": (ErrorResponse(408), API_TIMEOUT, UNKNOWN, UNKNOWN),
    "409": (ErrorResponse(409), info("client_error", True), UNKNOWN, UNKNOWN),
    "timeout": (
        Hang(),
        API_TIMEOUT,
        API_TIMEOUT,  # "... a network timeout, dropped connection ..." in the message
        info("timeout", True, timeout=True),
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
async def test_classification_of_real_anthropic_errors(
    server: AnthropicServer, fault: Fault, ours: ErrorInfo, default: ErrorInfo, gemini: ErrorInfo
) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=server.url, api_key="test", max_retries=0, timeout=0.2
    )
    server.script(fault)
    try:
        with pytest.raises(anthropic.APIError) as caught:
            await MessagesStrategy(client).execute("x", 1, 10.0)
    finally:
        await client.close()

    error = caught.value
    assert ANTHROPIC.classify(error) == ours
    assert DefaultErrorClassifier().classify(error) == default
    assert GeminiErrorClassifier().classify(error) == gemini
    assert server.request_count == 1


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", info("server_error", True)),
        ("api_error", info("server_error", True)),
        ("timeout_error", info("server_timeout", True, timeout=True)),
        (
            "rate_limit_error",
            info("rate_limit", True, rate_limit=True, wait=DEFAULT_RATE_LIMIT_WAIT),
        ),
        ("invalid_request_error", info("client_error", False)),
    ],
)
def test_error_event_in_a_streamed_response_is_classified_by_type(
    error_type: str, expected: ErrorInfo
) -> None:
    # Mid-stream, the API sends an SSE "error" event on an HTTP 200 response; the SDK raises
    # an APIStatusError whose status_code is 200, so only the body's error type tells.
    body = {"type": "error", "error": {"type": error_type, "message": "streamed"}}
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(200, request=request)
    error = anthropic.APIStatusError(f"{body}", response=response, body=body)

    assert error.status_code == 200
    assert ANTHROPIC.classify(error) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            FrameworkTimeoutError("Framework timeout after 1.0s (limit: 1.0s)"),
            info("framework_timeout", True, timeout=True),
            id="framework-timeout",
        ),
        pytest.param(KeyError("missing"), info("logic_error", False), id="fallback-logic"),
        pytest.param(RuntimeError("boom"), UNKNOWN, id="fallback-unknown"),
    ],
)
def test_non_sdk_errors(error: Exception, expected: ErrorInfo) -> None:
    assert ANTHROPIC.classify(error) == expected
