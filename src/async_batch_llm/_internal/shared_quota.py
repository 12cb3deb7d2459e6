"""Admission and cooldown when a :class:`QuotaBackend` other than the default holds the state.

:class:`SharedAdmissionGate` keeps everything the in-process gate keeps (the FIFO line of this
process's waiters, the limits in force, learned limits, statistics) except the bucket levels:
those live in the backend. The head waiter asks the backend to take its reservation
(:meth:`QuotaBackend.acquire`, one round trip), and sleeps for the wait the backend answers
when it does not fit (or until a local settlement wakes it). There is no synchronous fast path:
:meth:`SharedAdmissionGate.try_reserve_tokens` always defers to :meth:`reserve`.

A reservation settles through the usual :class:`Reservation` code: the buckets it took from are
per-reservation recorders here, collecting the refund or debt, which one backend call applies
(scheduled on the loop, awaited by :meth:`SharedAdmissionGate.drain`).

:class:`SharedCooldown` is the :class:`CooldownCoordinator` whose cooldown lives in the backend:
the first rate limit anywhere starts it, the backoff counts rate limits in a row across every
process, and every process's admissions wait it out (the backend answers ``acquire`` with the
cooldown's remaining time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from async_batch_llm._internal.admission import (
    DEFAULT_BURST_SECONDS,
    DEFAULT_MARGIN,
    AdmissionGate,
    GateStatistics,
    Limits,
    Reservation,
    _Dimension,
)
from async_batch_llm._internal.buckets import TokenBucket
from async_batch_llm._internal.clock import Clock
from async_batch_llm._internal.cooldown import CooldownCoordinator, Emit
from async_batch_llm._internal.quota_backend import BucketSpec, QuotaBackend, is_shared_backend
from async_batch_llm._internal.quota_types import TokenEstimate

__all__ = ["SharedAdmissionGate", "SharedCooldown", "make_cooldown"]

logger = logging.getLogger("async_batch_llm.parallel")


class _Settlement:
    """The changes one reservation's settlement makes, sent to the backend in one call."""

    __slots__ = ("deltas", "gate", "reservation_id", "scheduled")

    def __init__(self, gate: SharedAdmissionGate, reservation_id: str) -> None:
        self.gate = gate
        self.reservation_id = reservation_id
        self.deltas: dict[str, tuple[_Dimension, float]] = {}
        self.scheduled = False

    def add(self, dimension: str, entry: _Dimension, delta: float) -> None:
        previous = self.deltas.get(dimension)
        self.deltas[dimension] = (entry, delta + (previous[1] if previous else 0.0))
        if not self.scheduled:
            # One call for every dimension: the task runs after reconcile() has recorded them
            # all, and is tracked from now on (drain() waits for it).
            self.scheduled = True
            self.gate._spawn(self.gate._send(self))


class _Recorder:
    """Stands in for a bucket in a reservation's ``taken``: records take/give_back."""

    __slots__ = ("dimension", "entry", "settlement")

    def __init__(self, dimension: str, entry: _Dimension, settlement: _Settlement) -> None:
        self.dimension = dimension
        self.entry = entry
        self.settlement = settlement

    def take(self, amount: float, now: float) -> float:
        self.settlement.add(self.dimension, self.entry, amount)
        return 0.0

    def give_back(self, amount: float, now: float) -> float:
        self.settlement.add(self.dimension, self.entry, -amount)
        return 0.0

    def settle(self, delta: float, now: float) -> None:
        self.settlement.add(self.dimension, self.entry, delta)


