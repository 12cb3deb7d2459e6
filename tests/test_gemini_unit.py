"""Unit tests of the Gemini models, strategies and classifier against in-memory fakes.

The fakes stand in for ``google.genai.Client``; responses and errors are real SDK objects built
with their public constructors. The real client over HTTP is exercised in
``tests/providers/test_gemini_sdk.py``.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pydantic
import pytest
from google import genai
from google.genai import errors, types

from async_batch_llm._providers import gemini as provider
from async_batch_llm._providers.gemini import (
    GeminiCachedModel,
    GeminiModel,
    normalize_gemini_response,
)
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._strategies.gemini import GeminiCachedStrategy, GeminiStrategy
from async_batch_llm._types import LLMResponse
from async_batch_llm.classifiers.gemini import (
    DEFAULT_RATE_LIMIT_WAIT,
    RATE_LIMIT_PATTERNS,
    TIMEOUT_PATTERNS,
    GeminiErrorClassifier,
    retry_delay_from_gemini_error,
)
from async_batch_llm.core.protocols import LLMModel, ManagedLLMModel
from async_batch_llm.strategies.errors import ErrorInfo, FrameworkTimeoutError, TokenTrackingError

MODEL = "gemini-2.5-flash"
CONTEXT = [types.Content(role="user", parts=[types.Part(text="A long shared document.")])]


# --------------------------------------------------------------------------- fakes


class FakeClock:
    """Epoch seconds that only move when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cache_entry(
    name: str,
    model: str | None = f"models/{MODEL}",
    created_at: float | None = None,
) -> types.CachedContent:
    create_time = None if created_at is None else datetime.fromtimestamp(created_at, tz=UTC)
    return types.CachedContent(name=name, model=model, create_time=create_time)


class FakeModels:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.response = make_response()
        self.error: Exception | None = None

    async def generate_content(
        self, *, model: str, contents: Any, config: Any
    ) -> types.GenerateContentResponse:
        self.calls.append({"model": model, "contents": contents, "config": config})
        if self.error is not None:
            raise self.error
        return self.response


