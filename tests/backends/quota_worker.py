"""One OS process of the multi-process quota tests and benchmark.

``python -m tests.backends.quota_worker '{"redis": URL|null, "base_url": URL, ...}'`` runs a
batch of prompts through :class:`OpenAIStrategy` against a local emulator, its quota shared
through Redis (or kept in process when ``redis`` is null), starting at the wall-clock time
``start_at``; prints one JSON line: results, failures, wall time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

WORDS_PER_PROMPT = 80
ANSWER_WORDS = 20


def prompt_for(prefix: str, index: int) -> str:
    """A prompt of exactly ``WORDS_PER_PROMPT`` words (the emulator counts words as tokens)."""
    head = f"{prefix} item {index}"
    return head + " word" * (WORDS_PER_PROMPT - len(head.split()))


def estimate(prompt: str, **_: Any) -> Any:
    """An estimate that bounds the emulator's count (prompt words, the fixed answer)."""
    from async_batch_llm.quota import TokenEstimate

    return TokenEstimate(len(prompt.split()) + 2, ANSWER_WORDS + 2)


async def run(options: dict[str, Any]) -> dict[str, Any]:
    import openai

    import async_batch_llm as abl
    from async_batch_llm.backends.redis import RedisQuotaBackend

    backend = RedisQuotaBackend(options["redis"]) if options.get("redis") else None
    config = abl.ProcessorConfig(
        max_workers=options.get("workers", 8),
        max_tokens_per_minute=options["tpm"],
        token_estimator=estimate,
        # Half the provider's one-second burst: the slack absorbs the time between a grant in
        # Redis and the request reaching the provider (processes compete for the CPU).
        quota_burst_seconds=options.get("burst", 0.5),
        retry=abl.RetryConfig(max_attempts=20, initial_wait=0.01, max_wait=0.1, jitter=False),
        rate_limit=abl.RateLimitConfig(
            cooldown_seconds=options.get("cooldown", 0.2),
            backoff_multiplier=1.0,
            slow_start_items=0,
        ),
        quota_backend=backend,
    )
    client = openai.AsyncOpenAI(base_url=options["base_url"], api_key="test", max_retries=0)
    try:
        strategy = abl.OpenAIStrategy(client, "gpt-4o-mini")
        delay = options["start_at"] - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.time()
        async with abl.ParallelBatchProcessor[str, str, None](config=config) as processor:
            for i in range(options["items"]):
                prompt = prompt_for(options["prefix"], i)
                await processor.add_work(
                    abl.LLMWorkItem(
                        item_id=f"{options['prefix']}-{i}", strategy=strategy, prompt=prompt
                    )
                )
            batch = await processor.process_all()
        ended = time.time()
    finally:
        await client.close()
    return {
        "results": len(batch.results),
        "succeeded": sum(1 for r in batch.results if r.success),
        "errors": sorted({str(r.error)[:200] for r in batch.results if not r.success}),
        "started": started,
        "ended": ended,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
