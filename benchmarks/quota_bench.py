"""The quota scenario: a TPM-bound job against the local OpenAI emulator, over HTTP.

Not a test. ``scenarios.py --scenario quota --impl IMPL`` runs one case in a fresh interpreter;
``run_all.py --only quota`` runs the three side by side. Every case starts its own
:class:`~async_batch_llm.testing.servers.OpenAIServer` on loopback enforcing
``tokens_per_minute=QUOTA_TPM`` over a ``QUOTA_WINDOW``-second window, and sends the same job
through the real ``openai`` SDK (``AsyncOpenAI(max_retries=0)``: every 429 reaches the
framework, none is retried silently by the SDK):

- ``declared``: :class:`~async_batch_llm.llm_strategies.OpenAIStrategy`,
  ``ProcessorConfig(max_tokens_per_minute=QUOTA_TPM)``, the default learning estimator;
- ``learned``: the same strategy, no limit declared: the gate learns the limit from the
  ``x-ratelimit-*`` headers of the first answers;
- ``unlimited``: 0.6.0 behaviour, a plain strategy calling ``chat.completions.create`` (it
  reports no headers, so nothing is learned) and no limit: workers call as fast as they can and
  the shared cooldown (at least the provider's ``retry-after``) handles the 429s.

The job: ``QUOTA_ITEMS`` prompts of mixed sizes (a few dozen to about 1,200 words of English
text) asking for answers of mixed lengths (10 to 600 words); the emulator counts one token per
word and answers after ``QUOTA_BASE_LATENCY`` plus ``QUOTA_PER_TOKEN_LATENCY`` per output token.
No ``max_tokens`` is sent, so the emulator charges each request its exact prompt tokens at
admission and its completion tokens when it answers.

The ideal is computed from the emulator's own accounting after the run: the tokens it charged
(every admitted request; a refused one costs nothing), less the bucket's burst (its capacity),
over its refill rate: ``(charged - capacity) / (QUOTA_TPM / 60)``. No client can finish sooner
(the bucket admits at most ``capacity + rate * t`` tokens by time ``t``), apart from the
answer latency of the last requests.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

QUOTA_TPM = 2_400_000
"""Tokens per minute the emulator enforces (40,000 a second)."""
QUOTA_WINDOW = 1.0
"""Seconds of refill the emulator's bucket holds: the per-minute limit enforced per second, as
OpenAI documents it may be, and as the gate's default burst (``quota_burst_seconds``) assumes."""
QUOTA_ITEMS = 2_000
QUOTA_WORKERS = 64
QUOTA_BASE_LATENCY = 0.02
QUOTA_PER_TOKEN_LATENCY = 0.0001
QUOTA_MODEL = "gpt-4o-mini"
QUOTA_SEED = 20261207

QUOTA_IMPLS = ("declared", "learned", "unlimited")

_TEXT = (
    "the of and a to in is you that it he was for on are as with his they I at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her would "
    "make like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "quarterly revenue increased significantly because international customers adopted "
    "subscription pricing; management expects continued momentum, although supply-chain "
    "constraints, currency fluctuations and regulatory uncertainty remain considerable risks."
)
_WORDS = _TEXT.split()
_PROMPT_WORDS = (40, 120, 300, 700, 1_200)
_PROMPT_WEIGHTS = (30, 30, 20, 12, 8)
_OUTPUT_WORDS = (10, 40, 120, 300, 600)
_OUTPUT_WEIGHTS = (25, 30, 25, 15, 5)


def make_job(items: int, seed: int = QUOTA_SEED) -> list[str]:
    """The prompts: mixed sizes, each asking for an answer of a given number of words."""
    rng = random.Random(seed)
    prompts = []
    for i in range(items):
        size = rng.choices(_PROMPT_WORDS, _PROMPT_WEIGHTS)[0]
        size = max(8, round(size * rng.uniform(0.7, 1.3)))
        answer = rng.choices(_OUTPUT_WORDS, _OUTPUT_WEIGHTS)[0]
        answer = max(1, round(answer * rng.uniform(0.6, 1.4)))
        body = " ".join(rng.choice(_WORDS) for _ in range(size))
        prompts.append(f"Answer in {answer} words. Document {i}: {body}")
    return prompts


