"""The :class:`QuotaBackend` protocol and the in-process :class:`InMemoryQuotaBackend`.

A backend keeps the state that several processes may share: the request/token buckets of every
quota scope and the rate-limit cooldown. The processor's admission gate keeps its FIFO line of
waiters, its estimates and its statistics in the process either way; with a non-default backend
it asks the backend, once per attempt, to take every bucket's amount at once
(:meth:`QuotaBackend.acquire`), and settles the reservation there afterwards
(:meth:`QuotaBackend.settle`).

The default backend is special-cased: with ``ProcessorConfig.quota_backend`` unset or an
:class:`InMemoryQuotaBackend`, each gate keeps its buckets in its own objects exactly as before
(no I/O, no extra call per attempt). The methods of :class:`InMemoryQuotaBackend` implement the
protocol over in-process buckets all the same (the reference semantics every backend follows,
and what the conformance tests run against).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from async_batch_llm._internal.buckets import TokenBucket

__all__ = [
    "BucketSpec",
    "CooldownTurn",
    "InMemoryQuotaBackend",
    "QuotaBackend",
    "QuotaBackendError",
    "is_shared_backend",
]


class QuotaBackendError(RuntimeError):
    """A quota backend cannot be reached or refused us (unreachable, wrong password, ...).

    The message names the backend's address without any password.
    """


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One bucket of a scope, as a backend operation needs it.

    Attributes:
        dimension: ``"requests"``, ``"tokens"``, ``"input_tokens"`` or ``"output_tokens"``.
        amount: units to take (:meth:`QuotaBackend.acquire`) or the settlement's change
            (:meth:`QuotaBackend.settle`: positive is a debt, negative a refund).
        rate: refill in units per second (the per-minute limit / 60).
        capacity: the most the bucket holds (its burst).
        reserve: units an admission must leave in the bucket (see ``TokenBucket``).
    """

    dimension: str
    amount: float
    rate: float
    capacity: float
    reserve: float = 0.0


@dataclass(frozen=True, slots=True)
class CooldownTurn:
    """What :meth:`QuotaBackend.begin_cooldown` decided.

    Attributes:
        leader: ``True`` when this caller started a new cooldown (it decides its length with
            :meth:`QuotaBackend.extend_cooldown`); ``False`` when one was already running.
        consecutive: rate limits in a row so far, the new one included (shared by every
            process), for the backoff.
        remaining: seconds until the cooldown ends, as it stands now.
    """

    leader: bool
    consecutive: int
    remaining: float


@runtime_checkable
class QuotaBackend(Protocol):
    """Where the quota buckets of every scope and the shared cooldown live.

    Every method is atomic with respect to every other caller of the same backend (several
    processes may share one). Times are the backend's own clock.
    """

    async def ping(self) -> None:
        """Check that the backend answers; raise :class:`QuotaBackendError` naming it if not."""
        ...

    async def acquire(
        self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]
    ) -> float:
        """Take every bucket's ``amount`` if all admit it now and no cooldown runs.

        Returns ``0.0`` when taken (the reservation ``reservation_id`` is then held until
        settled or expired), else the seconds to wait before trying again (nothing taken).
        Calling it again with a reservation id already granted takes nothing and returns 0.0.
        """
        ...

    async def settle(self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]) -> bool:
        """Apply a held reservation's changes once (positive ``amount``: debt; negative: refund).

        Returns ``False`` (and changes nothing) when the reservation is unknown: already
        settled, or expired.
        """
        ...

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        """A rate limit was hit: start a cooldown of at least ``floor`` seconds, or join one."""
        ...

    async def extend_cooldown(self, seconds: float) -> float:
        """Make the running cooldown last at least ``seconds`` from now; return what remains."""
        ...

    async def reset_consecutive(self) -> None:
        """A call succeeded: the next rate limit starts the backoff sequence again."""
        ...

    async def aclose(self) -> None:
        """Release this event loop's connections (the backend stays usable: it reconnects)."""
        ...


def is_shared_backend(backend: object) -> bool:
    """Whether ``backend`` moves quota state out of the processor (not the in-memory default)."""
    return backend is not None and not isinstance(backend, InMemoryQuotaBackend)


class InMemoryQuotaBackend:
    """The default: quota buckets and cooldown kept in this process.

    As ``ProcessorConfig.quota_backend`` (or unset) each processor keeps its own buckets in its
    gates, with no I/O per attempt; nothing is shared between processes. The protocol methods
    work over in-process buckets too.

    Args:
        clock: monotonic seconds (default :func:`time.monotonic`).
        reservation_ttl: seconds a granted reservation may stay unsettled before it is
            forgotten (finite, > 0).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        reservation_ttl: float = 900.0,
    ) -> None:
        if not (math.isfinite(reservation_ttl) and reservation_ttl > 0):
            raise ValueError(
                f"reservation_ttl must be a finite number > 0, got {reservation_ttl!r}"
            )
        self._clock = clock
        self._ttl = float(reservation_ttl)
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._held: dict[tuple[str, str], float] = {}
        self._cooldown_until = -math.inf
        self._consecutive = 0

    def _bucket(self, scope: str, spec: BucketSpec, now: float) -> TokenBucket:
        key = (scope, spec.dimension)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(
                spec.rate, spec.capacity, now=now, reserve=spec.reserve
            )
        elif (bucket.rate, bucket.capacity, bucket.reserve) != (
            spec.rate,
            spec.capacity,
            spec.reserve,
        ):
            bucket.resize(spec.rate, spec.capacity, now, reserve=spec.reserve)
        return bucket

    def _expire(self, now: float) -> None:
        for key in [key for key, until in self._held.items() if until <= now]:
            del self._held[key]

    async def ping(self) -> None:
        return None

    async def acquire(
        self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]
    ) -> float:
        now = self._clock()
        self._expire(now)
        if (scope, reservation_id) in self._held:
            return 0.0
        if self._cooldown_until > now:
            return self._cooldown_until - now
        wait = 0.0
        pairs = [(self._bucket(scope, spec, now), spec.amount) for spec in buckets]
        for bucket, amount in pairs:
            wait = max(wait, bucket.time_until_admissible(amount, now))
        if wait > 0.0:
            return wait
        for bucket, amount in pairs:
            bucket.take(amount, now)
        self._held[scope, reservation_id] = now + self._ttl
        return 0.0

    async def settle(self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]) -> bool:
        now = self._clock()
        self._expire(now)
        if self._held.pop((scope, reservation_id), None) is None:
            return False
        for spec in buckets:
            bucket = self._bucket(scope, spec, now)
            if spec.amount > 0:
                bucket.take(spec.amount, now)
            elif spec.amount < 0:
                bucket.give_back(-spec.amount, now)
        return True

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        now = self._clock()
        if self._cooldown_until > now:
            return CooldownTurn(False, self._consecutive, self._cooldown_until - now)
        self._consecutive += 1
        self._cooldown_until = now + max(0.0, floor)
        return CooldownTurn(True, self._consecutive, max(0.0, floor))

    async def extend_cooldown(self, seconds: float) -> float:
        now = self._clock()
        self._cooldown_until = max(self._cooldown_until, now + max(0.0, seconds))
        return max(0.0, self._cooldown_until - now)

    async def reset_consecutive(self) -> None:
        self._consecutive = 0

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"InMemoryQuotaBackend(buckets={len(self._buckets)}, held={len(self._held)})"
