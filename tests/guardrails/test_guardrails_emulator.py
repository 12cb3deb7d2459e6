"""The guardrail targets of issue #10, small, through the real ``openai`` SDK and the emulator.

``benchmarks/guardrails_bench.py`` measures them at full size (3,000 items on 100 workers,
10,000 items on 50); these tests keep each rule honest at a size a test run can afford. Spend
is priced from the emulator's own :attr:`OpenAIServer.usage_log`, what it billed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from async_batch_llm import (
    AnthropicStrategy,
    BatchResult,
    GuardrailConfig,
    LLMCallStrategy,
    LLMWorkItem,
    OpenAIStrategy,
    ParallelBatchProcessor,
    PriceTable,
    ProcessingEvent,
    ProcessorConfig,
    TokenEstimate,
)
from async_batch_llm._internal.guardrails import item_category
from async_batch_llm.strategies import DefaultErrorClassifier
from async_batch_llm.testing.servers import (
    AnthropicServer,
    InsufficientQuota,
    OpenAIServer,
    ProviderRequest,
    Reply,
)
from tests.conftest import EventRecorder

pytestmark = pytest.mark.timeout(30)

MODEL = "gpt-4o-mini"
PRICES = PriceTable.default()


def make_prompts(count: int, seed: int = 10) -> list[str]:
    """Prompts of 20-400 words, each asking for an answer of 5-400 words."""
    rng = random.Random(seed)
    return [
        f"Answer in {rng.randint(5, 400)} words. " + " ".join(["text"] * rng.randint(20, 400))
        for _ in range(count)
    ]


def answer_words(prompt: str) -> int:
    return int(prompt.split(maxsplit=3)[2])


async def respond(request: ProviderRequest) -> Reply:
    words = answer_words(request.prompt)
    await asyncio.sleep(0.005 + 0.0001 * words)  # longer answers take longer
    return Reply(text=" ".join(["ok"] * words))


def billed(server: OpenAIServer) -> float:
    """Dollars the emulator billed: every answer's usage at list price."""
    return sum(
        PRICES.cost(
            entry["model"],
            {
                "input_tokens": entry["prompt_tokens"],
                "cached_input_tokens": entry["cached_tokens"],
                "output_tokens": entry["completion_tokens"],
            },
        )
        for entry in server.usage_log
    )


def call_cost(prompt: str) -> float:
    """What one call of ``prompt`` costs (the emulator counts one token per word)."""
    return PRICES.cost(
        MODEL, {"input_tokens": len(prompt.split()), "output_tokens": answer_words(prompt)}
    )


def exact_estimate(prompt: Any, **_: Any) -> TokenEstimate:
    return TokenEstimate(len(str(prompt).split()), answer_words(str(prompt)))


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(respond=respond) as running:
        yield running


async def run(
    strategy: LLMCallStrategy[Any],
    prompts: list[str],
    config: ProcessorConfig,
    observers: list[Any] | None = None,
) -> BatchResult[Any, None]:
    async with ParallelBatchProcessor[str, Any, None](
        config=config, observers=observers
    ) as processor:
        for n, prompt in enumerate(prompts):
            await processor.add_work(LLMWorkItem(item_id=f"i{n}", strategy=strategy, prompt=prompt))
        return await processor.process_all()


# ------------------------------------------------------------------------------- cost cap


@pytest.mark.parametrize("estimator", ["exact", "learning"])
async def test_a_cost_cap_holds_through_the_real_sdk(server: OpenAIServer, estimator: str) -> None:
    prompts = make_prompts(400)
    cap = 0.4 * sum(call_cost(p) for p in prompts)  # reached mid-run
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    config = ProcessorConfig(
        max_workers=20,
        token_estimator=exact_estimate if estimator == "exact" else None,
        guardrails=GuardrailConfig(max_total_cost=cap, cost_function=PRICES.cost),
    )
    try:
        batch = await run(OpenAIStrategy(client, MODEL), prompts, config)
    finally:
        await client.close()

    spent = billed(server)
    assert batch.termination.kind == "budget_exceeded"
    assert len(batch.results) == 400
    assert 0 < len(server.usage_log) < 400
    assert batch.total_cost == pytest.approx(spent)  # the processor counted what was billed
    most = max(call_cost(p) for p in prompts)
    if estimator == "exact":
        # An estimator that never underestimates never overspends; and the batch stops only
        # when the next call would not fit.
        assert spent <= cap
        assert spent > cap - most
    else:
        # The bound: what the (at most 20) calls in flight at the last admission cost above
        # their reservations, each at most what the dearest call costs.
        assert spent <= cap + 20 * most
        assert spent <= 1.1 * cap


