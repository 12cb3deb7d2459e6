"""Several OS processes sharing one quota and one cooldown through a real Redis.

Each process runs :mod:`tests.backends.quota_worker` against one local OpenAI emulator (in this
test's process) that enforces the tokens-per-minute limit every process declares.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from async_batch_llm.testing.redis_server import LocalRedisServer
from async_batch_llm.testing.servers import OpenAIServer, RateLimited, Reply
from tests.backends.quota_worker import ANSWER_WORDS

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]
TPM = 120_000  # 2,000 tokens a second; one second of burst on both sides
ITEMS = 30  # per process, 100 tokens each


async def _respond(request: Any) -> Reply:
    await asyncio.sleep(0.01)
    return Reply(text=" ".join(["lorem"] * ANSWER_WORDS))


async def run_workers(
    base_url: str, redis_url: str | None, prefixes: list[str], **extra: Any
) -> list[dict[str, Any]]:
    start_at = time.time() + 3.0  # after every interpreter has imported the library
    processes = []
    for prefix in prefixes:
        options = {
            "redis": redis_url,
            "base_url": base_url,
            "tpm": TPM,
            "items": ITEMS,
            "prefix": prefix,
            "start_at": start_at,
            **extra,
        }
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.backends.quota_worker",
                json.dumps(options),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )
    outputs = await asyncio.gather(*(process.communicate() for process in processes))
    reports = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-2000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports


async def test_two_processes_sharing_redis_stay_under_the_limit_together(
    redis_server: LocalRedisServer,
) -> None:
    async with OpenAIServer(
        respond=_respond, tokens_per_minute=TPM, rate_limit_window_seconds=1.0
    ) as server:
        reports = await run_workers(server.base_url, redis_server.url, ["a", "b"])
        shared_429s = server.rate_limited_count
        assert [r["succeeded"] for r in reports] == [ITEMS, ITEMS]
        # Together they needed about (6,000 - 2,000) / 2,000 = 2 s: the shared buckets paced
        # them (each alone would have believed it had the whole limit).
        wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
        assert wall > 1.5
        # The control: the same two processes with in-process quotas cause a 429 storm.
        server.reset_rate_limits()
        await asyncio.sleep(1.1)
        before = server.rate_limited_count
        local = await run_workers(server.base_url, None, ["c", "d"])
        assert [r["succeeded"] for r in local] == [ITEMS, ITEMS]
        local_429s = server.rate_limited_count - before
    assert shared_429s == 0
    assert local_429s > 0


async def test_a_rate_limit_in_one_process_pauses_the_other(
    redis_server: LocalRedisServer,
) -> None:
    arrivals: list[float] = []
    limited_at: list[float] = []

    async def respond(request: Any) -> Any:
        now = time.time()
        arrivals.append(now)
        if request.prompt.startswith("a item 3 ") and not limited_at:
            limited_at.append(now)
            return RateLimited(retry_after=2.0)
        await asyncio.sleep(0.02)
        return Reply(text="ok")

    async with OpenAIServer(respond=respond) as server:
        reports = await run_workers(
            server.base_url, redis_server.url, ["a", "b"], workers=2, cooldown=0.1
        )
    assert [r["succeeded"] for r in reports] == [ITEMS, ITEMS]
    assert len(limited_at) == 1
    (t0,) = limited_at
    # The cooldown lasts at least the retry-after (2 s) in both processes: after the calls
    # already in flight, nothing reaches the server until it ends.
    quiet = [t for t in arrivals if t0 + 0.3 < t < t0 + 1.8]
    assert quiet == []
    assert any(t >= t0 + 1.8 for t in arrivals)
