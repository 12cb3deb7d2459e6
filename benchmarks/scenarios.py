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
- ``ours-store``: ``ours`` journaling every result to a ``SqliteArtifactStore`` in a fresh
  temporary file; opening the store and closing it (after ``process_all()`` has waited for the
  last commit) are inside the timed region.

Quota scenarios:

- ``quota-overhead``: ``overhead`` with admission on (``max_tokens_per_minute`` so high it never
  binds: every attempt is estimated, reserved and reconciled), against the same baseline.
- ``quota-tpm``: a TPM-bound job against the local OpenAI emulator over HTTP, with the
  implementations ``declared``, ``learned`` and ``unlimited`` (see ``quota_bench.py``).

Durable and streaming scenarios (``ours`` only):

- ``stream-*``: ``process_stream`` over a generator of prompts; each result is counted and
  dropped. Its peak RSS is the point: it must not grow with the length of the source.
- ``resume-*``: a ``SqliteArtifactStore`` already holding a committed success for each of the
  scenario's items (built once, outside the timed region, and cached in the temporary
  directory) is resumed with ``ResumePolicy.REUSE_SUCCESSES`` over the same items plus one new
  item placed first. ``first_call_s`` is the time from opening the store to the start of the
  new item's call; the whole run replays every stored item. ``resume-stream`` feeds the items
  lazily through ``process_stream``; ``resume-batch`` builds every ``LLMWorkItem`` and
  ``add_work()``s it before ``process_all()``, so its first call waits for that too.

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
import hashlib
import json
import math
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quota_bench import (  # after the path above
    QUOTA_IMPLS,
    QUOTA_ITEMS,
    QUOTA_TPM,
    QUOTA_WINDOW,
    QUOTA_WORKERS,
    make_job,
    run_case,
)

NEVER_BINDING_TPM = 10**12
"""``max_tokens_per_minute`` of the ``quota-overhead`` scenario: admission on, never waiting."""

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
    kind: str = "batch"  # "batch" | "stream" (process_stream) | "resume" (from a full store)
    # | "quota" (the TPM-bound job of quota_bench.py)
    admission: bool = False  # frameworks: a token limit that never binds (admission on)
    streamed: bool = False  # resume only: through process_stream instead of add_work/process_all
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
        Scenario(
            "quota-overhead",
            20_000,
            100,
            admission=True,
            description="overhead with quota admission on (a token limit that never binds)",
        ),
        Scenario(
            "quota-tpm",
            QUOTA_ITEMS,
            QUOTA_WORKERS,
            kind="quota",
            description=(
                f"{QUOTA_ITEMS:,} mixed prompts through the openai SDK, emulator enforcing "
                f"{QUOTA_TPM:,} TPM over {QUOTA_WINDOW:g} s, {QUOTA_WORKERS} workers"
            ),
        ),
        Scenario(
            "stream-100k",
            100_000,
            200,
            kind="stream",
            description="process_stream over a generator of 100,000 prompts, results dropped",
        ),
        Scenario(
            "stream-1m",
            1_000_000,
            200,
            kind="stream",
            description="process_stream over a generator of 1,000,000 prompts, results dropped",
        ),
        Scenario(
            "resume-stream",
            1_000_000,
            200,
            kind="resume",
            streamed=True,
            description="resume 1,000,000 stored successes + 1 new item first, process_stream",
        ),
        Scenario(
            "resume-batch",
            1_000_000,
            200,
            kind="resume",
            description="resume 1,000,000 stored successes + 1 new item first, process_all",
        ),
    )
}

STORE_IMPLS = frozenset({"ours-store"})
"""Implementations that journal to an artifact store."""


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


def _framework_config(abl: Any, scenario: Scenario) -> Any:
    """The ``ProcessorConfig`` every framework run uses."""
    retry = abl.RetryConfig(
        max_attempts=50 if scenario.storm else 3,
        initial_wait=RETRY_WAIT,
        max_wait=0.1,
        jitter=False,
    )
    rate_limit = abl.RateLimitConfig(
        cooldown_seconds=1.0, backoff_multiplier=1.0, slow_start_items=0
    )
    limits = {"max_tokens_per_minute": NEVER_BINDING_TPM} if scenario.admission else {}
    return abl.ProcessorConfig(
        max_workers=scenario.workers, retry=retry, rate_limit=rate_limit, **limits
    )