async def test_a_check_after_call_cap_overshoots_by_the_calls_in_flight(
    server: OpenAIServer,
) -> None:
    """The comparison the benchmark shows: check ``spent >= cap`` before each call, add the
    price after it, 20 workers in plain asyncio: every call in flight when the cap is crossed
    still completes."""
    prompts = make_prompts(400)
    cap = 0.4 * sum(call_cost(p) for p in prompts)
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    queue = list(reversed(prompts))
    spent = 0.0
    crossed_at: list[int] = []

    async def worker() -> None:
        nonlocal spent
        while queue and spent < cap:
            prompt = queue.pop()
            completion = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}]
            )
            assert completion.usage is not None
            before = spent
            spent += PRICES.cost(
                MODEL,
                {
                    "input_tokens": completion.usage.prompt_tokens,
                    "output_tokens": completion.usage.completion_tokens,
                },
            )
            if before < cap <= spent:
                crossed_at.append(len(server.usage_log))

    try:
        await asyncio.gather(*(worker() for _ in range(20)))
    finally:
        await client.close()
    assert billed(server) == pytest.approx(spent)
    assert spent > cap
    # Every call started before the cap was crossed finishes: about one per other worker.
    assert len(server.usage_log) - crossed_at[0] >= 10


# --------------------------------------------------------------------------- batch timeout


async def test_batch_timeout_with_default_settings_returns_on_time() -> None:
    """1 s budget over a 6 s job (120 calls of 0.5 s, 10 workers), every other setting at its
    default: returns promptly, one result per item, no request reaches the emulator late."""
    async with OpenAIServer(latency=0.5) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
        config = ProcessorConfig(max_workers=10, guardrails=GuardrailConfig(batch_timeout=1.0))
        started_wall = time.time()  # the emulator's clock
        started = time.monotonic()
        try:
            batch = await run(OpenAIStrategy(client, MODEL), [f"q{n}" for n in range(120)], config)
        finally:
            await client.close()
        elapsed = time.monotonic() - started

    assert batch.termination.kind == "batch_timeout"
    assert len({r.item_id for r in batch.results}) == 120
    assert elapsed < 1.0 + 1.5  # the target is 0.5 s of slack; CI machines are shared
    assert server.requests
    assert all(r.received_at - started_wall < 1.0 + 0.25 for r in server.requests)
    assert server.request_count <= 10 * 2  # two waves of 0.5 s fit in 1 s


# ------------------------------------------------------------------------------- fail-fast


async def test_insufficient_quota_with_default_settings_stops_at_once_without_cooldown() -> None:
    """The default classifier and the default 300 s cooldown: an empty account stops the batch
    after at most one call per worker, and never looks like a rate limit."""
    async with OpenAIServer(fault_fn=lambda request: InsufficientQuota()) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
        recorder = EventRecorder()
        started = time.monotonic()
        try:
            batch = await run(
                OpenAIStrategy(client, MODEL),
                [f"q{n}" for n in range(2_000)],
                ProcessorConfig(max_workers=20),
                observers=[recorder],
            )
        finally:
            await client.close()
        elapsed = time.monotonic() - started

    assert batch.termination.kind == "fail_fast"
    assert batch.termination.error_category == "insufficient_quota"
    assert server.request_count <= 20
    assert recorder.of(ProcessingEvent.COOLDOWN_STARTED) == []
    assert len(batch.results) == 2_000
    assert {r.error_category for r in batch.results} == {"insufficient_quota", "fail_fast"}
    assert elapsed < 10.0  # the benchmark's target is 1 s for 10,000 items


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_wrong_key_with_the_default_classifier_stops_the_batch(provider: str) -> None:
    server: OpenAIServer | AnthropicServer = (
        OpenAIServer(api_key="right") if provider == "openai" else AnthropicServer(api_key="right")
    )
    async with server:
        if isinstance(server, OpenAIServer):
            oclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
            strategy: LLMCallStrategy[Any] = OpenAIStrategy(oclient, MODEL)
            close = oclient.close
        else:
            aclient = anthropic.AsyncAnthropic(base_url=server.url, api_key="t", max_retries=0)
            strategy = AnthropicStrategy(aclient, "claude-haiku-4-5", max_tokens=64)
            close = aclient.close
        try:
            batch = await run(
                strategy, [f"q{n}" for n in range(100)], ProcessorConfig(max_workers=4)
            )
        finally:
            await close()
        assert batch.termination.kind == "fail_fast"
        assert batch.termination.error_category == "authentication"
        assert server.request_count <= 4


def test_the_default_classifiers_logic_error_gives_way_to_the_strategy_errors_category() -> None:
    from async_batch_llm._strategies._http_api import ProviderRequestError

    error = ProviderRequestError("out of credit", provider="openai", category="insufficient_quota")
    info = DefaultErrorClassifier().classify(error)
    assert info.error_category == "logic_error"  # a ValueError, as 0.6.0 labels it
    assert item_category(error, info) == "insufficient_quota"
    plain = ValueError("the prompt template has no {text} field")  # the user's own bug
    assert item_category(plain, DefaultErrorClassifier().classify(plain)) == "logic_error"


async def test_the_emulator_logs_the_usage_it_billed(server: OpenAIServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Answer in 7 words. one two"}]
        )
    finally:
        await client.close()
    assert completion.usage is not None
    assert server.usage_log == [
        {
            "model": MODEL,
            "prompt_tokens": completion.usage.prompt_tokens,
            "cached_tokens": 0,
            "completion_tokens": 7,
        }
    ]
    server.reset_stats()
    assert server.usage_log == []
