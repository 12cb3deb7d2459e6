"""`make demo`: a real batch, end to end, offline and without an API key.

300 items go through a simulated provider that answers after a few milliseconds, fails some calls
with transient errors, and throws a burst of 429s partway through. Watch the retries, the one
cooldown shared by every worker and the slow-start ramp as they happen, then the summary and the
Prometheus export.

Run it with ``make demo`` or ``python examples/demo.py [--items N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from typing import Any

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    MetricsObserver,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.observers import BaseObserver, ProcessingEvent


class RateLimitError(Exception):
    """What our simulated provider raises for HTTP 429 (recognised by its message)."""


class SimulatedProvider:
    """A pretend LLM API: some latency, some transient failures, one burst of 429s."""

    def __init__(self, seed: int, burst_start: int, burst_len: int) -> None:
        self.rng = random.Random(seed)
        self.calls = 0
        self.burst = range(burst_start, burst_start + burst_len)

    async def complete(self, prompt: str) -> tuple[str, int, int, int]:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(self.rng.uniform(0.005, 0.02))
        if call in self.burst:
            raise RateLimitError("429 Too Many Requests: rate limit exceeded")
        if self.rng.random() < 0.08:
            raise ConnectionError("connection reset by peer")
        words = len(prompt.split())
        cached = 8 if "shared context" in prompt else 0
        return f"summary of: {prompt[:30]}", words + 8, 12, cached


class DemoStrategy(LLMCallStrategy[str]):
    """Calls the simulated provider; reports tokens, cached ones included."""

    def __init__(self, provider: SimulatedProvider) -> None:
        self.provider = provider

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        text, input_tokens, output_tokens, cached = await self.provider.complete(prompt)
        usage: TokenUsage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "cached_input_tokens": cached,
        }
        return text, usage


class LiveLog(BaseObserver):
    """Prints what the processor does, as it happens."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.attempts: dict[str, int] = {}
        self.retries = 0
        self.rate_limits_in_burst = 0

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.2f}s]"

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.ITEM_STARTED:
            n = self.attempts.get(data["item_id"], 0) + 1
            self.attempts[data["item_id"]] = n
            if n > 1:
                self.retries += 1
                if self.retries <= 5 or self.retries % 10 == 0:
                    print(f"{self._stamp()} retry   {data['item_id']} (attempt {n})")
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            self.rate_limits_in_burst += 1
            print(f"{self._stamp()} 429     {data['item_id']} on worker {data['worker_id']}")
        elif event is ProcessingEvent.COOLDOWN_STARTED:
            print(
                f"{self._stamp()} PAUSE   every worker for {data['duration']:.1f}s "
                f"(consecutive rate limit #{data['consecutive']})"
            )
        elif event is ProcessingEvent.COOLDOWN_ENDED:
            print(
                f"{self._stamp()} RESUME  after {data['duration']:.2f}s; slow start ramps back up"
            )


def progress(completed: int, total: int, item_id: str) -> None:
    bar = "#" * (30 * completed // total)
    print(f"           progress {completed:4d}/{total} [{bar:<30}]", flush=True)


async def run(items: int) -> None:
    provider = SimulatedProvider(seed=7, burst_start=items // 3, burst_len=6)
    strategy = DemoStrategy(provider)
    metrics = MetricsObserver()
    config = ProcessorConfig(
        max_workers=8,
        timeout_per_item=5.0,
        retry=RetryConfig(max_attempts=4, initial_wait=0.05, max_wait=0.5),
        rate_limit=RateLimitConfig(
            cooldown_seconds=1.0,
            backoff_multiplier=2.0,
            slow_start_items=16,
            slow_start_initial_delay=0.05,
            slow_start_final_delay=0.0,
        ),
        progress_interval=max(1, items // 10),
    )
    print(f"async-batch-llm demo: {items} items, {config.max_workers} workers, no API key needed\n")
    started = time.perf_counter()
    async with ParallelBatchProcessor[str, str, None](
        config=config, observers=[LiveLog(), metrics], progress_callback=progress
    ) as processor:
        for i in range(items):
            context = "shared context" if i % 2 == 0 else "fresh"
            await processor.add_work(
                LLMWorkItem(
                    item_id=f"doc-{i:04d}",
                    strategy=strategy,
                    prompt=f"Summarise document {i} with {context} please",
                )
            )
        result = await processor.process_all()
    wall = time.perf_counter() - started

    print("\nSummary")
    print(f"  succeeded / failed : {result.succeeded} / {result.failed} of {result.total_items}")
    print(f"  provider calls     : {provider.calls}")
    print(f"  input tokens       : {result.total_input_tokens}")
    print(f"  output tokens      : {result.total_output_tokens}")
    print(f"  cached tokens      : {result.total_cached_tokens}")
    print(f"  cache hit rate     : {result.cache_hit_rate():.1f}%")
    print(f"  effective input    : {result.effective_input_tokens()} tokens")
    print(f"  wall time          : {wall:.2f}s")
    print("\nPrometheus export")
    print(await metrics.export_prometheus())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=300, help="number of work items")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="           log: %(message)s")
    asyncio.run(run(args.items))


if __name__ == "__main__":
    main()