async def run_framework(
    scenario: Scenario,
    prompts: list[str],
    calls: FakeCalls,
    extra: dict[str, Any],
    store_path: Path | None = None,
) -> list[Any]:
    """``ParallelBatchProcessor`` of the imported ``async_batch_llm`` (ours or published).

    With ``store_path``, the processor journals to a ``SqliteArtifactStore`` opened there (and
    closed at the end), inside the caller's timed region.
    """
    import async_batch_llm as abl  # imported by main() before the clock starts

    strategy_cls = type("BenchStrategy", (FakeCalls, abl.LLMCallStrategy), {})
    strategy = strategy_cls(scenario, calls.provider)
    config = _framework_config(abl, scenario)
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
    store = None
    if store_path is not None:
        from async_batch_llm.artifacts import SqliteArtifactStore

        store = SqliteArtifactStore(store_path)
        kwargs["artifact_store"] = store
        _watch_commit_lag(extra)
    item_cls = abl.LLMWorkItem
    try:
        async with abl.ParallelBatchProcessor(config=config, **kwargs) as processor:
            add = processor.add_work
            for i, prompt in enumerate(prompts):
                await add(item_cls(item_id=f"item-{i}", strategy=strategy, prompt=prompt))
            batch = await processor.process_all()
    finally:
        if store is not None:
            store.close()
    results = batch.results
    extra["succeeded"] = sum(1 for r in results if r.success)
    extra["failed"] = len(results) - extra["succeeded"]
    if scenario.hooks:
        assert metrics is not None
        extra["post_processed"] = hooks.post_processed
        extra["progress_calls"] = hooks.progress_calls
        extra["metrics_items_succeeded"] = (await metrics.get_metrics())["items_succeeded"]
    return results


_LAG_SINK: list[dict[str, Any]] = []
"""Where the watched writer reports: the ``extra`` of the run in progress."""


def _watch_commit_lag(extra: dict[str, Any]) -> None:
    """Record the writer's longest commit lag (hand-over to commit) of the run in ``extra``.

    Instrumentation of the benchmark only: the writer's statistics are read as it closes.
    """
    from async_batch_llm._internal.artifacts.writer import ArtifactWriter

    _LAG_SINK[:] = [extra]
    close = ArtifactWriter.close
    if getattr(close, "bench_watch", False):
        return

    async def watched(self: ArtifactWriter[Any]) -> None:
        await close(self)
        stats = self.statistics()
        sink = _LAG_SINK[0]
        sink["commit_max_lag_s"] = max(sink.get("commit_max_lag_s", 0.0), stats.max_lag)
        sink["commits"] = sink.get("commits", 0) + stats.commits

    watched.bench_watch = True  # type: ignore[attr-defined]
    ArtifactWriter.close = watched  # type: ignore[method-assign]


def stream_prompts(count: int) -> Iterator[str]:
    """The stream scenarios' source: prompts made one at a time, never a list."""
    for i in range(count):
        yield f"classify item {i}"


async def run_stream(scenario: Scenario, calls: FakeCalls, extra: dict[str, Any]) -> list[Any]:
    """``process_stream`` over a generator; every result is counted and dropped at once."""
    import async_batch_llm as abl
    from async_batch_llm.streaming import process_stream

    strategy_cls = type("BenchStrategy", (FakeCalls, abl.LLMCallStrategy), {})
    strategy = strategy_cls(scenario, calls.provider)
    config = _framework_config(abl, scenario)
    received = succeeded = 0
    stream = process_stream(strategy, stream_prompts(scenario.items), config=config)
    async with stream:
        async for result in stream:
            received += 1
            succeeded += result.success
    extra["results"] = received
    extra["succeeded"] = succeeded
    extra["failed"] = received - succeeded
    return []


# --------------------------------------------------------------------------------- resume


class FirstCallCalls(FakeCalls):
    """``FakeCalls`` that notes when the first call starts and counts the calls."""

    first_call_at: float | None = None
    calls_made: int = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, dict[str, int]]:
        if self.first_call_at is None:
            self.first_call_at = time.perf_counter()
        self.calls_made += 1
        return await super().execute(prompt, attempt, timeout, state)


