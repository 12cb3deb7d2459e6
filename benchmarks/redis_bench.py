"""Informational: what sharing the quota through Redis costs per attempt.

Not a test, not part of ``run_all.py``. ``python benchmarks/redis_bench.py`` starts a throwaway
``redis-server`` on loopback (``LocalRedisServer``: the Debian package must be installed) and
measures, on this machine:

- the backend alone: one ``acquire`` (one round trip, one Lua script) and one ``settle``;
- a processor pushing ``ITEMS`` no-op items (an instant strategy reporting usage) with a
  declared TPM that never binds, quotas in process vs in Redis: the per-item wall time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

ITEMS = 5_000
ROUND_TRIPS = 5_000
WORKERS = 16


async def backend_round_trips(url: str) -> tuple[float, float]:
    from async_batch_llm.backends import BucketSpec
    from async_batch_llm.backends.redis import RedisQuotaBackend

    backend = RedisQuotaBackend(url, namespace="bench")
    await backend.ping()
    take = [BucketSpec("requests", 1, 1e9, 1e9), BucketSpec("tokens", 100, 1e9, 1e9, 1.0)]
    refund = [BucketSpec("tokens", -10, 1e9, 1e9)]
    acquire: list[float] = []
    settle: list[float] = []
    for i in range(ROUND_TRIPS):
        started = time.perf_counter()
        await backend.acquire("bench", f"r{i}", take)
        middle = time.perf_counter()
        await backend.settle("bench", f"r{i}", refund)
        acquire.append(middle - started)
        settle.append(time.perf_counter() - middle)
    await backend.aclose()
    return statistics.median(acquire) * 1e6, statistics.median(settle) * 1e6


async def processor_run(backend: Any) -> float:
    import async_batch_llm as abl

    class Instant(abl.LLMCallStrategy[str]):
        quota_scope = "bench"

        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> tuple[str, dict[str, int]]:
            return "ok", {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}

    config = abl.ProcessorConfig(
        max_workers=WORKERS, max_tokens_per_minute=10**12, quota_backend=backend
    )
    strategy = Instant()
    started = time.perf_counter()
    result = await abl.process_prompts(strategy, [f"p{i}" for i in range(ITEMS)], config=config)
    elapsed = time.perf_counter() - started
    assert result.succeeded == ITEMS, result
    return elapsed / ITEMS * 1e6


async def main() -> None:
    from async_batch_llm.backends.redis import RedisQuotaBackend
    from async_batch_llm.testing.redis_server import LocalRedisServer

    with LocalRedisServer() as server:
        acquire_us, settle_us = await backend_round_trips(server.url)
        memory_us = min([await processor_run(None) for _ in range(3)])
        redis_us = min([await processor_run(RedisQuotaBackend(server.url)) for _ in range(3)])
    print(f"backend acquire (1 round trip): {acquire_us:.0f} µs median")
    print(f"backend settle  (1 round trip): {settle_us:.0f} µs median")
    print(f"processor, {WORKERS} workers, quota in process: {memory_us:.1f} µs/item")
    print(f"processor, {WORKERS} workers, quota in Redis:   {redis_us:.1f} µs/item")


if __name__ == "__main__":
    asyncio.run(main())
