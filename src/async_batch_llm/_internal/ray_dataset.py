"""What runs inside Ray for :mod:`async_batch_llm.ray`: the quota actor and the batch worker.

Imported only where Ray runs (the driver building the plan, the ``map_batches`` actors and
the quota actor); nothing here imports :mod:`ray` at module level.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.quota_backend import BucketSpec, CooldownTurn, InMemoryQuotaBackend
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm.core.config import ProcessorConfig

if TYPE_CHECKING:
    import pyarrow

RESULT_COLUMNS = (
    "success",
    "output",
    "error",
    "error_category",
    "input_tokens",
    "output_tokens",
    "total_tokens",
)

# Each map_batches actor asks Ray for this share of a CPU. The workers wait on the provider
# almost all the time; a whole CPU each would let `concurrency` actors hold every CPU of a
# small node, and Ray Data's upstream tasks (reads, repartition) then never get one: the job
# waits forever (see docs/scale-out.md, "Ray: failure modes").
WORKER_NUM_CPUS = 0.25


class QuotaActor:
    """The state behind ``RayQuotaBackend``: one :class:`InMemoryQuotaBackend` in one actor.

    Every method runs to completion on the actor's event loop without awaiting anything, so
    each is atomic for every caller; the actor's clock is the one clock of the quota.
    """

    def __init__(self) -> None:
        self._backend = InMemoryQuotaBackend()

    async def ping(self) -> bool:
        return True

    async def acquire(
        self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]
    ) -> float:
        return await self._backend.acquire(scope, reservation_id, buckets)

    async def settle(self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]) -> bool:
        return await self._backend.settle(scope, reservation_id, buckets)

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        return await self._backend.begin_cooldown(floor)

    async def extend_cooldown(self, seconds: float) -> float:
        return await self._backend.extend_cooldown(seconds)

    async def reset_consecutive(self) -> None:
        await self._backend.reset_consecutive()


def missing_columns(names: Sequence[str], id_column: str, prompt_column: str) -> str | None:
    """The error message for a dataset lacking a needed column, or ``None``."""
    for field, column in (("id_column", id_column), ("prompt_column", prompt_column)):
        if column not in names:
            return f"the dataset has no {column!r} column ({field}); its columns: {list(names)}"
    return None


def output_text(output: Any) -> str | None:
    """A result's output as the ``output`` column holds it (text, JSON for structured data)."""
    if output is None or isinstance(output, str):
        return output
    dump = getattr(output, "model_dump_json", None)
    if callable(dump):
        return str(dump())
    if isinstance(output, dict | list | int | float | bool):
        try:
            return json.dumps(output)
        except (TypeError, ValueError):
            pass
    return str(output)


def _count(usage: Any, key: str) -> int | None:
    value = usage.get(key) if usage else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _item_ids(ids: list[Any]) -> list[str]:
    """Row ids as item ids, made unique within the batch when they are not."""
    keys = [str(value) for value in ids]
    if len(set(keys)) != len(keys):
        keys = [f"{key}#{index}" for index, key in enumerate(keys)]
    return keys


class BatchWorker:
    """One ``map_batches`` actor: its own event loop and strategy; one processor run a batch."""

    def __init__(
        self,
        strategy_factory: Callable[[], LLMCallStrategy[Any]],
        config: ProcessorConfig,
        prompt_column: str,
        id_column: str,
    ) -> None:
        self._strategy = strategy_factory()
        self._config = config
        self._prompt_column = prompt_column
        self._id_column = id_column
        self._loop = asyncio.new_event_loop()

    async def _run(self, keys: list[str], prompts: list[Any]) -> dict[str, Any]:
        from async_batch_llm import LLMWorkItem, ParallelBatchProcessor

        async with ParallelBatchProcessor[Any, Any, None](config=self._config) as processor:
            for key, prompt in zip(keys, prompts, strict=True):
                await processor.add_work(
                    LLMWorkItem(item_id=key, strategy=self._strategy, prompt=prompt)
                )
            batch = await processor.process_all()
        return {result.item_id: result for result in batch.results}

    def __call__(self, table: pyarrow.Table) -> pyarrow.Table:
        import pyarrow as pa

        problem = missing_columns(table.column_names, self._id_column, self._prompt_column)
        if problem is not None:  # the driver could not see the schema before running
            raise ValueError(problem)
        keys = _item_ids(table.column(self._id_column).to_pylist())
        prompts = table.column(self._prompt_column).to_pylist()
        rows: list[dict[str, Any]]
        try:
            by_key = self._loop.run_until_complete(self._run(keys, prompts))
        except Exception as exc:  # a fault of the whole batch: each row fails, the job goes on
            message = f"{type(exc).__name__}: {exc}"
            by_key = {}
            rows = [{"error": message, "error_category": "unknown"} for _ in keys]
        else:
            rows = []
            for key in keys:
                result = by_key.get(key)
                if result is None:  # pragma: no cover - the processor reports every item
                    rows.append({"error": "no result for this row", "error_category": "unknown"})
                    continue
                rows.append(
                    {
                        "success": bool(result.success),
                        "output": output_text(result.output),
                        "error": result.error,
                        "error_category": result.error_category,
                        "input_tokens": _count(result.token_usage, "input_tokens"),
                        "output_tokens": _count(result.token_usage, "output_tokens"),
                        "total_tokens": _count(result.token_usage, "total_tokens"),
                    }
                )
        types = {
            "success": pa.bool_(),
            "output": pa.string(),
            "error": pa.string(),
            "error_category": pa.string(),
            "input_tokens": pa.int64(),
            "output_tokens": pa.int64(),
            "total_tokens": pa.int64(),
        }
        kept = [name for name in table.column_names if name not in RESULT_COLUMNS]
        out = table.select(kept)
        for column in RESULT_COLUMNS:
            default: Any = False if column == "success" else None
            values = [row.get(column, default) for row in rows]
            out = out.append_column(column, pa.array(values, type=types[column]))
        return out
