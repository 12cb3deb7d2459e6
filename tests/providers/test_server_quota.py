"""Configurable rate limits of the OpenAI and Anthropic servers, driven by the real SDKs.

Token counts are exact because the servers count whitespace-separated words: the prompt
``"hello"`` is 1 token and the default reply ``"echo: hello"`` is 2.  The servers' clock is
injected, so bucket levels are exact: with a 3 s window, a limit of 60 per minute holds 3 and
refills 1 per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anthropic
import openai
import pytest

from async_batch_llm.testing.servers import (
    AnthropicServer,
    OpenAIServer,
    ProviderRequest,
    RateLimited,
    RateLimitStatus,
    Reply,
    ServerError,
)
from async_batch_llm.testing.servers.anthropic import format_timestamp
from async_batch_llm.testing.servers.openai import format_duration

pytestmark = pytest.mark.timeout(10)

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-5"
T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
OPENAI_NAMES = ("requests", "tokens")
ANTHROPIC_NAMES = ("requests", "tokens", "input-tokens", "output-tokens")


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def ratelimit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if "ratelimit" in k}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def clients() -> AsyncIterator[list[openai.AsyncOpenAI | anthropic.AsyncAnthropic]]:
    """Collects the clients a test opens and closes them afterwards."""
    opened: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []
    yield opened
    for client in opened:
        await client.close()


class OpenAIHarness:
    def __init__(self, server: OpenAIServer, client: openai.AsyncOpenAI) -> None:
        self.server = server
        self.client = client

    async def ok(self, text: str = "hello", **params: Any) -> dict[str, str]:
        """Send one chat completion that must succeed; return its rate-limit headers."""
        raw = await self.client.chat.completions.with_raw_response.create(
            model=GPT,
            messages=[{"role": "user", "content": text}],
            **params,
        )
        assert raw.status_code == 200
        return ratelimit_headers(raw.headers)

    async def limited(self, text: str = "hello", **params: Any) -> openai.RateLimitError:
        with pytest.raises(openai.RateLimitError) as caught:
            await self.client.chat.completions.create(
                model=GPT,
                messages=[{"role": "user", "content": text}],
                **params,
            )
        return caught.value


class AnthropicHarness:
    def __init__(self, server: AnthropicServer, client: anthropic.AsyncAnthropic) -> None:
        self.server = server
        self.client = client

    async def ok(self, text: str = "hello", max_tokens: int = 10) -> dict[str, str]:
        raw = await self.client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=max_tokens, messages=[{"role": "user", "content": text}]
        )
        assert raw.status_code == 200
        return ratelimit_headers(raw.headers)

    async def limited(self, text: str = "hello", max_tokens: int = 10) -> anthropic.RateLimitError:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await self.client.messages.create(
                model=CLAUDE, max_tokens=max_tokens, messages=[{"role": "user", "content": text}]
            )
        return caught.value


async def start_openai(
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic], server: OpenAIServer
) -> OpenAIHarness:
    await server.start()
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    clients.append(client)
    return OpenAIHarness(server, client)


async def start_anthropic(
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic], server: AnthropicServer
) -> AnthropicHarness:
    await server.start()
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)
    clients.append(client)
    return AnthropicHarness(server, client)


@pytest.fixture
async def servers() -> AsyncIterator[list[OpenAIServer | AnthropicServer]]:
    """Servers a test creates; closed (and their handler errors raised) afterwards."""
    created: list[OpenAIServer | AnthropicServer] = []
    yield created
    for server in created:
        await server.__aexit__(None, None, None)


MakeOpenAI = Callable[..., Awaitable[OpenAIHarness]]
MakeAnthropic = Callable[..., Awaitable[AnthropicHarness]]


@pytest.fixture
def make_openai(
    clock: Clock,
    servers: list[OpenAIServer | AnthropicServer],
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic],
) -> MakeOpenAI:
    async def make(**options: Any) -> OpenAIHarness:
        server = OpenAIServer(clock=clock, **options)
        servers.append(server)
        return await start_openai(clients, server)

    return make


@pytest.fixture
def make_anthropic(
    clock: Clock,
    servers: list[OpenAIServer | AnthropicServer],
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic],
) -> MakeAnthropic:
    async def make(**options: Any) -> AnthropicHarness:
        server = AnthropicServer(clock=clock, **options)
        servers.append(server)
        return await start_anthropic(clients, server)

    return make


# ------------------------------------------------------------------------ formats


def test_openai_duration_format() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.012) == "12ms"
    assert format_duration(0.9994) == "999ms"
    assert format_duration(1) == "1s"
    assert format_duration(2.25) == "2.25s"
    assert format_duration(90.5) == "1m30.5s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3600) == "1h0m0s"


def test_anthropic_timestamp_format() -> None:
    assert format_timestamp(T0) == "2025-06-15T15:06:40Z"
    assert format_timestamp(T0 + 0.1) == "2025-06-15T15:06:40.1Z"
    assert format_timestamp(T0 + 61.25) == "2025-06-15T15:07:41.25Z"


@pytest.mark.parametrize("server_type", [OpenAIServer, AnthropicServer])
def test_invalid_options_are_rejected(server_type: type[OpenAIServer | AnthropicServer]) -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        server_type(requests_per_minute=0)
    with pytest.raises(ValueError, match="tokens_per_minute"):
        server_type(tokens_per_minute=-5)
    with pytest.raises(ValueError, match="rate_limit_window_seconds"):
        server_type(requests_per_minute=10, rate_limit_window_seconds=0)


# ---------------------------------------------------------------------- no limits


async def test_unconfigured_servers_send_no_rate_limit_headers(
    servers: list[OpenAIServer | AnthropicServer],
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic],
) -> None:
    oai_server, claude_server = OpenAIServer(), AnthropicServer()
    servers.extend([oai_server, claude_server])
    oai = await start_openai(clients, oai_server)
    claude = await start_anthropic(clients, claude_server)

    for _ in range(5):
        assert await oai.ok() == {}
        assert await claude.ok() == {}

    for server in (oai_server, claude_server):
        assert server.rate_limits == {}
        assert server.rate_limit_status() == {}
        assert server.rate_limited_count == 0
        assert server.rate_limit_admitted == 0
        assert not server.rate_limit_charged
        assert server.status_counts == {200: 5}


# ------------------------------------------------------------------------- OpenAI


async def test_openai_headers_on_success_and_remaining_decreases(make_openai: MakeOpenAI) -> None:
    oai: OpenAIHarness = await make_openai(requests_per_minute=60, tokens_per_minute=6000)
    # Buckets: 3 requests (refill 1/s) and 300 tokens (refill 100/s).
    first = await oai.ok()  # 1 prompt + 2 completion tokens
    second = await oai.ok()

    assert first == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "297",
        "x-ratelimit-reset-tokens": "30ms",
    }
    assert second["x-ratelimit-remaining-requests"] == "1"
    assert second["x-ratelimit-reset-requests"] == "2s"
    assert second["x-ratelimit-remaining-tokens"] == "294"
    assert second["x-ratelimit-reset-tokens"] == "60ms"
    assert oai.server.rate_limit_charged == {"requests": 2, "tokens": 6}
    assert oai.server.rate_limit_admitted == 2
    assert oai.server.rate_limit_status()["requests"] == RateLimitStatus(
        limit=60, capacity=3.0, remaining=1, reset=2.0
    )


async def test_openai_rpm_answers_429_with_retry_after_then_refills(
    make_openai: MakeOpenAI, clock: Clock
) -> None:
    oai: OpenAIHarness = await make_openai(requests_per_minute=60)
    for _ in range(3):
        headers = await oai.ok()
    assert "x-ratelimit-limit-tokens" not in headers  # only configured limits are reported

    error = await oai.limited()
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert isinstance(error.body, dict)
    assert error.body["type"] == "requests"
    assert "requests per min (RPM): Limit 60" in error.body["message"]
    assert error.response.headers["retry-after"] == "1"
    assert error.response.headers["retry-after-ms"] == "1000"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.response.headers["x-ratelimit-reset-requests"] == "3s"
    assert error.request_id is not None
    assert error.request_id.startswith("req_")

    clock.now += 0.5
    await oai.limited()  # half a request refilled is not enough
    clock.now += 0.5
    assert (await oai.ok())["x-ratelimit-remaining-requests"] == "0"

    server = oai.server
    assert server.rate_limit_rejections == {"requests": 2}
    assert server.rate_limited_count == 2
    assert server.status_counts == {200: 4, 429: 2}
    assert not server.fault_counts  # quota 429s are not scripted faults
    assert [e.rate_limited for e in server.exchanges] == [None] * 3 + ["requests"] * 2 + [None]
    assert server.rate_limit_charged["requests"] == 4  # refused requests are not charged


async def test_openai_tpm_reserves_max_tokens_at_admission(
    make_openai: MakeOpenAI, clock: Clock
) -> None:
    oai: OpenAIHarness = await make_openai(tokens_per_minute=600, rate_limit_window_seconds=1.0)
    # Bucket: 10 tokens (a 1 s window), refill 10/s.  3 prompt tokens + max_tokens 5 = 8
    # reserved; the 4-token reply is shorter but the reservation is kept (OpenAI counts
    # max_tokens).
    headers = await oai.ok("one two three", max_tokens=5)
    assert headers["x-ratelimit-remaining-tokens"] == "2"
    assert headers["x-ratelimit-reset-tokens"] == "800ms"
    assert "x-ratelimit-limit-requests" not in headers

    error = await oai.limited("one two three", max_completion_tokens=5)
    assert isinstance(error.body, dict)
    assert error.body["type"] == "tokens"
    assert error.code == "rate_limit_exceeded"
    assert "tokens per min (TPM): Limit 600, Requested 8" in error.body["message"]
    assert error.response.headers["retry-after-ms"] == "600"
    assert error.response.headers["retry-after"] == "1"

    clock.now += 0.6
    await oai.ok("one two three", max_completion_tokens=5)
    assert oai.server.rate_limit_charged == {"requests": 2, "tokens": 16}
    assert oai.server.rate_limit_rejections == {"tokens": 1}


async def test_openai_tpm_charges_the_completion_after_the_answer(
    make_openai: MakeOpenAI, clock: Clock
) -> None:
    def respond(request: ProviderRequest) -> str:
        return words(20)

    oai: OpenAIHarness = await make_openai(
        tokens_per_minute=600, rate_limit_window_seconds=1.0, respond=respond
    )
    # Only the 1 prompt token is reserved; the 20 completion tokens put the bucket in debt.
    headers = await oai.ok("hello")
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "2.1s"  # from -11 back to 10 at 10/s
    assert oai.server.rate_limit_charged["tokens"] == 21

    error = await oai.limited("hello")
    assert error.response.headers["retry-after-ms"] == "1200"  # -11 -> 1
    assert error.response.headers["retry-after"] == "2"
    clock.now += 1.2
    await oai.ok("hello")


async def test_openai_request_larger_than_the_limit_is_refused_without_retry_after(
    make_openai: MakeOpenAI,
) -> None:
    oai: OpenAIHarness = await make_openai(tokens_per_minute=600, rate_limit_window_seconds=1.0)
    error = await oai.limited("hello", max_tokens=700)
    assert isinstance(error.body, dict)
    assert error.body["type"] == "tokens"
    assert error.body["message"].startswith("Request too large")
    assert "retry-after" not in error.response.headers
    assert "retry-after-ms" not in error.response.headers
    assert error.response.headers["x-ratelimit-remaining-tokens"] == "10"

    # More than the bucket holds but within the per-minute limit: admitted when full.
    headers = await oai.ok("hello", max_tokens=50)
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert oai.server.rate_limit_charged["tokens"] == 51


async def test_openai_both_limits_enforced_and_the_longest_wait_is_reported(
    make_openai: MakeOpenAI, clock: Clock
) -> None:
    oai: OpenAIHarness = await make_openai(
        requests_per_minute=180, tokens_per_minute=600, rate_limit_window_seconds=1.0
    )
    # Buckets: 3 requests (3/s), 10 tokens (10/s).  Each "hello" costs 1 + 2 tokens.
    for _ in range(3):
        await oai.ok()
    error = await oai.limited()  # requests empty (wait 1/3 s); the 1 prompt token fits
    assert isinstance(error.body, dict)
    assert error.body["type"] == "requests"
    assert error.response.headers["retry-after-ms"] == "333"

    clock.now += 1.0  # requests: 3, tokens: 10
    await oai.ok(words(9))  # 9 prompt tokens + 10 completion tokens: tokens at -9
    clock.now += 1.0  # requests: 3, tokens: 1
    error = await oai.limited(words(5))  # needs 5 tokens: wait 0.4 s; requests fit
    assert isinstance(error.body, dict)
    assert error.body["type"] == "tokens"
    assert error.response.headers["retry-after-ms"] == "400"
    assert oai.server.rate_limit_rejections == {"requests": 1, "tokens": 1}


async def test_openai_scripted_faults_still_work_with_limits(
    make_openai: MakeOpenAI, clock: Clock
) -> None:
    oai: OpenAIHarness = await make_openai(requests_per_minute=20)
    # Bucket: 1 request, refilled every 3 s.
    oai.server.script(RateLimited(retry_after=2.0), ServerError(500))

    scripted = await oai.limited()
    assert scripted.response.headers["retry-after"] == "2"
    assert scripted.response.headers["x-ratelimit-limit-requests"] == "20"  # real, not fixed
    assert scripted.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in scripted.response.headers

    refused = await oai.limited()  # the limit refuses it before any scripted fault
    assert refused.response.headers["retry-after"] == "3"
    assert oai.server.pending_faults() == 1

    clock.now += 3.0
    with pytest.raises(openai.InternalServerError) as failed:
        await oai.client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "hello"}]
        )
    assert failed.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert oai.server.fault_counts == {"RateLimited": 1, "ServerError": 1}
    assert oai.server.rate_limit_rejections == {"requests": 1}
    assert oai.server.rate_limit_charged["requests"] == 2  # admitted requests keep their charge


async def test_openai_stream_carries_headers_and_models_are_not_limited(
    make_openai: MakeOpenAI,
) -> None:
    oai: OpenAIHarness = await make_openai(requests_per_minute=60)
    raw = await oai.client.chat.completions.with_raw_response.create(
        model=GPT, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    chunks = [chunk async for chunk in raw.parse()]
    assert chunks

    for _ in range(5):  # GET /v1/models is neither limited nor charged
        models = await oai.client.models.with_raw_response.list()
        assert ratelimit_headers(models.headers) == {}
    assert oai.server.rate_limit_charged["requests"] == 1


async def test_openai_concurrent_burst_is_cut_at_the_bucket(make_openai: MakeOpenAI) -> None:
    oai: OpenAIHarness = await make_openai(requests_per_minute=600)

    async def attempt() -> int:
        try:
            await oai.client.chat.completions.create(
                model=GPT, messages=[{"role": "user", "content": "hello"}]
            )
        except openai.RateLimitError:
            return 429
        return 200

    statuses = await asyncio.gather(*(attempt() for _ in range(50)))
    # A 3 s window of 600 RPM holds 30 requests; the frozen clock refills nothing.
    assert statuses.count(200) == 30
    assert statuses.count(429) == 20
    assert oai.server.rate_limit_admitted == 30
    assert oai.server.rate_limited_count == 20

    oai.server.reset_stats()
    assert oai.server.rate_limited_count == 0
    assert not oai.server.rate_limit_charged
    await oai.limited()  # reset_stats keeps the buckets
    oai.server.reset_rate_limits()
    assert (await oai.ok())["x-ratelimit-remaining-requests"] == "29"


async def test_openai_refill_over_real_time(
    servers: list[OpenAIServer | AnthropicServer],
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic],
) -> None:
    # A 1 s window of 60 RPM holds 1 request and refills it in 1 s (real clock).
    server = OpenAIServer(requests_per_minute=60, rate_limit_window_seconds=1.0)
    servers.append(server)
    oai = await start_openai(clients, server)
    started = time.monotonic()
    await oai.ok()
    await oai.limited()
    assert time.monotonic() - started < 0.9  # otherwise the refill could have let it through
    await asyncio.sleep(1.3)
    await oai.ok()
    assert server.status_counts == {200: 2, 429: 1}


# ---------------------------------------------------------------------- Anthropic


async def test_anthropic_headers_on_success_and_remaining_decreases(
    make_anthropic: MakeAnthropic,
) -> None:
    claude: AnthropicHarness = await make_anthropic(
        requests_per_minute=60, input_tokens_per_minute=600, output_tokens_per_minute=600
    )
    # Buckets: 3 requests (1/s), 30 input and 30 output tokens (10/s each).
    first = await claude.ok("hello", max_tokens=10)  # 1 input, 2 output (8 of 10 refunded)
    second = await claude.ok("hello", max_tokens=10)

    assert first == {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "2",
        "anthropic-ratelimit-requests-reset": "2025-06-15T15:06:41Z",
        "anthropic-ratelimit-input-tokens-limit": "600",
        "anthropic-ratelimit-input-tokens-remaining": "29",
        "anthropic-ratelimit-input-tokens-reset": "2025-06-15T15:06:40.1Z",
        "anthropic-ratelimit-output-tokens-limit": "600",
        "anthropic-ratelimit-output-tokens-remaining": "28",
        "anthropic-ratelimit-output-tokens-reset": "2025-06-15T15:06:40.2Z",
        # No combined limit configured: the most restrictive token limit is reported.
        "anthropic-ratelimit-tokens-limit": "600",
        "anthropic-ratelimit-tokens-remaining": "28",
        "anthropic-ratelimit-tokens-reset": "2025-06-15T15:06:40.2Z",
    }
    assert second["anthropic-ratelimit-requests-remaining"] == "1"
    assert second["anthropic-ratelimit-requests-reset"] == "2025-06-15T15:06:42Z"
    assert second["anthropic-ratelimit-input-tokens-remaining"] == "28"
    assert second["anthropic-ratelimit-output-tokens-remaining"] == "26"
    assert claude.server.rate_limit_charged == {
        "requests": 2,
        "tokens": 6,
        "input_tokens": 2,
        "output_tokens": 4,
    }


async def test_anthropic_rpm_answers_rate_limit_error_then_refills(
    make_anthropic: MakeAnthropic, clock: Clock
) -> None:
    claude: AnthropicHarness = await make_anthropic(requests_per_minute=60)
    for _ in range(3):
        headers = await claude.ok()
    assert set(headers) == {
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    }

    error = await claude.limited()
    assert error.status_code == 429
    assert error.type == "rate_limit_error"
    assert "60 requests per minute" in str(error.message)
    assert error.response.headers["retry-after"] == "1"
    assert error.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert error.response.headers["anthropic-ratelimit-requests-reset"] == "2025-06-15T15:06:43Z"
    assert error.request_id is not None
    assert error.request_id.startswith("req_")

    clock.now += 1.0
    await claude.ok()
    assert claude.server.rate_limit_rejections == {"requests": 1}

    # count_tokens is not a generation request: neither limited nor given headers.
    for _ in range(3):
        raw = await claude.client.messages.with_raw_response.count_tokens(
            model=CLAUDE, messages=[{"role": "user", "content": "hello"}]
        )
        assert ratelimit_headers(raw.headers) == {}


async def test_anthropic_input_tokens_limit_is_enforced_alone(
    make_anthropic: MakeAnthropic, clock: Clock
) -> None:
    claude: AnthropicHarness = await make_anthropic(input_tokens_per_minute=600)
    # Input bucket: 30 tokens (10/s).  Output is not limited, so max_tokens does not matter.
    headers = await claude.ok(words(25), max_tokens=5000)
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "5"
    assert "anthropic-ratelimit-output-tokens-limit" not in headers

    error = await claude.limited(words(25), max_tokens=5000)
    assert "600 input tokens per minute" in str(error.message)
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["retry-after-ms"] == "2000"
    clock.now += 2.0
    await claude.ok(words(25), max_tokens=5000)
    assert claude.server.rate_limit_rejections == {"input_tokens": 1}


async def test_anthropic_output_tokens_limit_reserves_max_tokens_and_refunds(
    make_anthropic: MakeAnthropic, clock: Clock
) -> None:
    claude: AnthropicHarness = await make_anthropic(output_tokens_per_minute=600)
    # Output bucket: 30 tokens (10/s).  A long prompt does not touch it.
    headers = await claude.ok(words(100), max_tokens=30)  # reserves 30, uses 30 (cut reply)
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
    assert "anthropic-ratelimit-input-tokens-limit" not in headers

    clock.now += 3.0
    headers = await claude.ok("hello", max_tokens=30)  # reserves 30, uses 2: 28 refunded
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "28"

    error = await claude.limited("hello", max_tokens=30)  # needs 30, holds 28
    assert "600 output tokens per minute" in str(error.message)
    assert error.response.headers["retry-after-ms"] == "200"
    assert error.response.headers["retry-after"] == "1"
    await claude.ok("hello", max_tokens=28)
    assert claude.server.rate_limit_rejections == {"output_tokens": 1}
    assert claude.server.rate_limit_charged["output_tokens"] == 30 + 2 + 2

    too_large = await claude.limited("hello", max_tokens=601)
    assert "retry-after" not in too_large.response.headers


async def test_anthropic_cache_reads_do_not_count_against_input_tokens(
    make_anthropic: MakeAnthropic,
) -> None:
    def respond(request: ProviderRequest) -> Reply:
        return Reply(text="cached", cached_tokens=20)

    claude: AnthropicHarness = await make_anthropic(input_tokens_per_minute=600, respond=respond)
    # 25 prompt tokens are reserved at admission; the 20 read from the cache are refunded.
    headers = await claude.ok(words(25))
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "25"
    assert claude.server.rate_limit_charged["input_tokens"] == 5


async def test_anthropic_combined_tokens_limit(make_anthropic: MakeAnthropic, clock: Clock) -> None:
    claude: AnthropicHarness = await make_anthropic(
        tokens_per_minute=1200, output_tokens_per_minute=6000
    )
    # Combined bucket: 60 tokens (20/s); output bucket: 300 (100/s).
    headers = await claude.ok(words(40), max_tokens=10)  # 40 input + 10 output (cut reply)
    assert headers["anthropic-ratelimit-tokens-limit"] == "1200"  # the combined limit itself
    assert headers["anthropic-ratelimit-tokens-remaining"] == "10"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "290"

    error = await claude.limited(words(5), max_tokens=10)  # needs 15 of the 10 left
    assert "1200 tokens per minute" in str(error.message)
    assert error.response.headers["retry-after-ms"] == "250"
    assert claude.server.rate_limit_rejections == {"tokens": 1}
