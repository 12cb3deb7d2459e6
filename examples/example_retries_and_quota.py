"""Retries, a 429 burst and a token quota: a real batch over HTTP, offline, without an API key.

Two parts, both through the official ``openai`` SDK and the built-in ``OpenAIStrategy`` to a
local OpenAI emulator (``async_batch_llm.testing.servers.OpenAIServer``) on 127.0.0.1. The client
has ``max_retries=0``, so every retry you see is the processor's.

**Part 1, surviving a bad provider.** 300 items. The emulator answers after 20-120 ms and fails
about one request in twenty with a 500/502/503. A third of the way in, it goes over quota for
1.5 s: the requests it answers then get ``429`` with a ``Retry-After``. Every request repeats a
1,200-word instruction, so from the second request on the emulator reports that prefix as cached,
the way OpenAI's prompt caching does. Watch the retries, the one cooldown shared by every worker
(lasting as long as the server's ``Retry-After`` asks, longer than the configured 0.5 s) and the
slow-start ramp after it, as they happen; then the summary (requests counted by the server,
tokens, cache hit rate) and the Prometheus export.

**Part 2, staying under a token quota.** 60 items of mixed prompt and reply lengths against an
emulator that enforces 90,000 tokens and 1,200 requests a minute the way OpenAI does (over a
short window, 429 when over). The processor declares the same limits
(``max_tokens_per_minute``, ``max_requests_per_minute``) and estimates each request's tokens with
the learning default. Watch the tokens and requests per minute against the limits while it runs
(from the ``ITEM_COMPLETED`` events), and the 429 count: zero.

Run it with ``python examples/example_retries_and_quota.py [--items N] [--quota-items N]``
(``make demo`` runs the ``async-batch-llm`` command instead: ``examples/demo.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import openai

from async_batch_llm import (
    ExponentialBackoffStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.llm_strategies import OpenAIStrategy
from async_batch_llm.observers import BaseObserver, ProcessingEvent
from async_batch_llm.testing.servers import (
    OpenAIServer,
    ProviderRequest,
    RateLimited,
    ResponseValue,
    ServerError,
)

MODEL = "gpt-4o-mini"
RETRY_AFTER = 1.5  # seconds the emulated provider stays over quota (its first Retry-After)
PART1_REQUESTS_PER_MINUTE = 30_000  # what part 1's emulator states in its headers
PART1_TOKENS_PER_MINUTE = 50_000_000
STARTED = time.monotonic()

# The same long instruction opens every request; providers cache such shared prefixes.
STYLE_GUIDE = " ".join(
    f"Rule {n}: write plain, concrete sentences, keep the author's meaning, name every source "
    f"and never invent numbers, dates or quotes."
    for n in range(1, 61)
)


def stamp() -> str:
    return f"[{time.monotonic() - STARTED:6.2f}s]"


# ------------------------------------------------------------------------- the emulated provider


class FlakyProvider:
    """Answers the local OpenAI emulator's requests like a busy provider would.

    Each request takes 20-120 ms. About one in twenty then fails with a 500, 502 or 503
    (deterministic by arrival order). From request ``items // 3`` on, the provider is over quota
    for ``RETRY_AFTER`` seconds: every request answered in that window gets a 429 whose
    ``Retry-After`` says how long the window still lasts.
    """

    def __init__(self, items: int, seed: int = 7) -> None:
        self.seed = seed
        self.quota_from = items // 3
        self.quota_until: float | None = None  # end of the over-quota window (monotonic)

    async def respond(self, request: ProviderRequest) -> ResponseValue:
        rng = random.Random(self.seed * 1_000_003 + request.index)
        await asyncio.sleep(0.02 + 0.1 * rng.random())
        now = time.monotonic()
        if self.quota_until is None and request.index >= self.quota_from:
            self.quota_until = now + RETRY_AFTER
        if self.quota_until is not None and now < self.quota_until:
            return RateLimited(retry_after=round(self.quota_until - now, 3))
        if rng.random() < 0.05:
            return ServerError(rng.choice((500, 502, 503)))
        return "Summary: " + " ".join(request.prompt.splitlines()[-1].split()[:12])


# ---------------------------------------------------------------------------- the strategy


class NarratedOpenAIStrategy(OpenAIStrategy[str]):
    """The built-in ``OpenAIStrategy``, noting when each call starts and each 429's Retry-After.

    Token usage (cached prompt tokens included) and the conversion of ``openai`` errors come
    with the built-in strategy.
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        super().__init__(client, MODEL)
        self.retry_after: float | None = None  # the last Retry-After the server sent
        self.started: list[float] = []  # monotonic time at which each call began

    async def execute(
        self,
        prompt: str | Sequence[Mapping[str, Any]],
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[str, TokenUsage]:
        self.started.append(time.monotonic())
        return await super().execute(prompt, attempt, timeout, state)

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        # OpenAIStrategy raises its own rate-limit error from the SDK's, with the wait it read
        # from the retry-after-ms / retry-after headers.
        self.retry_after = getattr(exception, "retry_after", None)


# ------------------------------------------------------------------------------- live log


class NarratedBackoff(ExponentialBackoffStrategy):
    """The default rate-limit strategy, printing the slow-start ramp as it happens."""

    def should_apply_slow_start(self, items_since_resume: int) -> tuple[bool, float]:
        apply, delay = super().should_apply_slow_start(items_since_resume)
        if apply and items_since_resume % 4 == 0:
            print(
                f"{stamp()} SLOW    item {items_since_resume + 1:2d}/{self.slow_start_items} "
                f"after the pause waits {delay:.2f}s before it starts"
            )
        elif not apply:
            print(f"{stamp()} FULL    speed again: slow start is over")
        return apply, delay


class LiveLog(BaseObserver):
    """Prints retries, rate limits and the shared cooldown as they happen."""

    def __init__(self, strategy: NarratedOpenAIStrategy, configured_cooldown: float) -> None:
        self.strategy = strategy
        self.configured_cooldown = configured_cooldown
        self.attempts: Counter[str] = Counter()
        self.retries = 0
        self.pauses: list[tuple[float, float]] = []  # monotonic (start, end) of each cooldown
        self._paused_at = 0.0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.ITEM_STARTED:
            self.attempts[data["item_id"]] += 1
            attempt = self.attempts[data["item_id"]]
            if attempt > 1:
                self.retries += 1
                if self.retries <= 6 or self.retries % 5 == 0:
                    print(f"{stamp()} retry   {data['item_id']} (attempt {attempt})")
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            # The strategy's on_error saw this 429 just before: its Retry-After is current.
            asked = self.strategy.retry_after
            wait = f" (Retry-After {asked:g}s)" if asked is not None else ""
            print(f"{stamp()} 429     {data['item_id']} on worker {data['worker_id']}{wait}")
        elif event is ProcessingEvent.COOLDOWN_STARTED:
            self._paused_at = time.monotonic()
            duration, configured = data["duration"], self.configured_cooldown
            why = (
                f"the server's Retry-After, longer than the configured {configured:g}s"
                if duration > configured
                else f"the configured cooldown (consecutive rate limit #{data['consecutive']})"
            )
            print(f"{stamp()} PAUSE   every worker for {duration:.2f}s: {why}")
        elif event is ProcessingEvent.COOLDOWN_ENDED:
            self.pauses.append((self._paused_at, time.monotonic()))
            print(f"{stamp()} RESUME  after {data['duration']:.2f}s; slow start ramps back up")


def progress(completed: int, total: int, item_id: str) -> None:
    bar = "#" * (30 * completed // total)
    print(f"           progress {completed:4d}/{total} [{bar:<30}]", flush=True)


# ------------------------------------------------------------------------------------ main


async def run(items: int) -> None:
    provider = FlakyProvider(items)
    config = ProcessorConfig(
        max_workers=8,
        timeout_per_item=10.0,
        retry=RetryConfig(max_attempts=4, initial_wait=0.05, max_wait=0.5),
        rate_limit=RateLimitConfig(
            cooldown_seconds=0.5,
            backoff_multiplier=2.0,
            slow_start_items=16,
            slow_start_initial_delay=0.2,
            slow_start_final_delay=0.0,
        ),
        progress_interval=max(1, items // 10),
    )
    rl = config.rate_limit
    backoff = NarratedBackoff(
        initial_cooldown=rl.cooldown_seconds,
        backoff_multiplier=rl.backoff_multiplier,
        slow_start_items=rl.slow_start_items,
        slow_start_initial_delay=rl.slow_start_initial_delay,
        slow_start_final_delay=rl.slow_start_final_delay,
    )
    print(
        f"async-batch-llm demo: {items} items, {config.max_workers} workers, openai SDK over HTTP "
        "to a local OpenAI emulator (no API key needed)"
    )
    print("Part 1: surviving a bad provider (5xx errors, a 429 burst with Retry-After)")
    # The emulator states its (generous) limits in x-ratelimit-* headers, as OpenAI does; the
    # processor learns them from the first answer. They never bind here: the 429s below are the
    # provider's own trouble, the kind no client-side pacing foresees.
    async with OpenAIServer(
        respond=provider.respond,
        requests_per_minute=PART1_REQUESTS_PER_MINUTE,
        tokens_per_minute=PART1_TOKENS_PER_MINUTE,
    ) as server:
        print(
            f"emulator: {server.base_url}; about 5% of requests fail with a 5xx, and from request "
            f"{provider.quota_from} on it is over quota for {RETRY_AFTER:g}s (429 + Retry-After)\n"
        )
        # max_retries=0: the SDK must not retry behind the processor's back.
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="demo", max_retries=0)
        strategy = NarratedOpenAIStrategy(client)
        log = LiveLog(strategy, rl.cooldown_seconds)
        metrics = MetricsObserver()
        started = time.perf_counter()
        try:
            async with ParallelBatchProcessor[str, str, None](
                config=config,
                rate_limit_strategy=backoff,
                observers=[log, metrics],
                progress_callback=progress,
            ) as processor:
                for i in range(items):
                    await processor.add_work(
                        LLMWorkItem(
                            item_id=f"doc-{i:04d}",
                            strategy=strategy,
                            # The shared instruction first: the prefix the provider caches.
                            prompt=f"{STYLE_GUIDE}\n\nSummarise document {i}: quarterly notes "
                            f"from team {i % 17}.",
                        )
                    )
                result = await processor.process_all()
        finally:
            await client.close()
        wall = time.perf_counter() - started

    calls_while_paused = sum(
        1 for t in strategy.started for start, end in log.pauses if start < t < end
    )
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(server.status_counts.items()))
    print("\nSummary")
    print(f"  succeeded / failed : {result.succeeded} / {result.failed} of {result.total_items}")
    print(f"  provider requests  : {server.request_count} seen by the server ({statuses})")
    print(f"  retries            : {log.retries}")
    print(
        f"  cooldowns          : {len(log.pauses)}, "
        f"{sum(end - start for start, end in log.pauses):.2f}s in total; "
        f"calls started while paused: {calls_while_paused}"
    )
    print(f"  input tokens       : {result.total_input_tokens}")
    print(f"  cached tokens      : {result.total_cached_tokens}")
    print(f"  cache hit rate     : {result.cache_hit_rate():.1f}%")
    print(f"  effective input    : {result.effective_input_tokens()} tokens")
    print(f"  output tokens      : {result.total_output_tokens}")
    print(f"  wall time          : {wall:.2f}s")
    print("\nPrometheus export")
    print(await metrics.export_prometheus())


# ------------------------------------------------------------------- part 2: the quota gate

TOKENS_PER_MINUTE = 90_000
REQUESTS_PER_MINUTE = 1_200
NOTES = (
    "Revenue grew in the north while costs rose in logistics; the team hired two analysts, "
    "renegotiated the freight contract and postponed the warehouse move to the next quarter."
)


def quota_prompt(i: int) -> str:
    """Prompts of mixed length: 30 to about 400 words (deterministic)."""
    rng = random.Random(i * 7_919)
    return f"Summarise the notes of team {i % 17}: " + " ".join([NOTES] * rng.randint(1, 14))


def quota_reply(request: ProviderRequest) -> ResponseValue:
    """Replies of mixed length: 10 to 150 words (deterministic by arrival order)."""
    rng = random.Random(request.index * 104_729)
    return " ".join(f"point{n}" for n in range(rng.randint(10, 150)))


class GateWatch(BaseObserver):
    """Prints, about once a second, what the gate reports in each item's ITEM_COMPLETED data."""

    def __init__(self, server: OpenAIServer, total: int) -> None:
        self.server = server
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._next_print = 1.0

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is not ProcessingEvent.ITEM_COMPLETED or "quota_used" not in data:
            return
        self.done += 1
        elapsed = time.monotonic() - self.started
        if elapsed < self._next_print and self.done < self.total:
            return
        self._next_print = elapsed + 1.0
        used, limits, window = data["quota_used"], data["quota_limits"], data["quota_window"]
        tpm, rpm = used["tokens"] * 60 / window, used["requests"] * 60 / window
        print(
            f"{stamp()} GATE    tokens/min {tpm:7,.0f} of {limits['tokens']:,.0f} "
            f"({tpm / limits['tokens']:4.0%}) | requests/min {rpm:4,.0f} of "
            f"{limits['requests']:,.0f} | 429s so far: {self.server.status_counts[429]} | "
            f"{self.done}/{self.total} done"
        )


async def run_quota(items: int) -> None:
    print(
        f"\nPart 2: staying under a token quota. {items} items of mixed length; the emulator "
        f"enforces {TOKENS_PER_MINUTE:,} tokens and {REQUESTS_PER_MINUTE:,} requests a minute "
        "(over 3 s windows, 429 when over), and the processor declares the same limits."
    )
    config = ProcessorConfig(
        max_workers=16,
        timeout_per_item=10.0,
        max_tokens_per_minute=TOKENS_PER_MINUTE,
        max_requests_per_minute=REQUESTS_PER_MINUTE,
        # No token_estimator: the learning default starts at 4 characters a token and learns
        # the real ratio and the reply lengths from the usage each answer reports.
    )
    async with OpenAIServer(
        respond=quota_reply,
        tokens_per_minute=TOKENS_PER_MINUTE,
        requests_per_minute=REQUESTS_PER_MINUTE,
    ) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="demo", max_retries=0)
        strategy = OpenAIStrategy(client, MODEL)
        watch = GateWatch(server, items)
        metrics = MetricsObserver()
        started = time.perf_counter()
        try:
            async with ParallelBatchProcessor[str, str, None](
                config=config, observers=[watch, metrics]
            ) as processor:
                for i in range(items):
                    await processor.add_work(
                        LLMWorkItem(
                            item_id=f"notes-{i:03d}", strategy=strategy, prompt=quota_prompt(i)
                        )
                    )
                result = await processor.process_all()
        finally:
            await client.close()
        wall = time.perf_counter() - started

    tokens = result.total_input_tokens + result.total_output_tokens
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(server.status_counts.items()))
    gate = (await metrics.get_metrics())["quota"][strategy.quota_scope]
    print("\nSummary (part 2)")
    print(f"  succeeded / failed : {result.succeeded} / {result.failed} of {result.total_items}")
    print(f"  provider requests  : {server.request_count} seen by the server ({statuses})")
    print(f"  429 responses      : {server.status_counts[429]}")
    print(
        f"  tokens             : {tokens:,} ({result.total_input_tokens:,} input, "
        f"{result.total_output_tokens:,} output); the server charged "
        f"{server.rate_limit_charged['tokens']:,}"
    )
    print(f"  wall time          : {wall:.2f}s")
    # What MetricsObserver made of the events: the gate's figures over the last minute (or
    # over the run, when it is younger; the buckets start with one second's worth).
    for dimension in ("tokens", "requests"):
        used, limit = gate[f"{dimension}_per_minute"], gate[f"{dimension}_per_minute_limit"]
        print(
            f"  {dimension + ' per minute':<19}: {used:,.0f} used, limit {limit:,.0f} "
            f"({used / limit:.0%})"
        )
    print(
        f"  admission wait     : {gate['avg_admission_wait']:.2f}s per item on average, "
        f"{gate['admission_wait_total']:.1f}s in all (workers wait their turn instead of "
        "taking 429s)"
    )
    print("\nPrometheus export (the quota families)")
    exported = await metrics.export_prometheus()
    print(exported[exported.index("# HELP async_batch_llm_admission_wait_seconds") :], end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=300, help="work items of part 1")
    parser.add_argument("--quota-items", type=int, default=60, help="work items of part 2")
    args = parser.parse_args()
    if args.items < 1:
        parser.error(f"--items must be >= 1, got {args.items}")
    if args.quota_items < 1:
        parser.error(f"--quota-items must be >= 1, got {args.quota_items}")
    logging.basicConfig(level=logging.WARNING, format="           log: %(message)s")
    asyncio.run(run(args.items))
    asyncio.run(run_quota(args.quota_items))


if __name__ == "__main__":
    main()
