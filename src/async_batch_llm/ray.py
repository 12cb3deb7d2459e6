"""Ray Data: run the processor inside ``map_batches`` workers (extra ``ray``).

:func:`process_dataset` maps a :class:`ray.data.Dataset` of prompts through a processor in each
of ``concurrency`` Ray actors and returns the dataset with result columns. Every worker shares
one quota and one rate-limit cooldown: through the named Ray actor behind
:class:`RayQuotaBackend` (the default), or through Redis when the config says
``quota_backend=RedisQuotaBackend(...)``. A row that fails gets ``success=False`` and its error;
it never fails the job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.quota_backend import (
    BucketSpec,
    CooldownTurn,
    QuotaBackendError,
    is_shared_backend,
)
from async_batch_llm._internal.ray_dataset import (
    RESULT_COLUMNS,
    WORKER_NUM_CPUS,
    BatchWorker,
    QuotaActor,
    missing_columns,
)
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm.core.config import ProcessorConfig

if TYPE_CHECKING:
    import ray.data

__all__ = ["RESULT_COLUMNS", "RayQuotaBackend", "process_dataset"]

DEFAULT_ACTOR_NAME = "async-batch-llm-quota"


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "async_batch_llm.ray needs Ray Data: pip install 'async-batch-llm[ray]'"
        ) from exc
    return ray


class RayQuotaBackend:
    """A :class:`~async_batch_llm.backends.QuotaBackend` kept in a named Ray actor.

    Every process of a Ray job (the driver and each ``map_batches`` worker) that uses a
    ``RayQuotaBackend`` with the same ``name`` shares its buckets and cooldown: one actor holds
    them and answers one call at a time, on its own clock. :func:`process_dataset` makes the
    actor from the driver, so it lives as long as the driver's job. Pickling sends only the
    name.

    Args:
        name: the Ray actor's name (in the job's Ray namespace). Use one name per API key.

    Raises:
        ValueError: an empty name.
    """

    def __init__(self, name: str = DEFAULT_ACTOR_NAME) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self._handle: Any = None

    def __reduce__(self) -> tuple[type[RayQuotaBackend], tuple[str]]:
        return (RayQuotaBackend, (self.name,))

    def actor(self) -> Any:
        """The named actor's handle, making the actor if it does not exist yet.

        :func:`process_dataset` calls it from the driver, which then owns the actor. The
        quota operations never make it: they only look it up, so a worker whose actor died
        fails its rows with :class:`~async_batch_llm.backends.QuotaBackendError` instead of
        starting a fresh, full quota of its own.
        """
        if self._handle is None:
            remote: Any = _ray().remote(QuotaActor)
            self._handle = remote.options(
                name=self.name, get_if_exists=True, num_cpus=0, max_concurrency=1
            ).remote()
        return self._handle

    def _lookup(self) -> Any:
        if self._handle is None:
            try:
                self._handle = _ray().get_actor(self.name)
            except ValueError as exc:
                raise QuotaBackendError(
                    f"no Ray quota actor named {self.name!r} in this Ray namespace (it is made "
                    "by process_dataset, or by RayQuotaBackend.actor(), from the driver)"
                ) from exc
        return self._handle

    async def _call(self, method: str, *args: Any) -> Any:
        ray = _ray()
        try:
            return await getattr(self._lookup(), method).remote(*args)
        except ray.exceptions.RayError as exc:
            self._handle = None
            raise QuotaBackendError(
                f"the Ray quota actor {self.name!r} did not answer {method}: {exc}"
            ) from exc

    async def ping(self) -> None:
        await self._call("ping")

    async def acquire(
        self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]
    ) -> float:
        return float(await self._call("acquire", scope, reservation_id, list(buckets)))

    async def settle(self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]) -> bool:
        return bool(await self._call("settle", scope, reservation_id, list(buckets)))

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        turn: CooldownTurn = await self._call("begin_cooldown", floor)
        return turn

    async def extend_cooldown(self, seconds: float) -> float:
        return float(await self._call("extend_cooldown", seconds))

    async def reset_consecutive(self) -> None:
        await self._call("reset_consecutive")

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"RayQuotaBackend({self.name!r})"


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

    Each worker (a Ray actor) calls ``strategy_factory()`` once and processes each batch of
    rows with a processor built from ``config``. Unless ``config.quota_backend`` is already a
    shared backend (a :class:`RayQuotaBackend`, or a
    :class:`~async_batch_llm.backends.redis.RedisQuotaBackend`), every worker shares one quota
    and cooldown through ``RayQuotaBackend()``, made now by the driver. Declare the API key's
    whole limits in ``config``: the workers share them, they do not each get them.

    The result keeps every input column and adds :data:`RESULT_COLUMNS` (replacing columns of
    those names): ``success`` (bool), ``output`` (text; structured outputs as JSON),
    ``error``, ``error_category`` and ``input_tokens``/``output_tokens``/``total_tokens``. A
    failed row never fails the job. Lazy, like any Ray Data transform: nothing is called until
    the result is consumed.

    Raises:
        ValueError: ``dataset`` lacks ``id_column`` or ``prompt_column`` (naming it and the
            columns it has; when the schema is only known by running upstream transforms, the
            job fails with this error instead), or ``concurrency`` is not an int >= 1.
        TypeError: ``strategy_factory`` is not callable or ``config`` not a ProcessorConfig.
    """
    if not callable(strategy_factory):
        raise TypeError(f"strategy_factory must be callable, got {type(strategy_factory).__name__}")
    if config is not None and not isinstance(config, ProcessorConfig):
        raise TypeError(f"config must be a ProcessorConfig or None, got {type(config).__name__}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    for name, value in (("prompt_column", prompt_column), ("id_column", id_column)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    schema = dataset.schema(fetch_if_missing=False)
    if schema is not None:
        problem = missing_columns(list(schema.names), id_column, prompt_column)
        if problem is not None:
            raise ValueError(problem)

    ray = _ray()
    config = config if config is not None else ProcessorConfig()
    backend = config.quota_backend
    if not is_shared_backend(backend):
        backend = RayQuotaBackend()
        config = dataclasses.replace(config, quota_backend=backend)
    if isinstance(backend, RayQuotaBackend):
        backend.actor()  # made by the driver: it lives as long as the driver's job
    return dataset.map_batches(
        BatchWorker,
        fn_constructor_kwargs={
            "strategy_factory": strategy_factory,
            "config": config,
            "prompt_column": prompt_column,
            "id_column": id_column,
        },
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=WORKER_NUM_CPUS,
        batch_format="pyarrow",
    )
