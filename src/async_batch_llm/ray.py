"""Ray Data: run the processor inside ``map_batches`` workers (extra ``ray``).

:func:`process_dataset` maps a :class:`ray.data.Dataset` of prompts through a processor in each
of ``concurrency`` Ray actors and returns the dataset with result columns. Every worker shares
one quota and one rate-limit cooldown: through the named Ray actor behind
:class:`RayQuotaBackend` (the default), or through Redis when the config says
``quota_backend=RedisQuotaBackend(...)``. A row that fails gets ``success=False`` and its error;
it never fails the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.quota_backend import (
    BucketSpec,
    CooldownTurn,
    InMemoryQuotaBackend,
    is_shared_backend,
)
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm.core.config import ProcessorConfig

if TYPE_CHECKING:
    import ray.data

__all__ = ["RESULT_COLUMNS", "RayQuotaBackend", "process_dataset"]

RESULT_COLUMNS = (
    "success",
    "output",
    "error",
    "error_category",
    "input_tokens",
    "output_tokens",
    "total_tokens",
)
"""The columns :func:`process_dataset` adds (it replaces columns of the same names)."""

DEFAULT_ACTOR_NAME = "async-batch-llm-quota"


class _QuotaActorImpl:
    """The state behind :class:`RayQuotaBackend`: an :class:`InMemoryQuotaBackend` in one actor
    (its methods run one at a time: each is atomic)."""

    def __init__(self) -> None:
        self._backend = InMemoryQuotaBackend()

    async def acquire(self, scope: str, reservation_id: str, buckets: list[BucketSpec]) -> float:
        return await self._backend.acquire(scope, reservation_id, buckets)

    async def settle(self, scope: str, reservation_id: str, buckets: list[BucketSpec]) -> bool:
        return await self._backend.settle(scope, reservation_id, buckets)

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        return await self._backend.begin_cooldown(floor)

    async def extend_cooldown(self, seconds: float) -> float:
        return await self._backend.extend_cooldown(seconds)

    async def reset_consecutive(self) -> None:
        await self._backend.reset_consecutive()

    async def ping(self) -> bool:
        return True


class RayQuotaBackend:
    """A :class:`~async_batch_llm.backends.QuotaBackend` kept in a named Ray actor.

    Every process of the Ray cluster (the driver and each ``map_batches`` worker) that builds a
    ``RayQuotaBackend`` with the same ``name`` shares its buckets and cooldown. The actor is
    made on first use (in the current Ray namespace) and lives as long as the job. Picklable:
    only the name travels.

    Args:
        name: the Ray actor's name.
    """

    def __init__(self, name: str = DEFAULT_ACTOR_NAME) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self._handle = None

    def actor(self) -> Any:
        """The named actor (made if it does not exist yet)."""
        if self._handle is None:
            import ray

            remote: Any = ray.remote(_QuotaActorImpl)
            self._handle = remote.options(
                name=self.name, get_if_exists=True, num_cpus=0, max_concurrency=1
            ).remote()
        return self._handle

    async def ping(self) -> None:
        await self.actor().ping.remote()

    async def acquire(
        self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]
    ) -> float:
        return float(await self.actor().acquire.remote(scope, reservation_id, list(buckets)))

    async def settle(self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]) -> bool:
        return bool(await self.actor().settle.remote(scope, reservation_id, list(buckets)))

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        turn: CooldownTurn = await self.actor().begin_cooldown.remote(floor)
        return turn

    async def extend_cooldown(self, seconds: float) -> float:
        return float(await self.actor().extend_cooldown.remote(seconds))

    async def reset_consecutive(self) -> None:
        await self.actor().reset_consecutive.remote()

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"RayQuotaBackend({self.name!r})"


def _token(usage: Any, key: str) -> int | None:
    if not usage:
        return None
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _BatchWorker:
    """One ``map_batches`` actor: a processor run per batch, on the actor's own event loop."""

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

    async def _run(self, ids: list[Any], prompts: list[Any]) -> list[dict[str, Any]]:
        from async_batch_llm import LLMWorkItem, ParallelBatchProcessor

        rows: list[dict[str, Any]] = []
        async with ParallelBatchProcessor[Any, Any, None](config=self._config) as processor:
            for index, prompt in enumerate(prompts):
                await processor.add_work(
                    LLMWorkItem(item_id=str(index), strategy=self._strategy, prompt=prompt)
                )
            batch = await processor.process_all()
        by_index = {int(result.item_id): result for result in batch.results}
        for index in range(len(ids)):
            result = by_index.get(index)
            if result is None:  # pragma: no cover - the processor reports every item
                rows.append({"success": False, "error": "no result", "error_category": "unknown"})
                continue
            output = result.output
            rows.append(
                {
                    "success": bool(result.success),
                    "output": None if output is None else str(output),
                    "error": result.error,
                    "error_category": result.error_category,
                    "input_tokens": _token(result.token_usage, "input_tokens"),
                    "output_tokens": _token(result.token_usage, "output_tokens"),
                    "total_tokens": _token(result.token_usage, "total_tokens"),
                }
            )
        return rows

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids = list(batch[self._id_column])
        prompts = list(batch[self._prompt_column])
        try:
            rows = self._loop.run_until_complete(self._run(ids, prompts))
        except Exception as exc:  # a fault of the whole batch: every row fails, the job goes on
            message = f"{type(exc).__name__}: {exc}"
            rows = [{"success": False, "error": message, "error_category": "unknown"}] * len(ids)
        out = dict(batch)
        for column in RESULT_COLUMNS:
            out[column] = [row.get(column) for row in rows]
        return out


