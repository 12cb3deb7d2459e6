"""Informational: ``process_dataset`` over 20,000 rows, 2 Ray workers, one shared TPM.

Not a test, not part of ``run_all.py``. ``python benchmarks/ray_bench.py`` (from the repository
root; needs the ``ray`` extra) starts a local Ray runtime on 127.0.0.1 (``num_cpus=2``) and one
local OpenAI emulator (in this process, on its own thread) enforcing ``TPM`` over a one-second
window, then maps ``ROWS`` rows through ``process_dataset`` with 2 workers, each running an
``OpenAIStrategy`` (the real SDK, ``max_retries=0``), sharing the quota through the default
``RayQuotaBackend`` actor. Every worker declares the whole ``TPM``.

Ideal: the tokens the emulator charged, less its burst (one second of refill), over its refill
rate; no client can be served sooner. Two wall times are compared with it: the span of the calls
(first to last request arriving at the emulator) and the whole job as the driver sees it (from
``take_all()`` to its return: actor start-up included). Last, the median time of one admission
through the quota actor, called from the driver.

``--rows N --tpm N`` change the job (for a quick try).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Before Ray is imported: keep the node (and so every Ray server) on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray spells it so); Ray default: 15

ROWS = 20_000
TPM = 330_000  # 5,500 tokens a second; 56 tokens a row: about 100 rows a second together
WORDS = 25  # prompt words; the emulator echoes the prompt, so about 2 x WORDS + 6 tokens a row
WORKERS_PER_ACTOR = 16


class OpenAIFactory:
    """Builds each worker's strategy (its own client, made inside the worker)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def __call__(self) -> Any:
        from openai import AsyncOpenAI

        from async_batch_llm import OpenAIStrategy

        client = AsyncOpenAI(base_url=self.base_url, api_key="offline", max_retries=0)
        return OpenAIStrategy(client, "gpt-4o-mini")


@contextmanager
def emulator_thread(tpm: int) -> Iterator[Any]:
    from async_batch_llm.testing.servers import OpenAIServer

    server = OpenAIServer(tokens_per_minute=tpm, rate_limit_window_seconds=1.0, latency=0.01)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


async def actor_round_trips(count: int = 2_000) -> float:
    """Median microseconds of one admission (``acquire``) through the quota actor."""
    import statistics

    from async_batch_llm.backends import BucketSpec
    from async_batch_llm.ray import RayQuotaBackend

    backend = RayQuotaBackend("bench-round-trips")
    backend.actor()
    await backend.ping()
    take = [BucketSpec("requests", 1, 1e9, 1e9), BucketSpec("tokens", 100, 1e9, 1e9, 1.0)]
    times = []
    for i in range(count):
        began = time.perf_counter()
        await backend.acquire("bench", f"r{i}", take)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--tpm", type=int, default=TPM)
    args = parser.parse_args()

    import ray

    from async_batch_llm import ProcessorConfig
    from async_batch_llm.ray import process_dataset

    started = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    startup = time.perf_counter() - started
    ray.data.DataContext.get_current().enable_progress_bars = False
    load_before = os.getloadavg()
    try:
        with emulator_thread(args.tpm) as server:
            rows = [{"id": i, "prompt": f"row {i}: " + "word " * WORDS} for i in range(args.rows)]
            config = ProcessorConfig(
                max_workers=WORKERS_PER_ACTOR,
                max_tokens_per_minute=args.tpm,
                quota_burst_seconds=0.5,
            )
            dataset = ray.data.from_items(rows)
            planned = process_dataset(dataset, OpenAIFactory(server.base_url), config=config)
            began = time.perf_counter()
            out = planned.take_all()
            job = time.perf_counter() - began
            arrivals = [request.received_at for request in server.requests]
            first, last = min(arrivals), max(arrivals)
            charged = server.rate_limit_charged["tokens"]
            http_429 = server.rate_limited_count
            calls = server.counts["chat_completions"]
        round_trip_us = asyncio.run(actor_round_trips())
    finally:
        ray.shutdown()
    rate = args.tpm / 60
    ideal = (charged - rate * 1.0) / rate
    report = {
        "rows": args.rows,
        "with_result": sum(1 for row in out if row["success"] or row["error"]),
        "succeeded": sum(1 for row in out if row["success"]),
        "calls": calls,
        "http_429": http_429,
        "tokens_charged": charged,
        "ideal_s": round(ideal, 2),
        "calls_span_s": round(last - first, 2),
        "x_ideal_calls": round((last - first) / ideal, 3),
        "job_s": round(job, 2),
        "x_ideal_job": round(job / ideal, 3),
        "ray_startup_s": round(startup, 1),
        "actor_acquire_us_median": round(round_trip_us),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