class SharedAdmissionGate(AdmissionGate):
    """An :class:`AdmissionGate` whose buckets live in ``backend``.

    Args:
        scope, limits, clock, burst_seconds, margin, wall_clock: as :class:`AdmissionGate`.
        backend: where the buckets (and the cooldown admissions respect) live.
    """

    def __init__(
        self,
        scope: str,
        limits: Limits,
        clock: Clock,
        backend: QuotaBackend,
        *,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        margin: float = DEFAULT_MARGIN,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            scope, limits, clock, burst_seconds=burst_seconds, margin=margin, wall_clock=wall_clock
        )
        self.backend = backend
        self._sending: set[asyncio.Task[Any]] = set()

    def _specs(self, amounts: dict[str, float]) -> list[BucketSpec]:
        return [
            BucketSpec(
                dimension,
                amounts[dimension],
                entry.bucket.rate,
                entry.bucket.capacity,
                entry.bucket.reserve,
            )
            for dimension, entry in self._entries
        ]

    def try_reserve_tokens(
        self, input_tokens: int, output_tokens: int, kind: type[Reservation] = Reservation
    ) -> Reservation | None:
        """Never grants synchronously (the backend is asked in :meth:`reserve`); an estimate
        too large for a limit still fails here."""
        self._dims(self._clock.time())
        self._amounts(input_tokens, output_tokens)
        return None

    async def reserve(
        self, estimate: TokenEstimate, kind: type[Reservation] = Reservation
    ) -> Reservation:
        """As :meth:`AdmissionGate.reserve`, the buckets taken from in the backend."""
        input_tokens, output_tokens = estimate.input_tokens, estimate.output_tokens
        self._dims(self._clock.time())
        self._amounts(input_tokens, output_tokens)  # too large for a limit: fail before waiting
        requested_at = self._time()
        reservation_id = uuid.uuid4().hex
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(ticket)
        try:
            while True:
                if self._waiters[0] is not ticket:
                    await ticket
                    continue
                amounts = self._amounts(input_tokens, output_tokens)
                try:
                    delay = await self.backend.acquire(
                        self.scope, reservation_id, self._specs(amounts)
                    )
                except asyncio.CancelledError:
                    # The script may have run: give back whatever it took (a no-op otherwise).
                    self._send_refund(reservation_id, amounts)
                    raise
                if delay <= 0.0:
                    break
                await self._sleep_or_wake(delay)
        finally:
            was_head = self._waiters[0] is ticket
            self._waiters.remove(ticket)
            if was_head and self._waiters and not self._waiters[0].done():
                self._waiters[0].set_result(None)
        now = self._time()
        settlement = _Settlement(self, reservation_id)
        # The reservation settles through these recorders (duck-typed buckets).
        taken = tuple(
            (
                dimension,
                _Dimension(
                    entry.limit,
                    entry.source,
                    cast(TokenBucket, _Recorder(dimension, entry, settlement)),
                ),
            )
            for dimension, entry in self._entries
        )
        self._reservations += 1
        waited = now - requested_at
        self._total_wait += waited
        self._count_usage(now, amounts)
        return kind(self, amounts, taken, now, waited)

    def statistics(self) -> GateStatistics:
        """As :meth:`AdmissionGate.statistics`, without ``levels``: the levels live in the
        backend (usage, waits and reservations are this process's)."""
        return dataclasses.replace(super().statistics(), levels={})

    # -- settlements -------------------------------------------------------------------------

    async def _send(self, settlement: _Settlement) -> None:
        specs = [
            BucketSpec(dim, delta, entry.bucket.rate, entry.bucket.capacity)
            for dim, (entry, delta) in settlement.deltas.items()
            if delta
        ]
        await self.backend.settle(self.scope, settlement.reservation_id, specs)

    def _send_refund(self, reservation_id: str, amounts: dict[str, float]) -> None:
        specs = [
            BucketSpec(dim, -amounts[dim], entry.bucket.rate, entry.bucket.capacity)
            for dim, entry in self._entries
        ]
        self._spawn(self.backend.settle(self.scope, reservation_id, specs))

    def _spawn(self, call: Any) -> None:
        task = asyncio.ensure_future(call)
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "quota settlement for scope %r not applied: %r", self.scope, task.exception()
            )
        self._notify()

    async def drain(self) -> None:
        """Wait for the settlements sent so far to be applied (or to fail)."""
        while self._sending:
            await asyncio.wait(set(self._sending))


class SharedCooldown(CooldownCoordinator):
    """A :class:`CooldownCoordinator` whose cooldown and backoff count live in ``backend``."""

    def __init__(self, strategy: Any, clock: Clock, emit: Emit, backend: QuotaBackend) -> None:
        super().__init__(strategy, clock, emit)
        self.backend = backend
        self._resetting: asyncio.Task[None] | None = None

    async def _begin(
        self, worker_id: int, retry_after: float | None
    ) -> tuple[float, Exception | None]:
        turn = await self.backend.begin_cooldown(retry_after or 0.0)
        self.consecutive = turn.consecutive
        if not turn.leader:
            return turn.remaining, None
        started = self._clock.time()
        duration, error = await super()._begin(worker_id, retry_after)
        spent = self._clock.time() - started
        remaining = await self.backend.extend_cooldown(max(0.0, duration - spent))
        return remaining, error

    def reset_consecutive(self) -> None:
        super().reset_consecutive()
        if self._resetting is None or self._resetting.done():
            self._resetting = asyncio.ensure_future(self._reset())

    async def _reset(self) -> None:
        try:
            await self.backend.reset_consecutive()
        except Exception as exc:  # the next cooldown's backoff may start higher; log only
            logger.warning("could not reset the shared rate-limit backoff: %r", exc)

    async def drain(self) -> None:
        """Wait for a pending backoff reset."""
        if self._resetting is not None:
            await asyncio.wait({self._resetting})


def make_cooldown(backend: object, strategy: Any, clock: Clock, emit: Emit) -> CooldownCoordinator:
    """The cooldown coordinator for ``backend``: in process unless the backend is shared."""
    if is_shared_backend(backend):
        return SharedCooldown(strategy, clock, emit, cast(QuotaBackend, backend))
    return CooldownCoordinator(strategy, clock, emit)
