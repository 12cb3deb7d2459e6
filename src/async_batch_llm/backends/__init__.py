"""Where quota state lives: in the process (the default) or shared by several processes.

A :class:`QuotaBackend` keeps the request and token buckets of every quota scope and the shared
rate-limit cooldown. The default, :class:`InMemoryQuotaBackend`, keeps them inside each
processor: no I/O, the processor's fast path.
:class:`~async_batch_llm.backends.redis.RedisQuotaBackend` (extra ``redis``) keeps them in
Redis, so every process and host that points at the same Redis and namespace shares one quota
and one cooldown.

Set one with ``ProcessorConfig(quota_backend=...)``. See ``docs/scale-out.md``.
"""

from __future__ import annotations

from async_batch_llm._internal.quota_backend import (
    BucketSpec,
    CooldownTurn,
    InMemoryQuotaBackend,
    QuotaBackend,
    QuotaBackendError,
)
from async_batch_llm.backends.redis import RedisQuotaBackend

__all__ = [
    "BucketSpec",
    "CooldownTurn",
    "InMemoryQuotaBackend",
    "QuotaBackend",
    "QuotaBackendError",
    "RedisQuotaBackend",
]