def _resume_strategy(scenario: Scenario) -> Any:
    """A fresh strategy of the class whose identity the stored fingerprints were made with."""
    import async_batch_llm as abl

    # A fixed module name: the class is built on the fly, and its identity must not depend on
    # how this file was started.
    cls = type(
        "ResumeStrategy",
        (FirstCallCalls, abl.LLMCallStrategy),
        {"__module__": "benchmarks.scenarios"},
    )
    return cls(scenario)


RESUME_USAGE = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
RESUME_CACHE = Path(tempfile.gettempdir()) / "async-batch-llm-bench"
"""Where the built resume stores are kept between runs."""
RESUME_BUILD_GROUP = 50_000
"""Records per ``write()`` while building a store."""


def resume_store(scenario: Scenario) -> tuple[Path, float | None]:
    """The path of a store with one committed success per item, built on first use.

    The records are exactly what the processor would have journaled for ``item-{i}`` with
    ``make_prompts``'s prompt (same fingerprint, a ``"str"`` output equal to the prompt). The
    file name carries a hash of the strategy identity and the schema version, so a change to
    either builds a new file. Returns the path and the build time (``None``: taken from cache).
    """
    from async_batch_llm._internal.artifacts.records import (
        SCHEMA_VERSION,
        ArtifactRecord,
        item_fingerprint,
        strategy_identity,
    )
    from async_batch_llm.artifacts import SqliteArtifactStore

    identity = strategy_identity(_resume_strategy(scenario))
    key = hashlib.blake2b(f"{identity}|{SCHEMA_VERSION}".encode(), digest_size=6).hexdigest()
    RESUME_CACHE.mkdir(exist_ok=True)
    path = RESUME_CACHE / f"resume-{scenario.items}-{key}.sqlite"
    if path.exists():
        return path, None
    started = time.perf_counter()
    building = path.with_name(path.name + f".building-{os.getpid()}")
    store = SqliteArtifactStore(building)
    try:
        now = time.time()
        for first in range(0, scenario.items, RESUME_BUILD_GROUP):
            group = []
            for i in range(first, min(scenario.items, first + RESUME_BUILD_GROUP)):
                prompt = f"classify item {i}"
                fingerprint = item_fingerprint(prompt, identity, None)
                group.append(
                    ArtifactRecord(
                        f"item-{i}",
                        fingerprint,
                        True,
                        "str",
                        prompt,
                        None,
                        RESUME_USAGE,
                        None,
                        None,
                        now,
                    )
                )
            store.write(group)
    finally:
        store.close()  # the last connection: SQLite folds the WAL into the file and deletes it
    os.replace(building, path)
    return path, time.perf_counter() - started


def resume_items(scenario: Scenario, new_id: str) -> Iterator[tuple[str, str]]:
    """``(item_id, prompt)`` of the resumed run: the new item first, then every stored one."""
    yield new_id, f"classify new item {new_id}"
    for i in range(scenario.items):
        yield f"item-{i}", f"classify item {i}"


async def run_resume(
    scenario: Scenario, store_path: Path, prompts: list[str], extra: dict[str, Any]
) -> list[Any]:
    """Open the store, build the processor and resume: everything here is timed."""
    import async_batch_llm as abl
    from async_batch_llm.artifacts import ResumePolicy, SqliteArtifactStore
    from async_batch_llm.streaming import process_stream

    # A new id every run: the run journals its new item, and the cached store must still lack
    # the next run's.
    new_id = f"new-{time.time_ns()}"
    store = SqliteArtifactStore(store_path)
    strategy = _resume_strategy(scenario)
    config = _framework_config(abl, scenario)
    policy = ResumePolicy.REUSE_SUCCESSES
    received = succeeded = replayed = 0
    try:
        if scenario.streamed:
            stream = process_stream(
                strategy,
                resume_items(scenario, new_id),
                config=config,
                artifact_store=store,
                resume=policy,
            )
            async with stream:
                async for result in stream:
                    received += 1
                    succeeded += result.success
                    replayed += result.replayed_from_artifact
        else:
            item_cls = abl.LLMWorkItem
            built: Any = abl.ParallelBatchProcessor(
                config=config, artifact_store=store, resume=policy
            )
            async with built as processor:
                add = processor.add_work
                await add(
                    item_cls(
                        item_id=new_id, strategy=strategy, prompt=f"classify new item {new_id}"
                    )
                )
                for i, prompt in enumerate(prompts):
                    await add(item_cls(item_id=f"item-{i}", strategy=strategy, prompt=prompt))
                extra["run_started_at"] = time.perf_counter()
                batch = await processor.process_all()
            for result in batch.results:
                received += 1
                succeeded += result.success
                replayed += result.replayed_from_artifact
    finally:
        store.close()
    extra["results"] = received
    extra["succeeded"] = succeeded
    extra["failed"] = received - succeeded
    extra["replayed"] = replayed
    extra["calls_made"] = strategy.calls_made
    extra["first_call_at"] = strategy.first_call_at
    return []


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


