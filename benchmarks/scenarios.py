"""Run one benchmark scenario with one implementation and print its measurements as JSON.

Not a test. ``run_all.py`` starts this script in a fresh interpreter for every measurement, so
peak RSS is that of one scenario only, and so the published 0.6.0 package can be measured with
the interpreter of its own throwaway virtual environment::

    .venv/bin/python benchmarks/scenarios.py --scenario overhead --impl ours
    benchmarks/.venv-published/bin/python benchmarks/scenarios.py \
        --scenario overhead --impl published

Implementations:

- ``baseline``: plain asyncio, one coroutine per item bounded by a semaphore, ``gather``.
- ``pool``: a bare pool of long-lived worker coroutines popping a deque (the floor).
- ``ours`` / ``published``: ``ParallelBatchProcessor`` of whichever ``async_batch_llm`` the
  interpreter imports (this repository's ``.venv`` or the published 0.6.0 venv).

The timed region is what a user pays per item: building the inputs the implementation needs
(``LLMWorkItem`` objects for the frameworks), queueing them and processing them to a list of
results that is kept. Only the prompts exist before the clock starts.

``--memory`` repeats the run under :mod:`tracemalloc` and reports the bytes still allocated
after the run, results kept and garbage collected, divided by the item count. It is a separate
invocation because tracing slows everything down and inflates RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import sys
import time
import tracemalloc
from collections import deque
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """What one scenario runs: item count, concurrency and how the fake model behaves."""

    name: str
    items: int
    workers: int
    latency: float = 0.0  # seconds each call sleeps; 0: one pass through the event loop
    suspends: bool = True  # False: the call completes without ever yielding to the loop
    fail_fraction: float = 0.0  # share of items whose first attempt raises a retryable error
    hooks: bool = False  # MetricsObserver + post-processor + progress callback
    storm: bool = False  # calls go to a provider allowing STORM_RATE calls per trailing second
    description: str = ""


STORM_RATE = 200
"""Calls the storm scenario's fake provider accepts per trailing second."""
STORM_LATENCY = 0.01
"""Seconds an accepted call of the storm provider takes."""
RETRY_WAIT = 0.01
"""Seconds every implementation waits before retrying a failed attempt in the retries scenario."""

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "overhead",
            20_000,
            100,
            description="20,000 items, zero-latency call, 100 workers",
        ),
        Scenario(
            "overhead-sync",
            20_000,
            100,
            suspends=False,
            description="overhead, but the call never yields to the event loop",
        ),
        Scenario(
            "hooks",
            20_000,
            100,
            hooks=True,
            description="overhead + MetricsObserver, post-processor, progress callback",
        ),
        Scenario(
            "latency",
            5_000,
            500,
            latency=0.02,
            description="5,000 items, call sleeps 20 ms, 500 workers",
        ),
        Scenario(
            "scale-100k",
            100_000,
            200,
            description="100,000 items, zero-latency call, 200 workers",
        ),
        Scenario(
            "scale-1m",
            1_000_000,
            200,
            description="1,000,000 items, zero-latency call, 200 workers",
        ),
        Scenario(
            "retries",
            5_000,
            100,
            fail_fraction=0.3,
            description="5,000 items, 30 % fail once (retryable), 10 ms retry wait, 100 workers",
        ),
        Scenario(
            "storm",
            2_000,
            100,
            storm=True,
            description="2,000 items, provider allows 200 calls per trailing second, else 429",
        ),
    )
}


def fails_first_attempt(index: int, fraction: float) -> bool:
    """Deterministic, evenly spread choice of the items whose first attempt fails."""
    return fraction > 0 and math.floor((index + 1) * fraction) != math.floor(index * fraction)


# --------------------------------------------------------------------------------- fake model


class TransientError(ConnectionError):
    """A retryable provider error (a dropped connection)."""


