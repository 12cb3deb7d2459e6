"""The Gemini models, strategies and classifier driving the real ``google-genai`` client.

Every test talks HTTP to an in-process :class:`GeminiServer`; the server's cache store and our
models read the same manual clock, so cache lifetimes are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from google import genai
from google.genai import errors, types

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm._providers import gemini as provider
from async_batch_llm._strategies.gemini import GeminiCachedStrategy, GeminiStrategy
from async_batch_llm._types import LLMResponse
from async_batch_llm.classifiers.gemini import DEFAULT_RATE_LIMIT_WAIT, GeminiErrorClassifier
from async_batch_llm.models import GeminiCachedModel, GeminiModel
from async_batch_llm.strategies.errors import ErrorInfo
from async_batch_llm.testing import servers
from async_batch_llm.testing.servers import GeminiServer

MODEL = "gemini-2.5-flash"
CONTEXT_TEXT = "alpha beta gamma delta epsilon zeta eta theta"  # 8 tokens on the server
CONTEXT = [types.Content(role="user", parts=[types.Part(text=CONTEXT_TEXT)])]


class ManualClock:
    """Epoch seconds that only move when a test advances them."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def server(clock: ManualClock) -> AsyncIterator[GeminiServer]:
    async with GeminiServer(clock=clock) as running:
        yield running


@pytest.fixture
async def client(server: GeminiServer) -> AsyncIterator[genai.Client]:
    sdk = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))
    yield sdk
    await sdk.aio.aclose()


def cached_model(client: genai.Client, clock: ManualClock, **kwargs: object) -> GeminiCachedModel:
    model = GeminiCachedModel(MODEL, client, CONTEXT, **kwargs)  # type: ignore[arg-type]  # test passthrough
    model._clock = clock
    return model


def echo_text(response: LLMResponse) -> str:
    return response.text


# --------------------------------------------------------------------------- GeminiModel