async def _run_impl(
    scenario: Scenario,
    impl: str,
    prompts: list[str],
    calls: FakeCalls,
    extra: dict[str, Any],
    scratch: Path,
) -> list[Any]:
    """Run ``impl`` once; ``scratch`` is an empty directory for a store's file."""
    if scenario.kind == "stream":
        return await run_stream(scenario, calls, extra)
    if scenario.kind == "resume":
        return await run_resume(scenario, scratch / "resume.sqlite", prompts, extra)
    if impl == "baseline":
        return await run_baseline(scenario, prompts, calls)
    if impl == "pool":
        return await run_pool(scenario, prompts, calls)
    store_path = scratch / "journal.sqlite" if impl in STORE_IMPLS else None
    return await run_framework(scenario, prompts, calls, extra, store_path)


def _prepare_scratch(scenario: Scenario, scratch: Path, extra: dict[str, Any]) -> None:
    """Untimed set-up in ``scratch``: for a resume scenario, a link to the built store."""
    if scenario.kind == "resume":
        built, build_s = resume_store(scenario)
        if build_s is not None:
            extra["store_build_s"] = build_s
        # A hard link: the run opens "its own" file (SQLite puts -wal/-shm beside it) while
        # the records stay in the cache. The run appends its new item's record to it.
        (scratch / "resume.sqlite").hardlink_to(built)


def _count_records(impl: str, scratch: Path, extra: dict[str, Any]) -> None:
    """After the clock: how many items the journal holds (a check that every item was)."""
    path = scratch / "journal.sqlite"
    if impl in STORE_IMPLS and path.exists():
        from async_batch_llm.artifacts import SqliteArtifactStore

        store = SqliteArtifactStore(path)
        try:
            extra["records"] = store.count()
        finally:
            store.close()


async def _timed(scenario: Scenario, impl: str, prompts: list[str]) -> dict[str, Any]:
    provider = WindowProvider(STORM_RATE) if scenario.storm else None
    calls = FakeCalls(scenario, provider)
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="abl-bench-") as tmp:
        scratch = Path(tmp)
        _prepare_scratch(scenario, scratch, extra)
        gc.collect()
        rss_before = current_rss()
        cpu_started = time.process_time()
        started = time.perf_counter()
        results = await _run_impl(scenario, impl, prompts, calls, extra, scratch)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        _count_records(impl, scratch, extra)
    gc.collect()
    rss_after = current_rss()
    extra.setdefault("results", len(results))
    extra.setdefault("succeeded", len(results))
    extra.setdefault("failed", 0)
    first_call_at = extra.pop("first_call_at", None)
    run_started_at = extra.pop("run_started_at", None)
    if scenario.kind == "resume":
        extra["first_call_s"] = None if first_call_at is None else first_call_at - started
        if run_started_at is not None:  # process_all(): the items were built and added first
            extra["added_s"] = run_started_at - started
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
    with tempfile.TemporaryDirectory(prefix="abl-bench-") as tmp:
        scratch = Path(tmp)
        _prepare_scratch(scenario, scratch, {})
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        results = await _run_impl(scenario, impl, prompts, calls, {}, scratch)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    assert len(results) == scenario.items
    return (after - before) / scenario.items