def process_dataset(
    dataset: ray.data.Dataset,
    strategy_factory: Callable[[], LLMCallStrategy[Any]],
    *,
    prompt_column: str = "prompt",
    id_column: str = "id",
    config: ProcessorConfig | None = None,
    concurrency: int = 2,
) -> ray.data.Dataset:
    """Run the processor over ``dataset`` in ``concurrency`` Ray workers; add result columns.

    Each worker calls ``strategy_factory()`` once and processes its batches with a processor
    built from ``config``. Unless ``config.quota_backend`` is a shared backend already (e.g.
    :class:`~async_batch_llm.backends.redis.RedisQuotaBackend`), every worker shares one quota
    and cooldown through a :class:`RayQuotaBackend`. The result keeps every input column and
    adds :data:`RESULT_COLUMNS`: ``success``, ``output`` (``str`` or ``None``), ``error``,
    ``error_category`` and the three token counts. Lazy, like any Ray Data transform.

    Raises:
        ValueError: ``dataset`` lacks ``id_column`` or ``prompt_column`` (naming the columns it
            has), or ``concurrency`` is not an int >= 1.
        TypeError: ``strategy_factory`` is not callable or ``config`` not a ProcessorConfig.
    """
    if not callable(strategy_factory):
        raise TypeError(f"strategy_factory must be callable, got {type(strategy_factory).__name__}")
    if config is not None and not isinstance(config, ProcessorConfig):
        raise TypeError(f"config must be a ProcessorConfig or None, got {type(config).__name__}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    schema = dataset.schema()
    names = list(schema.names) if schema is not None else []
    for field, column in (("id_column", id_column), ("prompt_column", prompt_column)):
        if column not in names:
            raise ValueError(
                f"the dataset has no {column!r} column ({field}); its columns: {names}"
            )
    config = config if config is not None else ProcessorConfig()
    if not is_shared_backend(config.quota_backend):
        config = dataclasses.replace(config, quota_backend=RayQuotaBackend())
    return dataset.map_batches(
        _BatchWorker,
        fn_constructor_kwargs={
            "strategy_factory": strategy_factory,
            "config": config,
            "prompt_column": prompt_column,
            "id_column": id_column,
        },
        concurrency=concurrency,
        batch_format="numpy",
    )