async def test_strategy_with_gemini_model_generates(
    server: GeminiServer, client: genai.Client
) -> None:
    model = GeminiModel(
        MODEL,
        client,
        system_instruction="Answer briefly.",
        safety_settings=[{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
    )
    strategy = GeminiStrategy(model, echo_text, temperature=0.25)

    output, usage = await strategy.execute("three word prompt", 1, 30.0)

    assert output == "echo: three word prompt"
    # The server counts words: 2 of system instruction + 3 of prompt in, 4 out.
    assert usage == {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}
    [request] = server.requests
    assert request.path == f"/v1/models/{MODEL}:generateContent"
    assert request.body["generationConfig"] == {"temperature": 0.25}
    assert request.body["systemInstruction"]["parts"] == [{"text": "Answer briefly."}]
    assert request.body["safetySettings"] == [
        {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}
    ]


async def test_gemini_model_reports_sdk_metadata(client: genai.Client) -> None:
    response = await GeminiModel(MODEL, client).generate("hi")

    assert isinstance(response.raw, types.GenerateContentResponse)
    assert response.metadata is not None
    assert response.metadata["finish_reason"] == "FinishReason.STOP"
    assert response.metadata["safety_ratings"]["HarmCategory.HARM_CATEGORY_HATE_SPEECH"] == (
        "HarmProbability.NEGLIGIBLE"
    )


async def test_caller_config_reaches_the_wire(server: GeminiServer, client: genai.Client) -> None:
    response = await GeminiModel(MODEL, client).generate(
        "one two three four five", config={"max_output_tokens": 2, "temperature": 0.9}
    )

    assert server.requests[0].body["generationConfig"] == {
        "temperature": 0.9,
        "maxOutputTokens": 2,
    }
    assert response.metadata is not None
    assert response.metadata["finish_reason"] == "FinishReason.MAX_TOKENS"


# --------------------------------------------------------------------------- caching


async def test_concurrent_calls_create_exactly_one_cache(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    strategy = GeminiStrategy(cached_model(client, clock), echo_text)

    results = await asyncio.gather(*(strategy.execute(f"q{i}", 1, 30.0) for i in range(12)))

    assert server.counts["cache_create"] == 1
    assert server.counts["cache_list"] == 1
    [cache_name] = server.caches
    assert {r.cached_content for r in server.requests if r.kind == "generate_content"} == {
        cache_name
    }
    assert sorted(output for output, _ in results) == sorted(f"echo: q{i}" for i in range(12))


async def test_cached_tokens_flow_into_response_and_usage(
    client: genai.Client, clock: ManualClock
) -> None:
    model = cached_model(client, clock)
    await model.prepare()

    response = await model.generate("what now")
    strategy = GeminiStrategy(model, echo_text)
    _, usage = await strategy.execute("what now", 1, 30.0)

    assert response.cached_input_tokens == 8
    assert response.input_tokens == 2 + 8  # the prompt plus the cached context
    assert usage == {
        "input_tokens": 10,
        "output_tokens": 3,
        "total_tokens": 13,
        "cached_input_tokens": 8,
    }


async def test_cache_is_created_with_contents_and_ttl(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    model = cached_model(client, clock, cache_ttl_seconds=900, cache_renewal_buffer_seconds=60)

    await model.prepare()

    [cache] = server.caches.values()
    assert cache.name == model.cache_name
    assert cache.model == f"models/{MODEL}"
    assert cache.expire_time - cache.create_time == 900
    assert cache.token_count == 8


async def test_renewal_when_the_ttl_is_near(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    model = cached_model(client, clock, cache_ttl_seconds=600, cache_renewal_buffer_seconds=60)
    await model.prepare()
    first = model.cache_name
    clock.advance(539)

    await model.generate("still fresh")
    assert model.cache_name == first
    # 59 s left: inside the renewal buffer. (Not exactly 60: the server's timestamps round to
    # microseconds, so the listed copy of the old cache may sit a hair either side of the edge.)
    clock.advance(2)
    await asyncio.gather(*(model.generate(f"renew {i}") for i in range(10)))

    assert server.counts["cache_create"] == 2
    assert model.cache_name != first
    assert first in server.caches  # the old cache is still alive server-side...
    last = server.requests[-1]
    assert last.cached_content == model.cache_name  # ...but no longer used


async def test_renewal_after_server_side_expiry(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    model = cached_model(client, clock, cache_ttl_seconds=600, cache_renewal_buffer_seconds=60)
    await model.prepare()
    first = model.cache_name
    clock.advance(3600)

    response = await model.generate("after a long pause")

    assert response.cached_input_tokens == 8
    assert first not in server.caches
    assert model.cache_name in server.caches
    assert server.counts["cache_create"] == 2


async def test_expired_cache_without_auto_renew_is_a_client_error(
    client: genai.Client, clock: ManualClock
) -> None:
    model = cached_model(
        client, clock, cache_ttl_seconds=600, cache_renewal_buffer_seconds=60, auto_renew=False
    )
    await model.prepare()
    clock.advance(601)

    with pytest.raises(errors.ClientError) as caught:
        await model.generate("too late")

    assert caught.value.code == 403
    assert GeminiErrorClassifier().classify(caught.value).error_category == "client_error"


async def test_delete_cache_deletes_it_server_side(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    strategy = GeminiCachedStrategy(MODEL, client, CONTEXT)
    strategy.model._clock = clock
    await strategy.prepare()
    assert len(server.caches) == 1

    await strategy.delete_cache()

    assert server.caches == {}
    assert server.counts["cache_delete"] == 1
    assert strategy.model.cache_name is None


async def test_delete_of_a_vanished_cache_is_logged_not_raised(
    server: GeminiServer, client: genai.Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    model = cached_model(client, clock, cache_ttl_seconds=600, cache_renewal_buffer_seconds=60)
    await model.prepare()
    name = model.cache_name
    clock.advance(601)  # gone server-side: delete answers 403

    with caplog.at_level(logging.WARNING, logger=provider.__name__):
        await model.delete_cache()

    assert model.cache_name == name
    assert "Deleting Gemini cache" in caplog.text


async def test_cleanup_never_deletes(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    strategy = GeminiCachedStrategy(MODEL, client, CONTEXT)
    strategy.model._clock = clock

    await strategy.cleanup()
    await strategy.prepare()
    await strategy.cleanup()
    await strategy.cleanup()

    assert server.counts["cache_delete"] == 0
    assert list(server.caches) == [strategy.model.cache_name]


async def test_a_later_run_reuses_the_listed_cache(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    await client.aio.caches.create(
        model="gemini-2.0-flash",
        config=types.CreateCachedContentConfig(contents=CONTEXT, ttl="3600s"),
    )
    first_run = cached_model(client, clock)
    await first_run.prepare()
    await first_run.cleanup()

    second_run = cached_model(client, clock)
    await second_run.prepare()
    response = await second_run.generate("reuse it")

    assert second_run.cache_name == first_run.cache_name
    assert server.counts["cache_create"] == 2  # the other model's cache and the first run's
    assert response.cached_input_tokens == 8


async def test_listing_follows_pages(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    decoy = types.CreateCachedContentConfig(contents=CONTEXT, ttl="3600s")
    await asyncio.gather(
        *(client.aio.caches.create(model="gemini-2.0-flash", config=decoy) for _ in range(100))
    )
    mine = await client.aio.caches.create(
        model=MODEL, config=types.CreateCachedContentConfig(contents=CONTEXT, ttl="3600s")
    )
    model = cached_model(client, clock)

    await model.prepare()

    assert model.cache_name == mine.name
    assert server.counts["cache_list"] == 2  # the server pages 100 at a time
    assert server.counts["cache_create"] == 101


async def test_cache_tags_degrade_on_this_sdk(
    server: GeminiServer, client: genai.Client, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    tags = {"job": "nightly"}
    first = cached_model(client, clock, cache_tags=tags)

    with caplog.at_level(logging.WARNING, logger=provider.__name__):
        await first.prepare()
    second = cached_model(client, clock, cache_tags=tags)
    await second.prepare()

    assert "cache_tags" in caplog.text
    assert "metadata" not in server.requests[1].body  # created without tags
    # Listed caches carry no tags, so a tagged model never reuses one.
    assert second.cache_name != first.cache_name
    assert server.counts["cache_create"] == 2


async def test_cached_strategy_readme_snippet(server: GeminiServer, client: genai.Client) -> None:
    strategy = GeminiCachedStrategy(
        model=MODEL,
        client=client,
        cached_content=[
            genai.types.Content(role="user", parts=[genai.types.Part(text="Large document.")])
        ],
        cache_ttl_seconds=3600,
        auto_renew=True,
    )

    await strategy.prepare()
    output, usage = await strategy.execute("Summarise", 1, 30.0)
    await strategy.cleanup()

    assert output == "echo: Summarise"
    assert usage.get("cached_input_tokens") == 2
    assert server.counts["cache_create"] == 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        pytest.param(
            servers.RateLimited(retry_after=2.0),
            ErrorInfo(False, True, False, "rate_limit", 2.0),
            id="429-retry-info",
        ),
        pytest.param(
            servers.RateLimited(retry_after=0.5),
            ErrorInfo(False, True, False, "rate_limit", 0.5),
            id="429-fractional-retry-info",
        ),
        pytest.param(
            servers.RateLimited(retry_after=None),
            ErrorInfo(False, True, False, "rate_limit", DEFAULT_RATE_LIMIT_WAIT),
            id="429-without-retry-info",
        ),
        pytest.param(
            servers.ServerError(500),
            ErrorInfo(False, False, False, "server_error"),
            id="500",
        ),
        pytest.param(
            servers.ServerError(503),
            ErrorInfo(False, False, False, "server_error"),
            id="503",
        ),
        pytest.param(
            servers.ServerError(504),
            ErrorInfo(True, False, True, "server_timeout"),
            id="504",
        ),
        pytest.param(
            servers.ErrorResponse(400),
            ErrorInfo(True, False, False, "client_error"),
            id="400",
        ),
    ],
)
async def test_classifier_maps_real_sdk_errors(
    server: GeminiServer, client: genai.Client, fault: servers.Fault, expected: ErrorInfo
) -> None:
    server.script(fault)
    strategy = GeminiStrategy(GeminiModel(MODEL, client), echo_text)

    with pytest.raises(errors.APIError) as caught:
        await strategy.execute("hello", 1, 30.0)

    assert GeminiErrorClassifier().classify(caught.value) == expected
    assert server.counts["generate_content"] == 1  # the SDK did not retry on its own


async def test_rate_limited_cache_creation_propagates(
    server: GeminiServer, client: genai.Client, clock: ManualClock
) -> None:
    server.script(servers.RateLimited(retry_after=3.0), kind="cache_create")
    model = cached_model(client, clock)

    with pytest.raises(errors.ClientError) as caught:
        await model.prepare()
    await model.prepare()  # a later prepare tries again

    assert GeminiErrorClassifier().classify(caught.value).suggested_wait == 3.0
    assert model.cache_name in server.caches


async def test_processor_shares_one_cache_across_items(
    server: GeminiServer, client: genai.Client
) -> None:
    strategy = GeminiCachedStrategy(
        model=MODEL,
        client=client,
        cached_content=[
            genai.types.Content(role="user", parts=[genai.types.Part(text="Large document.")])
        ],
        cache_ttl_seconds=3600,
        auto_renew=True,
    )
    config = ProcessorConfig(max_workers=4, timeout_per_item=10.0)

    async with ParallelBatchProcessor[str, str, None](config=config) as processor:
        for i in range(10):
            await processor.add_work(
                LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt=f"question {i}")
            )
        result = await processor.process_all()

    assert (result.succeeded, result.failed) == (10, 0)
    assert server.counts["cache_create"] == 1
    assert server.counts["cache_delete"] == 0
    assert result.total_cached_tokens == 10 * 2
    assert result.total_input_tokens == 10 * (2 + 2)
    assert result.cache_hit_rate() == 50.0


@pytest.mark.parametrize("auto_renew", [True, False], ids=["auto-renew", "no-auto-renew"])
async def test_a_cache_deleted_elsewhere_is_forgotten_only_with_auto_renew(
    server: GeminiServer, client: genai.Client, clock: ManualClock, auto_renew: bool
) -> None:
    model = cached_model(
        client,
        clock,
        cache_ttl_seconds=600,
        cache_renewal_buffer_seconds=60,
        auto_renew=auto_renew,
    )
    await model.prepare()
    dead = model.cache_name
    assert dead is not None
    await client.aio.caches.delete(name=dead)

    with pytest.raises(errors.ClientError) as caught:
        await model.generate("first try")
    assert caught.value.code == 403

    if auto_renew:
        assert model.cache_name is None
        response = await model.generate("second try")
        assert model.cache_name not in (None, dead)
        assert response.cached_input_tokens > 0
        assert server.counts["cache_create"] == 2
    else:
        assert model.cache_name == dead
        with pytest.raises(errors.ClientError):
            await model.generate("second try")
        assert server.counts["cache_create"] == 1
