"""Informational: 2 and 4 OS processes sharing one TPM through Redis, vs in-process quotas.

Not a test, not part of ``run_all.py``. ``python benchmarks/redis_processes_bench.py`` (from
the repository root; needs ``redis-server``) starts one local OpenAI emulator enforcing
``TPM`` over a one-second window and a throwaway ``redis-server``, then runs N processes of
``tests/backends/quota_worker.py`` (each declaring the whole ``TPM``, 80-word prompts and
20-word answers, 8 workers) at once, with ``RedisQuotaBackend`` and then with in-process
quotas. Ideal: the tokens the emulator charged, less its burst, over its refill rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TPM = 120_000
TOTAL_ITEMS = 200  # 100 tokens each: 20,000 tokens, ideal (20,000 - 2,000) / 2,000 = 9 s


async def case(processes: int, redis_url: str | None) -> dict[str, Any]:
    from tests.backends.quota_worker import ANSWER_WORDS

    from async_batch_llm.testing.servers import OpenAIServer, Reply

    async def respond(request: Any) -> Reply:
        await asyncio.sleep(0.01)
        return Reply(text=" ".join(["lorem"] * ANSWER_WORDS))

    async with OpenAIServer(
        respond=respond, tokens_per_minute=TPM, rate_limit_window_seconds=1.0
    ) as server:
        start_at = time.time() + 3.0
        children = []
        for index in range(processes):
            options = {
                "redis": redis_url,
                "base_url": server.base_url,
                "tpm": TPM,
                "items": TOTAL_ITEMS // processes,
                "prefix": f"p{index}",
                "start_at": start_at,
            }
            children.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.backends.quota_worker",
                    json.dumps(options),
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,  # the in-process case logs its 429s
                )
            )
        outputs = await asyncio.gather(*(child.communicate() for child in children))
        reports = [json.loads(out.decode().splitlines()[-1]) for out, _ in outputs]
        charged = server.rate_limit_charged["tokens"]
        rate = TPM / 60
        ideal = (charged - rate * 1.0) / rate
        wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
        return {
            "processes": processes,
            "quota": "redis" if redis_url else "in process",
            "succeeded": sum(r["succeeded"] for r in reports),
            "wall_s": wall,
            "ideal_s": ideal,
            "x_ideal": wall / ideal,
            "http_429": server.rate_limited_count,
        }


async def main() -> None:
    from async_batch_llm.testing.redis_server import LocalRedisServer

    with LocalRedisServer() as redis:
        rows = [
            await case(2, redis.url),
            await case(4, redis.url),
            await case(2, None),
            await case(4, None),
        ]
    print("processes  quota       succeeded  wall s  ideal s  x ideal  429s")
    for row in rows:
        print(
            f"{row['processes']:>9}  {row['quota']:<10}  {row['succeeded']:>9}  "
            f"{row['wall_s']:>6.2f}  {row['ideal_s']:>7.2f}  {row['x_ideal']:>7.3f}  "
            f"{row['http_429']:>4}"
        )


if __name__ == "__main__":
    asyncio.run(main())
