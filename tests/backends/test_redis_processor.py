"""ParallelBatchProcessor with ProcessorConfig(quota_backend=RedisQuotaBackend(...))."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import pytest

import async_batch_llm as abl
from async_batch_llm.backends import InMemoryQuotaBackend, QuotaBackendError, RedisQuotaBackend
from async_batch_llm.testing.redis_server import LocalRedisServer
from async_batch_llm.testing.servers import OpenAIServer, Reply
from tests.backends.conftest import require_redis_server
from tests.backends.quota_worker import ANSWER_WORDS, estimate, prompt_for
from tests.conftest import ScriptedStrategy

pytestmark = pytest.mark.redis


def config(backend: Any, **overrides: Any) -> abl.ProcessorConfig:
    values: dict[str, Any] = {
        "max_workers": 4,
        "retry": abl.RetryConfig(max_attempts=3, initial_wait=0.01, max_wait=0.02, jitter=False),
        "quota_backend": backend,
        **overrides,
    }
    return abl.ProcessorConfig(**values)


async def run(
    cfg: abl.ProcessorConfig, strategy: Any, prompts: list[str]
) -> abl.BatchResult[Any, Any]:
    async with abl.ParallelBatchProcessor[str, str, None](config=cfg) as processor:
        for i, prompt in enumerate(prompts):
            await processor.add_work(
                abl.LLMWorkItem(item_id=f"i{i}", strategy=strategy, prompt=prompt)
            )
        return await processor.process_all()


def test_quota_backend_must_be_a_backend() -> None:
    with pytest.raises(TypeError, match="quota_backend must be a QuotaBackend"):
        abl.ProcessorConfig(quota_backend="redis://127.0.0.1:6379")  # type: ignore[arg-type]
    assert abl.ProcessorConfig(quota_backend=InMemoryQuotaBackend()).quota_backend is not None
    assert abl.ProcessorConfig().quota_backend is None


async def test_an_unreachable_redis_fails_the_run_naming_the_url_without_password() -> None:
    backend = RedisQuotaBackend("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(QuotaBackendError) as caught:
        await run(config(backend), ScriptedStrategy(), ["a"])
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "hunter2" not in message
    assert "***" in message


async def test_a_wrong_password_fails_the_run_naming_the_url() -> None:
    require_redis_server()
    with LocalRedisServer(password="right-one") as server:
        strategy = ScriptedStrategy()
        wrong = RedisQuotaBackend(server.url.replace("right-one", "wrong-one"))
        with pytest.raises(QuotaBackendError, match="refused the credentials") as caught:
            await run(config(wrong), strategy, ["a"])
        assert f"127.0.0.1:{server.port}" in str(caught.value)
        assert "wrong-one" not in str(caught.value)
        missing = RedisQuotaBackend(f"redis://127.0.0.1:{server.port}/0")
        with pytest.raises(QuotaBackendError, match="refused the credentials"):
            await run(config(missing), strategy, ["a"])
        assert strategy.calls == []
        # The right password works.
        result = await run(config(RedisQuotaBackend(server.url)), strategy, ["a"])
        assert [r.success for r in result.results] == [True]


async def test_two_processors_in_one_process_share_the_limit(
    redis_server: LocalRedisServer,
) -> None:
    async def respond(request: Any) -> Reply:
        await asyncio.sleep(0.01)
        return Reply(text=" ".join(["lorem"] * ANSWER_WORDS))

    tpm = 120_000
    async with OpenAIServer(
        respond=respond, tokens_per_minute=tpm, rate_limit_window_seconds=1.0
    ) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0)
        try:
            strategy = abl.OpenAIStrategy(client, "gpt-4o-mini")

            async def one(prefix: str) -> abl.BatchResult[Any, Any]:
                cfg = config(
                    RedisQuotaBackend(redis_server.url),
                    max_tokens_per_minute=tpm,
                    token_estimator=estimate,
                    quota_burst_seconds=0.5,
                )
                return await run(cfg, strategy, [prompt_for(prefix, i) for i in range(25)])

            results = await asyncio.gather(one("a"), one("b"))
        finally:
            await client.close()
        assert [sum(r.success for r in b.results) for b in results] == [25, 25]
        assert server.rate_limited_count == 0
        assert server.rate_limit_charged["tokens"] == 5_000


async def test_a_redis_restart_mid_run_loses_no_item(
    redis_server: LocalRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="async_batch_llm.backends.redis")
    restarted = asyncio.Event()

    class Restarting(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> Any:
            if prompt == "p10" and not restarted.is_set():
                restarted.set()
                await asyncio.to_thread(redis_server.stop)
                await asyncio.sleep(0.3)  # other workers' admissions now fail and retry
                await asyncio.to_thread(redis_server.start)
            return await super().execute(prompt, attempt, timeout, state)

    strategy = Restarting()
    prompts = [f"p{i}" for i in range(40)]
    result = await run(
        config(RedisQuotaBackend(redis_server.url), max_requests_per_minute=6_000),
        strategy,
        prompts,
    )
    assert restarted.is_set()
    assert "lost the connection to Redis" in caplog.text  # the other workers did retry
    assert "reconnected to Redis" in caplog.text
    assert sorted(r.item_id for r in result.results if r.success) == sorted(
        f"i{i}" for i in range(40)
    )
    # Every item was called exactly once: no admission was lost or granted twice.
    assert sorted(call.prompt for call in strategy.calls) == sorted(prompts)