def _prompts_for(scenario: Scenario) -> list[str]:
    """The prompt list made before the clock; none for a streamed source, which is a generator
    (a list of its prompts would be the very memory streaming saves)."""
    if scenario.kind == "stream" or (scenario.kind == "resume" and scenario.streamed):
        return []
    return make_prompts(scenario)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument(
        "--impl",
        required=True,
        choices=["baseline", "pool", "ours", "ours-store", "published", *QUOTA_IMPLS],
    )
    parser.add_argument("--items", type=int, default=None, help="override the item count")
    parser.add_argument("--memory", action="store_true", help="measure retained bytes per item")
    parser.add_argument(
        "--warmup", type=int, default=None, help="items of the untimed warm-up run (0: none)"
    )
    args = parser.parse_args()

    scenario = SCENARIOS[args.scenario]
    if scenario.kind == "quota":
        main_quota(scenario, args, parser)
        return
    if args.impl in QUOTA_IMPLS:
        parser.error(f"--impl {args.impl} runs only the quota-tpm scenario")
    if scenario.kind != "batch" and args.impl != "ours":
        parser.error(f"scenario {scenario.name} runs only with --impl ours")
    if scenario.kind != "batch" and args.memory:
        parser.error(f"scenario {scenario.name} keeps no results: no --memory run")
    if args.warmup is None:
        args.warmup = 100 if scenario.storm else 2000
    if args.items is not None:
        scenario = Scenario(**{**scenario.__dict__, "items": args.items})
    prompts = _prompts_for(scenario)
    record: dict[str, Any] = {
        "scenario": scenario.name,
        "impl": args.impl,
        "items": scenario.items,
        "workers": scenario.workers,
        "python": sys.version.split()[0],
    }
    if args.impl in ("ours", "ours-store", "published"):
        import async_batch_llm  # import time is not part of the measurement

        if args.impl in STORE_IMPLS or scenario.kind != "batch":
            # Imported before the clock too.
            import async_batch_llm.artifacts
            import async_batch_llm.streaming

        record["version"] = _version()
        record["package"] = os.path.dirname(async_batch_llm.__file__)
    if args.memory:
        record["bytes_per_item"] = asyncio.run(_retained(scenario, args.impl, prompts))
    else:
        if args.warmup:
            # Run every code path once on a small batch so the timed run measures steady
            # per-item cost, not first-call costs; memory growth of the real batch stays in.
            warm = Scenario(**{**scenario.__dict__, "items": min(scenario.items, args.warmup)})
            warm_prompts = _prompts_for(warm)
            asyncio.run(_timed(warm, args.impl, warm_prompts))
        record.update(asyncio.run(_timed(scenario, args.impl, prompts)))
        wall = record["wall_s"]
        total = record["results"]  # a resumed run has its new item on top of the stored ones
        record["items_per_s"] = total / wall
        record["us_per_item"] = wall / total * 1e6
        if scenario.latency:
            ideal = math.ceil(scenario.items / scenario.workers) * scenario.latency
            record["ideal_s"] = ideal
            record["efficiency"] = ideal / wall
        if scenario.storm:
            record["ideal_s"] = scenario.items / STORM_RATE
        record["peak_rss"] = peak_rss()
    print(json.dumps(record))


def main_quota(scenario: Scenario, args: argparse.Namespace, parser: Any) -> None:
    """The ``quota-tpm`` scenario: one case against a fresh emulator, after a warm-up."""
    if args.impl not in QUOTA_IMPLS:
        parser.error(f"scenario {scenario.name} runs with --impl {' or '.join(QUOTA_IMPLS)}")
    if args.memory:
        parser.error(f"scenario {scenario.name} has no --memory run")
    items = scenario.items if args.items is None else args.items
    import async_batch_llm
    import async_batch_llm.llm_strategies  # imported before the clock

    record: dict[str, Any] = {
        "scenario": scenario.name,
        "impl": args.impl,
        "items": items,
        "workers": scenario.workers,
        "python": sys.version.split()[0],
        "version": _version(),
        "package": os.path.dirname(async_batch_llm.__file__),
    }
    warmup = 50 if args.warmup is None else args.warmup
    if warmup:
        # The same code paths against an emulator without limits (nothing learned carries
        # over: every case builds a new processor, strategy and emulator).
        asyncio.run(run_case(args.impl, make_job(warmup, seed=1), scenario.workers, False))
    record.update(asyncio.run(run_case(args.impl, make_job(items), scenario.workers, True)))
    record["items_per_s"] = record["results"] / record["wall_s"]
    record["us_per_item"] = record["wall_s"] / record["results"] * 1e6
    record["peak_rss"] = peak_rss()
    print(json.dumps(record))


if __name__ == "__main__":
    main()