class RateLimitedError(Exception):
    """A provider's HTTP 429; ``retry_after`` is the delay the provider asks for, in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests (retry after {retry_after:.3f}s)")
        self.retry_after = retry_after


class WindowProvider:
    """A fake endpoint accepting ``rate`` calls per trailing ``window`` seconds, else 429.

    Rejected calls do not count against the window; each 429 carries the exact wait until the
    oldest accepted call leaves the window.
    """

    def __init__(self, rate: int, window: float = 1.0, latency: float = STORM_LATENCY) -> None:
        self.rate = rate
        self.window = window
        self.latency = latency
        self.accepted: deque[float] = deque()
        self.calls = 0
        self.rejected = 0

    async def call(self, prompt: str) -> tuple[str, dict[str, int]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        accepted = self.accepted
        while accepted and accepted[0] <= now - self.window:
            accepted.popleft()
        self.calls += 1
        if len(accepted) >= self.rate:
            self.rejected += 1
            raise RateLimitedError(accepted[0] + self.window - now)
        accepted.append(now)
        await asyncio.sleep(self.latency)
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


class FakeCalls:
    """The model call, shared verbatim by every implementation.

    ``execute`` takes the four positional arguments the published 0.6.0 passes and works without
    ``state`` too. Prompts of items that must fail once start with ``"!"``.
    """

    def __init__(self, scenario: Scenario, provider: WindowProvider | None = None) -> None:
        self.latency = scenario.latency
        self.suspends = scenario.suspends
        self.provider = provider

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, dict[str, int]]:
        if self.provider is not None:
            return await self.provider.call(prompt)
        if self.suspends:
            # Even a response that is already there arrives through the event loop (a socket
            # read): a zero-latency call still passes through the loop once.
            await asyncio.sleep(self.latency)
        if attempt == 1 and prompt[0] == "!":
            raise TransientError("connection reset by peer")
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


def make_prompts(scenario: Scenario) -> list[str]:
    return [
        ("!" if fails_first_attempt(i, scenario.fail_fraction) else "") + f"classify item {i}"
        for i in range(scenario.items)
    ]


# --------------------------------------------------------------------------------- implementations


async def run_baseline(scenario: Scenario, prompts: list[str], calls: FakeCalls) -> list[Any]:
    """Plain asyncio: one coroutine per item, a semaphore, ``gather``; naive retry loop."""
    semaphore = asyncio.Semaphore(scenario.workers)
    execute = calls.execute

    async def one(prompt: str) -> Any:
        async with semaphore:
            attempt = 1
            while True:
                try:
                    return await execute(prompt, attempt, 120.0, None)
                except RateLimitedError as exc:
                    await asyncio.sleep(exc.retry_after)
                except TransientError:
                    await asyncio.sleep(RETRY_WAIT)
                attempt += 1

    return await asyncio.gather(*[one(p) for p in prompts])


async def run_pool(scenario: Scenario, prompts: list[str], calls: FakeCalls) -> list[Any]:
    """A bare pool of long-lived workers on a deque: the floor of any worker-pool design."""
    queue = deque(prompts)
    results: list[Any] = []
    execute = calls.execute

    async def worker() -> None:
        while queue:
            prompt = queue.popleft()
            attempt = 1
            while True:
                try:
                    results.append(await execute(prompt, attempt, 120.0, None))
                    break
                except RateLimitedError as exc:
                    await asyncio.sleep(exc.retry_after)
                except TransientError:
                    await asyncio.sleep(RETRY_WAIT)
                attempt += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(scenario.workers):
            group.create_task(worker())
    return results


class _Hooks:
    """Post-processor and progress callback of the ``hooks`` scenario (cheap, like real ones)."""

    def __init__(self) -> None:
        self.post_processed = 0
        self.progress_calls = 0
        self.last_completed = 0

    def post_process(self, result: Any) -> None:
        self.post_processed += 1

    async def progress(self, completed: int, total: int, item_id: str) -> None:
        self.progress_calls += 1
        self.last_completed = completed


async def run_framework(
    scenario: Scenario, prompts: list[str], calls: FakeCalls, extra: dict[str, Any]
) -> list[Any]:
    """``ParallelBatchProcessor`` of the imported ``async_batch_llm`` (ours or published)."""
    import async_batch_llm as abl  # imported by main() before the clock starts

    strategy_cls = type("BenchStrategy", (FakeCalls, abl.LLMCallStrategy), {})
    strategy = strategy_cls(scenario, calls.provider)
    retry = abl.RetryConfig(
        max_attempts=50 if scenario.storm else 3,
        initial_wait=RETRY_WAIT,
        max_wait=0.1,
        jitter=False,
    )
    rate_limit = abl.RateLimitConfig(
        cooldown_seconds=1.0, backoff_multiplier=1.0, slow_start_items=0
    )
    config = abl.ProcessorConfig(max_workers=scenario.workers, retry=retry, rate_limit=rate_limit)
    kwargs: dict[str, Any] = {}
    hooks = _Hooks()
    metrics = None
    if scenario.hooks:
        metrics = abl.MetricsObserver()
        kwargs = {
            "observers": [metrics],
            "post_processor": hooks.post_process,
            "progress_callback": hooks.progress,
        }
    item_cls = abl.LLMWorkItem
    async with abl.ParallelBatchProcessor(config=config, **kwargs) as processor:
        add = processor.add_work
        for i, prompt in enumerate(prompts):
            await add(item_cls(item_id=f"item-{i}", strategy=strategy, prompt=prompt))
        batch = await processor.process_all()
    results = batch.results
    extra["succeeded"] = sum(1 for r in results if r.success)
    extra["failed"] = len(results) - extra["succeeded"]
    if scenario.hooks:
        assert metrics is not None
        extra["post_processed"] = hooks.post_processed
        extra["progress_calls"] = hooks.progress_calls
        extra["metrics_items_succeeded"] = (await metrics.get_metrics())["items_succeeded"]
    return results


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("async-batch-llm")
    except Exception:
        return "?"


# --------------------------------------------------------------------------------- measuring


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _timed(scenario: Scenario, impl: str, prompts: list[str]) -> dict[str, Any]:
    provider = WindowProvider(STORM_RATE) if scenario.storm else None
    calls = FakeCalls(scenario, provider)
    extra: dict[str, Any] = {}
    gc.collect()
    rss_before = current_rss()
    cpu_started = time.process_time()
    started = time.perf_counter()
    if impl == "baseline":
        results = await run_baseline(scenario, prompts, calls)
    elif impl == "pool":
        results = await run_pool(scenario, prompts, calls)
    else:
        results = await run_framework(scenario, prompts, calls, extra)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    gc.collect()
    rss_after = current_rss()
    extra.setdefault("succeeded", len(results))
    extra.setdefault("failed", 0)
    extra["results"] = len(results)
    if provider is not None:
        extra["calls"] = provider.calls
        extra["http_429"] = provider.rejected
    out = {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_retained_per_item": (rss_after - rss_before) / scenario.items,
        **extra,
    }
    del results
    return out


async def _retained(scenario: Scenario, impl: str, prompts: list[str]) -> float:
    """Bytes per item still allocated after the run, results kept (tracemalloc)."""
    provider = WindowProvider(STORM_RATE) if scenario.storm else None
    calls = FakeCalls(scenario, provider)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    if impl == "baseline":
        results = await run_baseline(scenario, prompts, calls)
    elif impl == "pool":
        results = await run_pool(scenario, prompts, calls)
    else:
        results = await run_framework(scenario, prompts, calls, {})
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(results) == scenario.items
    return (after - before) / scenario.items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--impl", required=True, choices=["baseline", "pool", "ours", "published"])
    parser.add_argument("--items", type=int, default=None, help="override the item count")
    parser.add_argument("--memory", action="store_true", help="measure retained bytes per item")
    parser.add_argument(
        "--warmup", type=int, default=None, help="items of the untimed warm-up run (0: none)"
    )
    args = parser.parse_args()

    scenario = SCENARIOS[args.scenario]
    if args.warmup is None:
        args.warmup = 100 if scenario.storm else 2000
    if args.items is not None:
        scenario = Scenario(**{**scenario.__dict__, "items": args.items})
    prompts = make_prompts(scenario)
    record: dict[str, Any] = {
        "scenario": scenario.name,
        "impl": args.impl,
        "items": scenario.items,
        "workers": scenario.workers,
        "python": sys.version.split()[0],
    }
    if args.impl in ("ours", "published"):
        import async_batch_llm  # import time is not part of the measurement

        record["version"] = _version()
        record["package"] = os.path.dirname(async_batch_llm.__file__)
    if args.memory:
        record["bytes_per_item"] = asyncio.run(_retained(scenario, args.impl, prompts))
    else:
        if args.warmup:
            # Run every code path once on a small batch so the timed run measures steady
            # per-item cost, not first-call costs; memory growth of the real batch stays in.
            warm = Scenario(**{**scenario.__dict__, "items": min(scenario.items, args.warmup)})
            asyncio.run(_timed(warm, args.impl, make_prompts(warm)))
        record.update(asyncio.run(_timed(scenario, args.impl, prompts)))
        wall = record["wall_s"]
        record["items_per_s"] = scenario.items / wall
        record["us_per_item"] = wall / scenario.items * 1e6
        if scenario.latency:
            ideal = math.ceil(scenario.items / scenario.workers) * scenario.latency
            record["ideal_s"] = ideal
            record["efficiency"] = ideal / wall
        if scenario.storm:
            record["ideal_s"] = scenario.items / STORM_RATE
        record["peak_rss"] = peak_rss()
    print(json.dumps(record))


if __name__ == "__main__":
    main()