def _answer_words(prompt: str) -> int:
    return int(prompt.split(maxsplit=3)[2])


async def _respond(request: Any) -> Any:
    """The emulator's answer: the requested number of words, after a length-dependent delay."""
    from async_batch_llm.testing.servers import Reply

    words = _answer_words(request.prompt)
    await asyncio.sleep(QUOTA_BASE_LATENCY + QUOTA_PER_TOKEN_LATENCY * words)
    return Reply(text=" ".join(["lorem"] * words))


def _plain_strategy(abl: Any, client: Any) -> Any:
    """What a 0.6.0 user writes: the SDK call, no headers reported, no quota scope."""

    class PlainOpenAI(abl.LLMCallStrategy):  # type: ignore[misc]
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> tuple[str, dict[str, int]]:
            completion = await client.chat.completions.create(
                model=QUOTA_MODEL,
                messages=[{"role": "user", "content": prompt}],
                timeout=timeout,
            )
            usage = completion.usage
            return completion.choices[0].message.content or "", {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }

    return PlainOpenAI()


def _config(abl: Any, impl: str, workers: int) -> Any:
    retry = abl.RetryConfig(max_attempts=50, initial_wait=0.01, max_wait=0.1, jitter=False)
    rate_limit = abl.RateLimitConfig(
        cooldown_seconds=1.0, backoff_multiplier=1.0, slow_start_items=0
    )
    limits: dict[str, Any] = {}
    if impl == "declared":
        limits["max_tokens_per_minute"] = QUOTA_TPM
    return abl.ProcessorConfig(max_workers=workers, retry=retry, rate_limit=rate_limit, **limits)


async def run_case(impl: str, prompts: list[str], workers: int, limited: bool) -> dict[str, Any]:
    """One case against a fresh emulator; returns the measurements (wall time included).

    ``limited=False`` (the warm-up) runs the same code paths against an emulator without limits.
    """
    import time

    import openai

    import async_batch_llm as abl
    from async_batch_llm.llm_strategies import OpenAIStrategy
    from async_batch_llm.testing.servers import OpenAIServer

    options: dict[str, Any] = {}
    if limited:
        options = {"tokens_per_minute": QUOTA_TPM, "rate_limit_window_seconds": QUOTA_WINDOW}
    async with OpenAIServer(respond=_respond, **options) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        try:
            if impl == "unlimited":
                strategy = _plain_strategy(abl, client)
            else:
                strategy = OpenAIStrategy(client, QUOTA_MODEL)
            config = _config(abl, impl, workers)
            server.reset_rate_limits()  # full bucket at the start of the clock
            started = time.perf_counter()
            cpu_started = time.process_time()
            async with abl.ParallelBatchProcessor(config=config) as processor:
                for i, prompt in enumerate(prompts):
                    await processor.add_work(
                        abl.LLMWorkItem(item_id=f"q{i}", strategy=strategy, prompt=prompt)
                    )
                batch = await processor.process_all()
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        finally:
            await client.close()
        results = batch.results
        succeeded = sum(1 for r in results if r.success)
        charged = int(server.rate_limit_charged.get("tokens", 0))
        reported = sum((r.token_usage or {}).get("total_tokens", 0) for r in results if r.success)
        out: dict[str, Any] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "results": len(results),
            "succeeded": succeeded,
            "failed": len(results) - succeeded,
            "http_429": server.rate_limited_count,
            "calls": server.request_count,
            "tokens_charged": charged,
            "tokens_reported": reported,
        }
        if limited:
            rate = QUOTA_TPM / 60.0
            capacity = QUOTA_TPM * QUOTA_WINDOW / 60.0
            out["tpm"] = QUOTA_TPM
            out["window_s"] = QUOTA_WINDOW
            out["ideal_s"] = max(0.0, charged - capacity) / rate
            out["wall_vs_ideal"] = wall / out["ideal_s"] if out["ideal_s"] else None
        return out