class FakeCaches:
    """An in-memory cache store with call counters."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.entries: list[Any] = []
        self.list_calls = 0
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.list_error: Exception | None = None
        self.delete_error: Exception | None = None

    async def list(self) -> AsyncIterator[Any]:
        self.list_calls += 1
        await asyncio.sleep(0)
        if self.list_error is not None:
            raise self.list_error
        return _pages(tuple(self.entries))

    async def create(
        self, *, model: str, config: types.CreateCachedContentConfig
    ) -> types.CachedContent:
        self.created.append({"model": model, "config": config})
        # Several yields, so concurrent callers really interleave around a slow create.
        for _ in range(3):
            await asyncio.sleep(0)
        entry = cache_entry(f"cachedContents/c{len(self.created)}", created_at=self.clock())
        self.entries.append(entry)
        return entry

    async def delete(self, *, name: str) -> None:
        if self.delete_error is not None:
            raise self.delete_error
        self.deleted.append(name)
        self.entries = [entry for entry in self.entries if entry.name != name]


async def _pages(entries: tuple[Any, ...]) -> AsyncIterator[Any]:
    for entry in entries:
        await asyncio.sleep(0)
        yield entry


class FakeAio:
    def __init__(self, clock: FakeClock) -> None:
        self.models = FakeModels()
        self.caches = FakeCaches(clock)


class FakeClient:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.aio = FakeAio(self.clock)

    @property
    def sdk(self) -> genai.Client:
        """This fake, typed as the client it imitates."""
        return cast("genai.Client", self)


def make_response(
    text: str | None = "hello",
    *,
    usage: types.GenerateContentResponseUsageMetadata | None = None,
    ratings: list[types.SafetyRating] | None = None,
    finish_reason: types.FinishReason | None = types.FinishReason.STOP,
    candidates: bool = True,
) -> types.GenerateContentResponse:
    if usage is None:
        usage = types.GenerateContentResponseUsageMetadata(
            prompt_token_count=100, candidates_token_count=20, total_token_count=120
        )
    if not candidates:
        return types.GenerateContentResponse(candidates=[], usage_metadata=usage)
    content = None
    if text is not None:
        content = types.Content(role="model", parts=[types.Part(text=text)])
    candidate = types.Candidate(
        content=content, finish_reason=finish_reason, safety_ratings=ratings
    )
    return types.GenerateContentResponse(candidates=[candidate], usage_metadata=usage)


def cached_model(client: FakeClient, **kwargs: Any) -> GeminiCachedModel:
    model = GeminiCachedModel(MODEL, client.sdk, CONTEXT, **kwargs)
    model._clock = client.clock
    return model


# --------------------------------------------------------------------------- GeminiModel


@pytest.mark.parametrize(
    ("ctor", "call", "expected"),
    [
        pytest.param({}, {}, {"temperature": 0.0}, id="defaults"),
        pytest.param({}, {"temperature": 0.7}, {"temperature": 0.7}, id="temperature"),
        pytest.param(
            {"system_instruction": "be brief"},
            {},
            {"temperature": 0.0, "system_instruction": "be brief"},
            id="constructor-instruction",
        ),
        pytest.param(
            {"system_instruction": "be brief"},
            {"system_instruction": "be verbose"},
            {"temperature": 0.0, "system_instruction": "be verbose"},
            id="call-instruction-wins",
        ),
        pytest.param(
            {"system_instruction": "be brief"},
            {"system_instruction": ""},
            {"temperature": 0.0, "system_instruction": "be brief"},
            id="empty-call-instruction-falls-back",
        ),
        pytest.param(
            {"safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH"}]},
            {},
            {"temperature": 0.0, "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH"}]},
            id="safety-settings",
        ),
        pytest.param({"safety_settings": []}, {}, {"temperature": 0.0}, id="empty-safety"),
        pytest.param(
            {"system_instruction": "be brief"},
            {"temperature": 0.2, "config": {"temperature": 0.9, "max_output_tokens": 5}},
            {"temperature": 0.9, "system_instruction": "be brief", "max_output_tokens": 5},
            id="config-merged-last",
        ),
    ],
)
async def test_gemini_model_builds_plain_dict_config(
    ctor: dict[str, Any], call: dict[str, Any], expected: dict[str, Any]
) -> None:
    client = FakeClient()
    model = GeminiModel(MODEL, client.sdk, **ctor)

    await model.generate("Hi", **call)

    [request] = client.aio.models.calls
    assert request == {"model": MODEL, "contents": "Hi", "config": expected}
    assert type(request["config"]) is dict


async def test_gemini_model_passes_multimodal_prompt_through() -> None:
    client = FakeClient()
    parts: list[Any] = [types.Part(text="look"), {"text": "at this"}]

    await GeminiModel(MODEL, client.sdk).generate(parts)

    assert client.aio.models.calls[0]["contents"] is parts


async def test_gemini_model_returns_normalised_response() -> None:
    client = FakeClient()

    response = await GeminiModel(MODEL, client.sdk).generate("Hi")

    assert response.text == "hello"
    assert response.token_usage == {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
    assert response.raw is client.aio.models.response


async def test_gemini_model_propagates_api_errors_unchanged() -> None:
    client = FakeClient()
    error = errors.ServerError(500, {"error": {"code": 500, "status": "INTERNAL"}})
    client.aio.models.error = error

    with pytest.raises(errors.ServerError) as caught:
        await GeminiModel(MODEL, client.sdk).generate("Hi")
    assert caught.value is error


def test_gemini_models_satisfy_the_protocols() -> None:
    client = FakeClient()
    plain = GeminiModel(MODEL, client.sdk)
    cached = GeminiCachedModel(MODEL, client.sdk, CONTEXT)

    assert isinstance(plain, LLMModel)
    assert not isinstance(plain, ManagedLLMModel)
    assert isinstance(cached, ManagedLLMModel)


def test_models_module_reexports_the_provider_classes() -> None:
    from async_batch_llm import models

    assert models.GeminiModel is GeminiModel
    assert models.GeminiCachedModel is GeminiCachedModel


# --------------------------------------------------------------------------- missing SDK


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: GeminiModel(MODEL, FakeClient().sdk), id="GeminiModel"),
        pytest.param(
            lambda: GeminiCachedModel(MODEL, FakeClient().sdk, CONTEXT), id="GeminiCachedModel"
        ),
        pytest.param(
            lambda: GeminiCachedStrategy(MODEL, FakeClient().sdk, CONTEXT),
            id="GeminiCachedStrategy",
        ),
    ],
)
def test_construction_without_google_genai_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], object]
) -> None:
    monkeypatch.setitem(sys.modules, "google.genai", None)

    with pytest.raises(ImportError, match="google-genai is required") as caught:
        build()
    assert "pip install 'async-batch-llm[gemini]'" in str(caught.value)


def test_package_modules_import_without_loading_google_genai() -> None:
    script = (
        "import sys\n"
        "sys.modules['google.genai'] = None\n"
        "import async_batch_llm.models, async_batch_llm.classifiers\n"
        "import async_batch_llm._strategies.gemini\n"
        "from async_batch_llm.classifiers import GeminiErrorClassifier\n"
        "info = GeminiErrorClassifier().classify(ValueError('x'))\n"
        "assert info.error_category == 'unknown' and info.is_retryable, info\n"
        "assert 'google.genai.errors' not in sys.modules\n"
        "assert 'pydantic_ai' not in sys.modules\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr


# --------------------------------------------------------------------------- GeminiCachedModel


@pytest.mark.parametrize(
    ("ttl", "buffer"),
    [pytest.param(300, 300, id="equal"), pytest.param(300, 301, id="greater")],
)
def test_cached_model_rejects_buffer_not_below_ttl(ttl: int, buffer: int) -> None:
    client = FakeClient()

    with pytest.raises(ValueError, match="must be less than cache_ttl_seconds") as caught:
        GeminiCachedModel(
            MODEL,
            client.sdk,
            CONTEXT,
            cache_ttl_seconds=ttl,
            cache_renewal_buffer_seconds=buffer,
        )
    assert str(ttl) in str(caught.value)
    assert str(buffer) in str(caught.value)


@pytest.mark.parametrize("ttl", [10, 30, 59])
def test_cached_model_warns_once_about_short_ttl(ttl: int) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GeminiCachedModel(
            MODEL, FakeClient().sdk, CONTEXT, cache_ttl_seconds=ttl, cache_renewal_buffer_seconds=1
        )

    assert len(caught) == 1
    assert caught[0].category is UserWarning
    assert "less than 60 seconds" in str(caught[0].message)


@pytest.mark.parametrize("ttl", [1, 9, 60, 3600])
def test_cached_model_does_not_warn_for_test_or_long_ttls(ttl: int) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GeminiCachedModel(
            MODEL,
            FakeClient().sdk,
            CONTEXT,
            cache_ttl_seconds=ttl,
            cache_renewal_buffer_seconds=0,
        )

    assert caught == []


def test_cached_model_constructor_does_no_io() -> None:
    client = FakeClient()

    model = GeminiCachedModel(MODEL, client.sdk, CONTEXT, cache_tags=None)

    assert model.cache_name is None
    assert client.aio.caches.list_calls == 0
    assert client.aio.caches.created == []


async def test_prepare_creates_cache_with_contents_and_ttl() -> None:
    client = FakeClient()
    model = cached_model(client, cache_ttl_seconds=1200, cache_renewal_buffer_seconds=60)

    await model.prepare()

    [created] = client.aio.caches.created
    assert created["model"] == MODEL
    config = created["config"]
    assert isinstance(config, types.CreateCachedContentConfig)
    assert config.contents == CONTEXT
    assert config.ttl == "1200s"
    assert model.cache_name == "cachedContents/c1"


async def test_prepare_is_idempotent() -> None:
    client = FakeClient()
    model = cached_model(client)

    await model.prepare()
    await model.prepare()

    assert client.aio.caches.list_calls == 1
    assert len(client.aio.caches.created) == 1


async def test_concurrent_prepare_does_one_lookup() -> None:
    client = FakeClient()
    model = cached_model(client)

    await asyncio.gather(*(model.prepare() for _ in range(10)))

    assert client.aio.caches.list_calls == 1
    assert len(client.aio.caches.created) == 1


async def test_prepare_reuses_first_listed_cache_for_the_model() -> None:
    client = FakeClient()
    now = client.clock()
    client.aio.caches.entries = [
        cache_entry("cachedContents/other", model="models/gemini-1.5-pro", created_at=now),
        cache_entry("cachedContents/nameless-model", model=None, created_at=now),
        cache_entry("cachedContents/mine", model=f"projects/p/models/{MODEL}", created_at=now),
        cache_entry("cachedContents/second", created_at=now),
    ]
    model = cached_model(client)

    await model.prepare()

    assert model.cache_name == "cachedContents/mine"
    assert client.aio.caches.created == []


class TaggedEntry:
    """A listed cache as 0.6.0 imagined it: with a ``metadata`` mapping."""

    def __init__(self, name: str, metadata: dict[str, object] | None) -> None:
        self.name = name
        self.model = f"models/{MODEL}"
        self.create_time = datetime.fromtimestamp(1_700_000_000.0, tz=UTC)
        self.metadata = metadata


@pytest.mark.parametrize(
    ("metadata", "reused"),
    [
        pytest.param({"job": "a", "env": "prod"}, True, id="exact"),
        pytest.param({"job": "a", "env": "prod", "extra": "x"}, True, id="extra-tags-fine"),
        pytest.param({"job": "A", "env": "prod"}, False, id="case-sensitive"),
        pytest.param({"job": "a"}, False, id="missing-tag"),
        pytest.param({"job": "a", "env": 1}, False, id="type-sensitive"),
        pytest.param(None, False, id="no-metadata"),
    ],
)
async def test_prepare_matches_cache_tags_exactly(
    metadata: dict[str, object] | None, reused: bool
) -> None:
    client = FakeClient()
    client.aio.caches.entries = [TaggedEntry("cachedContents/tagged", metadata)]
    model = cached_model(client, cache_tags={"job": "a", "env": "prod"})

    await model.prepare()

    assert (model.cache_name == "cachedContents/tagged") is reused
    assert len(client.aio.caches.created) == (0 if reused else 1)


async def test_cache_tags_are_dropped_when_the_sdk_rejects_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient()
    model = cached_model(client, cache_tags={"job": "a"})

    with caplog.at_level(logging.WARNING, logger=provider.__name__):
        await model.prepare()

    [created] = client.aio.caches.created
    assert created["config"].contents == CONTEXT
    assert "cache_tags" in caplog.text
    assert model.cache_name is not None


async def test_listing_failure_falls_back_to_creation(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient()
    client.aio.caches.list_error = errors.ServerError(503, {"error": {"status": "UNAVAILABLE"}})
    model = cached_model(client)

    with caplog.at_level(logging.WARNING, logger=provider.__name__):
        await model.prepare()

    assert model.cache_name == "cachedContents/c1"
    assert "Listing Gemini caches failed" in caplog.text


async def test_creation_failure_propagates_and_prepare_can_be_retried() -> None:
    client = FakeClient()
    model = cached_model(client)
    failing = errors.ClientError(429, {"error": {"status": "RESOURCE_EXHAUSTED"}})

    async def refuse(*, model: str, config: types.CreateCachedContentConfig) -> Any:
        raise failing

    real_create = client.aio.caches.create
    client.aio.caches.create = refuse  # type: ignore[method-assign]  # inject a failure
    with pytest.raises(errors.ClientError):
        await model.prepare()
    client.aio.caches.create = real_create  # type: ignore[method-assign]  # heal it

    await model.prepare()
    assert model.cache_name == "cachedContents/c1"


async def test_cached_generate_builds_config_with_cache_name() -> None:
    client = FakeClient()
    safety = [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
    model = cached_model(client, safety_settings=safety)
    await model.prepare()

    await model.generate("Q", temperature=0.3, config={"max_output_tokens": 7})

    [request] = client.aio.models.calls
    assert request == {
        "model": MODEL,
        "contents": "Q",
        "config": {
            "cached_content": "cachedContents/c1",
            "temperature": 0.3,
            "safety_settings": safety,
            "max_output_tokens": 7,
        },
    }


async def test_cached_generate_refuses_system_instruction() -> None:
    client = FakeClient()
    model = cached_model(client)

    with pytest.raises(ValueError, match=r"^system_instruction cannot be overridden"):
        await model.generate("Q", system_instruction="be brief")
    assert client.aio.caches.list_calls == 0


async def test_cached_generate_without_cache_or_renewal_needs_prepare() -> None:
    client = FakeClient()
    model = cached_model(client, auto_renew=False)

    with pytest.raises(RuntimeError, match=r"prepare\(\)"):
        await model.generate("Q")
    assert client.aio.models.calls == []


async def test_cached_generate_creates_lazily_when_auto_renewing() -> None:
    client = FakeClient()
    model = cached_model(client)

    await model.generate("Q")

    assert model.cache_name == "cachedContents/c1"
    assert client.aio.models.calls[0]["config"]["cached_content"] == "cachedContents/c1"


async def test_concurrent_generates_on_expired_cache_create_exactly_once() -> None:
    client = FakeClient()
    model = cached_model(client)

    await asyncio.gather(*(model.generate(f"Q{i}") for i in range(25)))

    assert len(client.aio.caches.created) == 1
    assert {call["config"]["cached_content"] for call in client.aio.models.calls} == {
        "cachedContents/c1"
    }


@pytest.mark.parametrize(
    ("elapsed", "renewed"),
    [
        pytest.param(0.0, False, id="fresh"),
        pytest.param(3299.0, False, id="just-outside-buffer"),
        pytest.param(3300.0, True, id="buffer-reached"),
        pytest.param(5000.0, True, id="long-expired"),
    ],
)
async def test_expiry_rule_renews_within_the_buffer(elapsed: float, renewed: bool) -> None:
    client = FakeClient()
    model = cached_model(client, cache_ttl_seconds=3600, cache_renewal_buffer_seconds=300)
    await model.prepare()
    client.clock.now += elapsed

    await model.generate("Q")

    assert len(client.aio.caches.created) == (2 if renewed else 1)
    expected = "cachedContents/c2" if renewed else "cachedContents/c1"
    assert model.cache_name == expected
    assert client.aio.models.calls[-1]["config"]["cached_content"] == expected


async def test_concurrent_renewal_creates_exactly_once() -> None:
    client = FakeClient()
    model = cached_model(client, cache_ttl_seconds=600, cache_renewal_buffer_seconds=60)
    await model.prepare()
    client.clock.now += 550

    await asyncio.gather(*(model.generate(f"Q{i}") for i in range(25)))

    assert len(client.aio.caches.created) == 2
    assert model.cache_name == "cachedContents/c2"


async def test_renewal_skips_listed_caches_that_are_themselves_expiring() -> None:
    client = FakeClient()
    now = client.clock()
    client.aio.caches.entries = [cache_entry("cachedContents/old", created_at=now - 3500)]
    model = cached_model(client)

    await model.prepare()  # the first lookup adopts the old cache as the spec says
    assert model.cache_name == "cachedContents/old"
    await model.generate("Q")  # ...and the first call renews it instead of re-adopting it

    assert model.cache_name == "cachedContents/c1"
    assert len(client.aio.caches.created) == 1


async def test_listed_cache_without_create_time_counts_as_expired() -> None:
    client = FakeClient()
    client.aio.caches.entries = [cache_entry("cachedContents/undated")]
    model = cached_model(client)

    await model.prepare()
    assert model.cache_name == "cachedContents/undated"
    await model.generate("Q")

    assert model.cache_name == "cachedContents/c1"


async def test_expired_cache_without_auto_renew_is_still_used() -> None:
    client = FakeClient()
    model = cached_model(client, auto_renew=False)
    await model.prepare()
    client.clock.now += 10_000

    await model.generate("Q")

    assert len(client.aio.caches.created) == 1
    assert client.aio.models.calls[0]["config"]["cached_content"] == "cachedContents/c1"


async def test_cleanup_never_deletes_and_is_safe_before_prepare() -> None:
    client = FakeClient()
    model = cached_model(client)

    await model.cleanup()
    await model.prepare()
    await model.cleanup()
    await model.cleanup()

    assert client.aio.caches.deleted == []
    assert model.cache_name == "cachedContents/c1"


async def test_delete_cache_deletes_and_unprepares() -> None:
    client = FakeClient()
    model = cached_model(client)
    await model.prepare()

    await model.delete_cache()

    assert client.aio.caches.deleted == ["cachedContents/c1"]
    assert model.cache_name is None
    await model.prepare()  # prepares again from scratch
    assert client.aio.caches.list_calls == 2
    assert model.cache_name == "cachedContents/c2"


async def test_delete_cache_without_cache_is_a_noop() -> None:
    client = FakeClient()
    model = cached_model(client)

    await model.delete_cache()

    assert client.aio.caches.deleted == []


async def test_delete_cache_failure_is_logged_and_state_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient()
    model = cached_model(client)
    await model.prepare()
    client.aio.caches.delete_error = errors.ClientError(403, {"error": {"status": "DENIED"}})

    with caplog.at_level(logging.WARNING, logger=provider.__name__):
        await model.delete_cache()

    assert model.cache_name == "cachedContents/c1"
    assert "Deleting Gemini cache cachedContents/c1 failed" in caplog.text
    await model.prepare()  # still prepared: no new lookup
    assert client.aio.caches.list_calls == 1


# --------------------------------------------------------------------------- normalisation


def test_normalisation_reads_tokens_text_and_metadata() -> None:
    response = make_response(
        "answer",
        usage=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1000,
            candidates_token_count=50,
            total_token_count=1050,
            cached_content_token_count=900,
        ),
        ratings=[
            types.SafetyRating(
                category=types.HarmCategory.HARM_CATEGORY_HATE_SPEECH,
                probability=types.HarmProbability.NEGLIGIBLE,
            )
        ],
    )

    result = normalize_gemini_response(response)

    assert result == LLMResponse(
        text="answer",
        input_tokens=1000,
        output_tokens=50,
        total_tokens=1050,
        cached_input_tokens=900,
        metadata={
            "safety_ratings": {
                "HarmCategory.HARM_CATEGORY_HATE_SPEECH": "HarmProbability.NEGLIGIBLE"
            },
            "finish_reason": "FinishReason.STOP",
        },
        raw=response,
    )
    assert result.raw is response
    assert result.token_usage["cached_input_tokens"] == 900


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(None, id="no-usage-metadata"),
        pytest.param(types.GenerateContentResponseUsageMetadata(), id="all-counts-none"),
    ],
)
def test_normalisation_counts_missing_tokens_as_zero(
    usage: types.GenerateContentResponseUsageMetadata | None,
) -> None:
    response = make_response("x")
    response.usage_metadata = usage

    result = normalize_gemini_response(response)

    assert (result.input_tokens, result.output_tokens, result.total_tokens) == (0, 0, 0)
    assert result.cached_input_tokens == 0


def test_normalisation_metadata_is_none_without_candidates_data() -> None:
    response = make_response("x", finish_reason=None)

    assert normalize_gemini_response(response).metadata is None


def test_empty_response_raises_with_safety_ratings_and_usage() -> None:
    response = make_response(
        None,
        finish_reason=types.FinishReason.SAFETY,
        ratings=[
            types.SafetyRating(
                category=types.HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT,
                probability=types.HarmProbability.HIGH,
            )
        ],
    )

    with pytest.raises(ValueError, match=r"^Empty response from model") as caught:
        normalize_gemini_response(response)

    message = str(caught.value)
    assert message.startswith("Empty response from model (likely blocked by safety filter).")
    assert (
        " Safety ratings: {'HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT': "
        "'HarmProbability.HIGH'}" in message
    )
    assert caught.value.__dict__["_failed_token_usage"] == {
        "input_tokens": 100,
        "output_tokens": 20,
        "total_tokens": 120,
    }


def test_empty_response_without_ratings_has_the_bare_message() -> None:
    response = make_response(candidates=False)

    with pytest.raises(ValueError, match="Empty response") as caught:
        normalize_gemini_response(response)

    assert str(caught.value) == "Empty response from model (likely blocked by safety filter)."


class _ExplodingRatings:
    def __iter__(self) -> Any:
        raise RuntimeError("unreadable")

    def __bool__(self) -> bool:
        return True


def test_unreadable_metadata_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    response = make_response("fine")
    candidate = cast(Any, response.candidates)[0]
    object.__setattr__(candidate, "safety_ratings", _ExplodingRatings())

    with caplog.at_level(logging.WARNING, logger=provider.__name__):
        result = normalize_gemini_response(response)

    assert result.text == "fine"
    assert result.metadata is None
    assert "metadata" in caplog.text


# --------------------------------------------------------------------------- strategies


class RecordingModel:
    """An LLMModel (not managed) that records its calls."""

    def __init__(self, response: LLMResponse) -> None:
        self.response = response
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.error: Exception | None = None

    async def generate(
        self,
        prompt: str | list[Any],
        *,
        temperature: float = 0.0,
        system_instruction: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> LLMResponse:
        self.calls.append(((prompt,), {"temperature": temperature}))
        if self.error is not None:
            raise self.error
        return self.response


class ManagedRecordingModel(RecordingModel):
    def __init__(self, response: LLMResponse) -> None:
        super().__init__(response)
        self.events: list[str] = []

    async def prepare(self) -> None:
        self.events.append("prepare")

    async def cleanup(self) -> None:
        self.events.append("cleanup")


RESPONSE = LLMResponse("42", input_tokens=10, output_tokens=2, total_tokens=12)
CACHED_RESPONSE = LLMResponse(
    "42", input_tokens=10, output_tokens=2, total_tokens=12, cached_input_tokens=8
)


async def test_strategy_calls_generate_with_prompt_and_temperature_only() -> None:
    model = RecordingModel(CACHED_RESPONSE)
    strategy = GeminiStrategy(model, lambda r: int(r.text), temperature=0.4)

    output, usage = await strategy.execute("What?", 3, 30.0, None)

    assert output == 42
    assert usage == {
        "input_tokens": 10,
        "output_tokens": 2,
        "total_tokens": 12,
        "cached_input_tokens": 8,
    }
    assert model.calls == [(("What?",), {"temperature": 0.4})]
    assert isinstance(strategy, LLMCallStrategy)
    assert (strategy.model, strategy.temperature) == (model, 0.4)


async def test_strategy_attaches_usage_to_parser_errors() -> None:
    def parse(response: LLMResponse) -> str:
        return {"other": "x"}[response.text]

    strategy = GeminiStrategy(RecordingModel(RESPONSE), parse)

    with pytest.raises(KeyError) as caught:
        await strategy.execute("p", 1, 30.0)

    assert caught.value.__dict__["_failed_token_usage"] == RESPONSE.token_usage


class _DictlessError(Exception):
    @property
    def __dict__(self) -> Any:  # type: ignore[override]  # simulate an object without one
        raise AttributeError("__dict__")


async def test_strategy_wraps_parser_errors_that_cannot_take_attributes() -> None:
    def parse(response: LLMResponse) -> str:
        raise _DictlessError("bad output")

    strategy = GeminiStrategy(RecordingModel(RESPONSE), parse)

    with pytest.raises(TokenTrackingError) as caught:
        await strategy.execute("p", 1, 30.0)

    assert isinstance(caught.value.__cause__, _DictlessError)
    assert caught.value._failed_token_usage == RESPONSE.token_usage


async def test_strategy_propagates_generate_errors_unchanged() -> None:
    model = RecordingModel(RESPONSE)
    model.error = errors.ClientError(400, {"error": {"status": "INVALID_ARGUMENT"}})
    strategy = GeminiStrategy(model, lambda r: r.text)

    with pytest.raises(errors.ClientError) as caught:
        await strategy.execute("p", 1, 30.0)

    assert caught.value is model.error
    assert "_failed_token_usage" not in caught.value.__dict__


async def test_strategy_prepares_and_cleans_up_managed_models_only() -> None:
    managed = ManagedRecordingModel(RESPONSE)
    plain = RecordingModel(RESPONSE)

    await GeminiStrategy(managed, lambda r: r.text).prepare()
    await GeminiStrategy(managed, lambda r: r.text).cleanup()
    await GeminiStrategy(plain, lambda r: r.text).prepare()
    await GeminiStrategy(plain, lambda r: r.text).cleanup()

    assert managed.events == ["prepare", "cleanup"]


async def test_strategy_keeps_the_base_dry_run() -> None:
    strategy = GeminiStrategy(RecordingModel(RESPONSE), lambda r: r.text)

    output, usage = await strategy.dry_run("hello")

    assert output == "[DRY-RUN] Mock output for prompt: hello..."
    assert usage == {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}


async def test_cached_strategy_defaults_to_response_text() -> None:
    client = FakeClient()
    strategy = GeminiCachedStrategy(
        model=MODEL, client=client.sdk, cached_content=CONTEXT, cache_ttl_seconds=3600
    )
    strategy.model._clock = client.clock

    await strategy.prepare()
    output, _ = await strategy.execute("Q", 1, 30.0)

    assert output == "hello"
    assert isinstance(strategy.model, GeminiCachedModel)
    assert isinstance(strategy, GeminiStrategy)
    assert strategy.model.cache_name == "cachedContents/c1"


async def test_cached_strategy_forwards_options_and_deletes_cache() -> None:
    client = FakeClient()
    strategy = GeminiCachedStrategy(
        MODEL,
        client.sdk,
        CONTEXT,
        response_parser=lambda r: r.text.upper(),
        cache_ttl_seconds=900,
        cache_renewal_buffer_seconds=100,
        auto_renew=False,
        temperature=0.5,
    )
    strategy.model._clock = client.clock

    with pytest.raises(RuntimeError, match=r"prepare\(\)"):
        await strategy.execute("Q", 1, 30.0)  # auto_renew=False reached the model
    await strategy.prepare()
    output, _ = await strategy.execute("Q", 1, 30.0)
    await strategy.cleanup()
    await strategy.delete_cache()

    assert output == "HELLO"
    assert client.aio.caches.created[0]["config"].ttl == "900s"
    assert client.aio.models.calls[0]["config"]["temperature"] == 0.5
    assert client.aio.caches.deleted == ["cachedContents/c1"]


def test_cached_strategy_validates_through_the_model() -> None:
    with pytest.raises(ValueError, match="must be less than cache_ttl_seconds"):
        GeminiCachedStrategy(
            MODEL,
            FakeClient().sdk,
            CONTEXT,
            cache_ttl_seconds=100,
            cache_renewal_buffer_seconds=100,
        )


# --------------------------------------------------------------------------- classifier


def _client_error(code: int, status: str, message: str, *details: dict[str, Any]) -> Exception:
    body = {"error": {"code": code, "message": message, "status": status, "details": list(details)}}
    return errors.ClientError(code, body)


def _server_error(code: int, status: str, message: str) -> Exception:
    return errors.ServerError(code, {"error": {"code": code, "message": message, "status": status}})


def _retry_info(delay: object) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def _validation_error() -> pydantic.ValidationError:
    class Shape(pydantic.BaseModel):
        n: int

    try:
        Shape.model_validate({"n": "x"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("validation should have failed")


def _unexpected_model_behavior() -> Exception:
    from pydantic_ai.exceptions import UnexpectedModelBehavior

    return UnexpectedModelBehavior("bad tool call")


RL = (False, True, False, "rate_limit")

CLASSIFIER_TABLE = [
    pytest.param(
        FrameworkTimeoutError("slow", item_id="a", elapsed=2.0, timeout_limit=1.0),
        (True, False, True, "framework_timeout"),
        None,
        id="framework-timeout",
    ),
    pytest.param(
        _client_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"),
        RL,
        DEFAULT_RATE_LIMIT_WAIT,
        id="429-default-wait",
    ),
    pytest.param(
        _client_error(429, "RESOURCE_EXHAUSTED", "slow down", _retry_info("2s")),
        RL,
        2.0,
        id="429-retry-info",
    ),
    pytest.param(
        _client_error(403, "PERMISSION_DENIED", "Quota exceeded for project"),
        RL,
        DEFAULT_RATE_LIMIT_WAIT,
        id="client-error-quota-message",
    ),
    pytest.param(
        _client_error(400, "INVALID_ARGUMENT", "bad request"),
        (True, False, False, "client_error"),
        None,
        id="client-error",
    ),
    pytest.param(
        _client_error(408, "INVALID_ARGUMENT", "request timeout"),
        (True, False, False, "client_error"),
        None,
        id="client-error-before-timeout-pattern",
    ),
    pytest.param(
        _server_error(504, "DEADLINE_EXCEEDED", "Deadline expired"),
        (True, False, True, "server_timeout"),
        None,
        id="504",
    ),
    pytest.param(
        _server_error(500, "INTERNAL", "internal error"),
        (False, False, False, "server_error"),
        None,
        id="500",
    ),
    pytest.param(
        _server_error(503, "UNAVAILABLE", "The model is overloaded"),
        (False, False, False, "server_error"),
        None,
        id="503",
    ),
    pytest.param(
        _server_error(500, "INTERNAL", "quota backend down"),
        (False, False, False, "server_error"),
        None,
        id="server-error-before-rate-limit-pattern",
    ),
    pytest.param(
        _unexpected_model_behavior(),
        (True, False, False, "validation_error"),
        None,
        id="unexpected-model-behavior",
    ),
    pytest.param(RuntimeError("Rate limit hit"), RL, DEFAULT_RATE_LIMIT_WAIT, id="message-rate"),
    pytest.param(
        RuntimeError("upstream Timeout"), (True, False, True, "timeout"), None, id="message-timeout"
    ),
    pytest.param(
        _validation_error(), (True, False, False, "validation_error"), None, id="validation"
    ),
    pytest.param(ValueError("bad"), (False, False, False, "logic_error"), None, id="value-error"),
    pytest.param(KeyError("k"), (False, False, False, "logic_error"), None, id="key-error"),
    pytest.param(TimeoutError(), (True, False, False, "unknown"), None, id="bare-timeout-error"),
    pytest.param(
        ConnectionError("reset"), (True, False, False, "unknown"), None, id="connection-error"
    ),
    pytest.param(RuntimeError("boom"), (True, False, False, "unknown"), None, id="other"),
]


@pytest.mark.parametrize(("exc", "expected", "wait"), CLASSIFIER_TABLE)
def test_gemini_classifier_rules(
    exc: Exception, expected: tuple[bool, bool, bool, str], wait: float | None
) -> None:
    info = GeminiErrorClassifier().classify(exc)

    assert info == ErrorInfo(*expected, suggested_wait=wait)


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        pytest.param(ValueError("429 quota"), "unknown", id="everything-unknown"),
        pytest.param(FrameworkTimeoutError("slow"), "framework_timeout", id="framework-first"),
    ],
)
def test_gemini_classifier_without_google_genai(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, category: str
) -> None:
    monkeypatch.setattr(provider, "genai_installed", lambda: False)
    monkeypatch.setattr(provider, "loaded_genai_errors", tuple)

    info = GeminiErrorClassifier().classify(exc)

    assert info.error_category == category
    assert info.is_retryable


def test_gemini_classifier_constants() -> None:
    assert RATE_LIMIT_PATTERNS == ("429", "resource_exhausted", "quota", "rate limit")
    assert TIMEOUT_PATTERNS == ("timeout", "504", "deadline")
    assert DEFAULT_RATE_LIMIT_WAIT == 300.0


def test_classifiers_package_exports_the_classifier() -> None:
    from async_batch_llm import classifiers

    assert classifiers.GeminiErrorClassifier is GeminiErrorClassifier


# --------------------------------------------------------------------------- retry delay


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        pytest.param("2s", 2.0, id="whole"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param("0.250s", 0.25, id="padded-fraction"),
        pytest.param(".5s", 0.5, id="leading-dot"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param({"seconds": 3, "nanos": 500_000_000}, 3.5, id="duration-object"),
        pytest.param({"seconds": "4"}, 4.0, id="duration-object-string-seconds"),
        pytest.param("2", None, id="no-unit"),
        pytest.param("-1s", None, id="negative"),
        pytest.param("2m", None, id="wrong-unit"),
        pytest.param({"seconds": "x"}, None, id="bad-duration-object"),
        pytest.param(7, None, id="bare-number"),
        pytest.param(None, None, id="missing"),
    ],
)
def test_retry_delay_parses_retry_info_durations(delay: object, seconds: float | None) -> None:
    exc = _client_error(429, "RESOURCE_EXHAUSTED", "slow down", _retry_info(delay))

    assert retry_delay_from_gemini_error(exc) == seconds


def test_retry_delay_finds_retry_info_among_other_details() -> None:
    exc = _client_error(
        429,
        "RESOURCE_EXHAUSTED",
        "quota",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        "not-a-mapping",  # type: ignore[arg-type]  # malformed entry must be skipped
        _retry_info("17s"),
    )

    assert retry_delay_from_gemini_error(exc) == 17.0


def test_retry_delay_reads_a_body_without_envelope() -> None:
    exc = errors.ClientError(429, {"code": 429, "details": [_retry_info("5s")]})

    assert retry_delay_from_gemini_error(exc) == 5.0


@pytest.mark.parametrize(
    "details",
    [
        pytest.param(None, id="none"),
        pytest.param("text", id="string"),
        pytest.param({"error": "text"}, id="string-envelope"),
        pytest.param({"error": {"details": "text"}}, id="string-details"),
        pytest.param({"error": {}}, id="no-details"),
    ],
)
def test_retry_delay_is_none_without_retry_info(details: object) -> None:
    exc = RuntimeError("429")
    exc.details = details  # type: ignore[attr-defined]  # shape of APIError.details

    assert retry_delay_from_gemini_error(exc) is None


def test_retry_delay_falls_back_to_retry_after_header() -> None:
    response = httpx.Response(429, headers={"Retry-After": "12"})
    exc = errors.ClientError(429, {"error": {"status": "RESOURCE_EXHAUSTED"}}, response)

    assert retry_delay_from_gemini_error(exc) == 12.0


def test_retry_info_wins_over_retry_after_header() -> None:
    response = httpx.Response(429, headers={"Retry-After": "12"})
    body = {"error": {"status": "RESOURCE_EXHAUSTED", "details": [_retry_info("3s")]}}

    assert retry_delay_from_gemini_error(errors.ClientError(429, body, response)) == 3.0


def test_retry_delay_ignores_http_date_retry_after() -> None:
    response = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    exc = errors.ClientError(429, {"error": {}}, response)

    assert retry_delay_from_gemini_error(exc) is None
