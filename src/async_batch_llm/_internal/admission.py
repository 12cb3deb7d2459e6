"""The admission gate: one per quota scope, reserving requests and tokens before each attempt.

Every physical attempt first calls :meth:`AdmissionGate.reserve` with its
:class:`TokenEstimate`. The gate takes one request and the estimated tokens from every bucket in
force (requests, total, input and output tokens per minute) in one step, serving callers in
strict FIFO order. When the attempt ends, the processor calls :meth:`Reservation.reconcile` with
the usage the provider reported (refund or debt), or :meth:`Reservation.cancel` when the call
never started (full refund).

Pacing, not bursts: a per-minute limit ``L`` refills continuously at ``L / 60`` per second, and
a bucket holds at most ``burst_seconds`` worth (at least one request). The margin for
estimation error is a *reserve*: every admission leaves ``margin`` of a token bucket's capacity
in it, so an estimate that proves short (its call in flight, its debt not yet known) finds the
provider's bucket still holding that much. Token buckets refill at the full limit: the margin
costs one reserve's worth of burst, once, never a share of the rate. See
:meth:`TokenBucket.admission_need` for reservations larger than the burst.

Limits come from the scope's declaration or, for an undeclared dimension, from the provider's
rate-limit headers (:meth:`AdmissionGate.observe_headers`). Declared limits are never changed by
headers, but a remaining/reset snapshot stricter than the local bucket lowers its level either
way: the provider may count traffic this process cannot see.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from async_batch_llm._internal.buckets import TokenBucket, snapshot_level
from async_batch_llm._internal.clock import Clock, LoopClock
from async_batch_llm._internal.deadline import loop_time_function
from async_batch_llm._internal.quota_backend import QuotaBackend, is_shared_backend
from async_batch_llm._internal.quota_headers import parse_rate_limit_headers
from async_batch_llm._internal.quota_types import (
    DIMENSIONS,
    EstimateTooLargeError,
    QuotaLimits,
    TokenEstimate,
)

if TYPE_CHECKING:
    from async_batch_llm.core.config import ProcessorConfig

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_MARGIN",
    "AdmissionGate",
    "GateRegistry",
    "GateStatistics",
    "Reservation",
    "scope_limits",
]

DEFAULT_BURST_SECONDS = 1.0
"""Seconds of refill a bucket holds when ``quota_burst_seconds`` is not set."""

DEFAULT_MARGIN = 0.05
"""Fraction of each token bucket's capacity an admission leaves in it, for estimation error."""

_WINDOW = 60.0
_TOKEN_DIMENSIONS = ("tokens", "input_tokens", "output_tokens")

LimitSource = Literal["declared", "learned"]
Limits = QuotaLimits | Mapping[str, float | None]
"""Per-minute limits keyed by dimension, or a :class:`QuotaLimits`."""


def _normalize_limits(limits: Limits) -> dict[str, float]:
    items = limits.as_dimensions() if isinstance(limits, QuotaLimits) else dict(limits)
    result: dict[str, float] = {}
    for dimension, value in items.items():
        if dimension not in DIMENSIONS:
            raise ValueError(f"unknown quota dimension {dimension!r}; known: {DIMENSIONS}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"the {dimension} limit must be a number or None, got "
                f"{type(value).__name__} {value!r}"
            )
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"the {dimension} limit must be a finite number > 0, got {value!r}")
        result[dimension] = float(value)
    return result


def scope_limits(
    scope: str, default: Limits, quotas: Mapping[str, QuotaLimits] | None = None
) -> dict[str, float]:
    """The declared per-minute limits of ``scope``, keyed by dimension.

    A scope listed in ``quotas`` takes its :class:`QuotaLimits` as a whole (its ``None`` fields
    are undeclared, hence learnable from headers); any other scope takes ``default`` (the
    ``max_*_per_minute`` fields of the config). Each scope gets its own buckets: the default
    limits are not shared between scopes.
    """
    if quotas is not None and scope in quotas:
        return _normalize_limits(quotas[scope])
    return _normalize_limits(default)


def _check_burst_and_margin(burst_seconds: float, margin: float) -> None:
    if not (math.isfinite(burst_seconds) and burst_seconds > 0):
        raise ValueError(f"burst_seconds must be a finite number > 0, got {burst_seconds!r}")
    if not (math.isfinite(margin) and 0 <= margin < 1):
        raise ValueError(f"margin must be >= 0 and < 1, got {margin!r}")


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A snapshot of one gate.

    Attributes:
        scope: the quota scope.
        limits: per-minute limits in force, by dimension.
        limit_sources: ``"declared"`` or ``"learned"`` for each limit in force.
        levels: units available now in each bucket (negative while in debt).
        capacities: the most each bucket holds (its burst).
        waiting: reservations waiting now.
        reservations: reservations granted so far.
        total_wait_seconds: time granted reservations spent waiting, summed.
        used_last_minute: units used in the last 60 s by dimension (every dimension, enforced
            or not): estimates at grant time, corrected by reconciliations and cancellations.
        window_seconds: the span ``used_last_minute`` covers: 60 s, or less early in a run
            (the time since the gate's buckets were made, plus ``burst_seconds``: a new bucket
            starts full, as if it had refilled that long). ``used * 60 / window_seconds`` is
            the per-minute rate to compare with ``limits``. Usage is counted per clock second:
            a second's usage leaves the count once that second began 60 s ago.
    """

    scope: str
    limits: Mapping[str, float]
    limit_sources: Mapping[str, LimitSource]
    levels: Mapping[str, float]
    capacities: Mapping[str, float]
    waiting: int
    reservations: int
    total_wait_seconds: float
    used_last_minute: Mapping[str, float]
    window_seconds: float = _WINDOW

    def per_minute(self, dimension: str) -> float:
        """Units of ``dimension`` used per minute over the last ``window_seconds``."""
        if self.window_seconds <= 0:
            return 0.0
        return self.used_last_minute.get(dimension, 0.0) * _WINDOW / self.window_seconds


class _Dimension:
    __slots__ = ("bucket", "limit", "source")

    def __init__(self, limit: float, source: LimitSource, bucket: TokenBucket) -> None:
        self.limit = limit
        self.source: LimitSource = source
        self.bucket = bucket


def _count(value: object) -> int | None:
    """``value`` if it is a token count (an ``int`` >= 0, not a ``bool``), else ``None``."""
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value if value >= 0 else None
    return None


def _usage_amounts(usage: Mapping[str, int] | None) -> dict[str, float]:
    """The token figures a usage report states (``requests`` is never reconciled)."""
    if not usage:
        return {}
    get = usage.get
    input_tokens = _count(get("input_tokens"))
    output_tokens = _count(get("output_tokens"))
    total = _count(get("total_tokens"))
    amounts: dict[str, float] = {}
    if input_tokens is not None:
        amounts["input_tokens"] = input_tokens
    if output_tokens is not None:
        amounts["output_tokens"] = output_tokens
    if total is not None:
        amounts["tokens"] = total
    elif input_tokens is not None and output_tokens is not None:
        amounts["tokens"] = input_tokens + output_tokens
    return amounts


class Reservation:
    """One admitted attempt's hold on its gate, settled exactly once.

    Attributes:
        gate: the gate the reservation was taken from.
        scope: the gate's quota scope.
        estimate: the estimate that was reserved.
        granted_at: the clock time of the grant.
        waited: seconds the reservation waited before the grant.
    """

    __slots__ = ("_amounts", "_settled", "_taken", "gate", "granted_at", "waited")

    def __init__(
        self,
        gate: AdmissionGate,
        amounts: dict[str, float],
        taken: tuple[tuple[str, _Dimension], ...],
        granted_at: float,
        waited: float,
    ) -> None:
        self.gate = gate
        self._amounts = amounts
        self._taken = taken
        self._settled = False
        self.granted_at = granted_at
        self.waited = waited

    @property
    def scope(self) -> str:
        return self.gate.scope

    @property
    def estimate(self) -> TokenEstimate:
        """The estimate that was reserved."""
        amounts = self._amounts
        return TokenEstimate(int(amounts["input_tokens"]), int(amounts["output_tokens"]))

    @property
    def settled(self) -> bool:
        """Whether :meth:`reconcile` or :meth:`cancel` has run."""
        return self._settled

    def reconcile(self, usage: Mapping[str, int] | None) -> None:
        """Replace the estimate with the usage the provider reported.

        For each token figure the usage states (``input_tokens``, ``output_tokens``,
        ``total_tokens``, the total falling back to input plus output), a lower figure refunds
        the difference and a higher one charges it as a debt; figures the usage lacks (or
        ``None``/empty usage) keep the estimate. The request itself is never refunded. Only
        buckets this reservation took from are adjusted. A second call, or a call after
        :meth:`cancel`, does nothing.
        """
        if self._settled:
            return
        self._settled = True
        if not usage:
            return
        amounts = self._amounts
        get = usage.get
        input_tokens, output_tokens, total = (
            get("input_tokens"),
            get("output_tokens"),
            get("total_tokens"),
        )
        if (  # the common shape, checked inline
            type(input_tokens) is int
            and type(output_tokens) is int
            and type(total) is int
            and input_tokens >= 0
            and output_tokens >= 0
            and total >= 0
        ):
            gate = self.gate
            now = gate._time()
            delta_total = total - amounts["tokens"]
            delta_input = input_tokens - amounts["input_tokens"]
            delta_output = output_tokens - amounts["output_tokens"]
            if now >= gate._second + 1.0:
                gate._new_second(now)
            used = gate._used
            used["tokens"] += delta_total
            used["input_tokens"] += delta_input
            used["output_tokens"] += delta_output
            for dimension, entry in self._taken:
                if dimension == "tokens":
                    delta = delta_total
                elif dimension == "input_tokens":
                    delta = delta_input
                elif dimension == "output_tokens":
                    delta = delta_output
                else:
                    continue
                if delta:
                    entry.bucket.settle(delta, now)
            if gate._wake is not None:
                gate._notify()
            return
        deltas = {dim: value - amounts[dim] for dim, value in _usage_amounts(usage).items()}
        self.gate._adjust(deltas, self._taken)

    def cancel(self) -> None:
        """Give everything back (the request included): the call never started.

        A second call, or a call after :meth:`reconcile`, does nothing.
        """
        if self._settled:
            return
        self._settled = True
        self.gate._adjust({dim: -amount for dim, amount in self._amounts.items()}, self._taken)

    def __repr__(self) -> str:
        state = "settled" if self._settled else "open"
        return (
            f"Reservation(scope={self.scope!r}, estimate={self.estimate!r}, "
            f"waited={self.waited:.6g}, {state})"
        )


class AdmissionGate:
    """FIFO admission of attempts against the per-minute limits of one quota scope.

    Args:
        scope: the quota scope (for messages and statistics).
        limits: the declared per-minute limits; a missing/``None`` dimension is undeclared
            (not enforced until headers reveal it).
        clock: the time source; waits sleep on it for exactly the computed time.
        burst_seconds: seconds of refill a bucket holds (finite, > 0); a request bucket holds
            at least one request.
        margin: fraction of every token bucket's capacity an admission leaves in it, for
            estimation error (0 <= margin < 1); requests are counted exactly, without reserve.
            Every bucket refills at its full limit.
        wall_clock: Unix time, for RFC 3339 reset headers.

    Raises:
        TypeError / ValueError: if a limit, ``burst_seconds`` or ``margin`` is invalid.
    """

    def __init__(
        self,
        scope: str,
        limits: Limits,
        clock: Clock,
        *,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        margin: float = DEFAULT_MARGIN,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        _check_burst_and_margin(burst_seconds, margin)
        self.scope = scope
        self._clock = clock
        self._burst = float(burst_seconds)
        self._margin = float(margin)
        self._wall_clock = wall_clock
        self._declared = _normalize_limits(limits)
        # Buckets are made on first use: a LoopClock reads time only inside a running loop.
        self._dimensions: dict[str, _Dimension] | None = None
        self._created_at = 0.0
        self._time: Callable[[], float] = clock.time
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._reservations = 0
        self._total_wait = 0.0
        # The buckets in force as (dimension, entry) pairs, made with the buckets; a new
        # tuple whenever a bucket is added (a reservation keeps the tuple it took from).
        self._entries: tuple[tuple[str, _Dimension], ...] = ()
        self.token_limited = any(dimension in self._declared for dimension in _TOKEN_DIMENSIONS)
        """Whether a token limit (total, input or output; declared or learned) is in force."""
        # For used_last_minute: the units granted so far, corrected by settlements, by
        # dimension, and for each clock second of the last minute that saw any, those totals
        # as they stood when it began, oldest first. One entry per second, not per call.
        self._used = dict.fromkeys(DIMENSIONS, 0.0)
        self._second = -math.inf
        self._history: deque[tuple[float, dict[str, float]]] = deque()

    # -- buckets -----------------------------------------------------------------------------

    def _shape(self, dimension: str, limit: float) -> tuple[float, float, float]:
        """Refill rate, capacity and reserve of ``dimension``'s bucket for ``limit``."""
        rate = limit / _WINDOW
        if dimension == "requests":
            return rate, max(1.0, rate * self._burst), 0.0
        capacity = rate * self._burst
        return rate, capacity, capacity * self._margin

    def _dims(self, now: float) -> dict[str, _Dimension]:
        if self._dimensions is None:
            clock = self._clock
            # LoopClock.time() is two Python calls deep; read the loop's clock directly (the
            # buckets, hence this, are made inside the running loop).
            self._time = (
                loop_time_function(asyncio.get_running_loop())
                if type(clock) is LoopClock
                else clock.time
            )
            self._dimensions = {}
            self._created_at = now
            for dimension, limit in self._declared.items():
                rate, capacity, reserve = self._shape(dimension, limit)
                bucket = TokenBucket(rate, capacity, now=now, reserve=reserve)
                self._dimensions[dimension] = _Dimension(limit, "declared", bucket)
            self._buckets_changed()
        return self._dimensions

    def _buckets_changed(self) -> None:
        dims = self._dimensions or {}
        self._entries = tuple(dims.items())
        self.token_limited = any(dimension in dims for dimension in _TOKEN_DIMENSIONS)

    def limit(self, dimension: str) -> float | None:
        """The per-minute limit in force for ``dimension`` (declared or learned), or ``None``."""
        if self._dimensions is None:
            return self._declared.get(dimension)
        entry = self._dimensions.get(dimension)
        return None if entry is None else entry.limit

    def _amounts(self, input_tokens: int, output_tokens: int) -> dict[str, float]:
        amounts = {
            "requests": 1.0,
            "tokens": float(input_tokens + output_tokens),
            "input_tokens": float(input_tokens),
            "output_tokens": float(output_tokens),
        }
        if self.token_limited:
            for dimension, entry in self._entries:
                if dimension != "requests" and amounts[dimension] > entry.limit:
                    raise EstimateTooLargeError(
                        self.scope, dimension, amounts[dimension], entry.limit
                    )
        return amounts

    def _delay(self, amounts: Mapping[str, float], now: float) -> float:
        delay = 0.0
        for dimension, entry in self._entries:
            wait = entry.bucket.time_until_admissible(amounts[dimension], now)
            if wait > delay:
                delay = wait
        return delay

    # -- reserve -----------------------------------------------------------------------------

    async def reserve(
        self, estimate: TokenEstimate, kind: type[Reservation] = Reservation
    ) -> Reservation:
        """Wait for one request plus ``estimate``'s tokens in every bucket in force, take them.

        Callers are served strictly in arrival order: a caller never overtakes an earlier one,
        even if its smaller reservation would fit sooner. Only the caller at the head waits on
        the clock, for exactly the time its reservation needs; a refund or a changed limit
        wakes it early to recompute. Cancelling a waiting caller removes it and lets the next
        one proceed; nothing is taken.

        Raises:
            EstimateTooLargeError: at once (or as soon as a learned limit reveals it while
                waiting) when an estimated token figure exceeds its whole per-minute limit.
        """
        input_tokens, output_tokens = estimate.input_tokens, estimate.output_tokens
        granted = self.try_reserve_tokens(input_tokens, output_tokens, kind)
        if granted is not None:
            return granted
        self._amounts(input_tokens, output_tokens)  # too large for a limit: fail before waiting
        requested_at = self._time()
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(ticket)
        try:
            while True:
                if self._waiters[0] is not ticket:
                    # Resolved by whoever leaves the head of the line before us.
                    await ticket
                    continue
                now = self._time()
                amounts = self._amounts(input_tokens, output_tokens)
                delay = self._delay(amounts, now)
                if delay == 0.0:
                    break
                await self._sleep_or_wake(delay)
        finally:
            was_head = self._waiters[0] is ticket
            self._waiters.remove(ticket)
            if was_head and self._waiters and not self._waiters[0].done():
                self._waiters[0].set_result(None)
        return self._grant(amounts, requested_at, now, kind)

    def try_reserve(self, estimate: TokenEstimate) -> Reservation | None:
        """:meth:`reserve` without waiting: the reservation if it fits now, else ``None``.

        ``None`` also when others are waiting (they come first). Nothing is taken then.

        Raises:
            EstimateTooLargeError: an estimated token figure exceeds its whole per-minute limit.
        """
        return self.try_reserve_tokens(estimate.input_tokens, estimate.output_tokens)

    def try_reserve_tokens(
        self, input_tokens: int, output_tokens: int, kind: type[Reservation] = Reservation
    ) -> Reservation | None:
        """:meth:`try_reserve` of ``TokenEstimate(input_tokens, output_tokens)``, counts the
        caller has already validated (ints >= 0). ``kind``: the class of the reservation made
        (a subclass of :class:`Reservation` taking the same arguments)."""
        # The processor's fast path: _amounts, _grant and _count_usage, inlined.
        if self._dimensions is None:
            self._dims(self._clock.time())
        total = input_tokens + output_tokens
        amounts = {
            "requests": 1.0,
            "tokens": total,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        entries = self._entries
        if self._waiters:
            self._amounts(input_tokens, output_tokens)  # an estimate too large fails in line too
            return None
        now = self._time()
        for dimension, entry in entries:
            amount = amounts[dimension]
            if amount > entry.limit and dimension != "requests":
                raise EstimateTooLargeError(self.scope, dimension, amount, entry.limit)
            if not entry.bucket.admits(amount, now):
                return None  # reserve() then checks the other limits before waiting
        for dimension, entry in entries:
            entry.bucket.take_admitted(amounts[dimension])
        self._reservations += 1
        if now >= self._second + 1.0:
            self._new_second(now)
        used = self._used
        used["requests"] += 1.0
        used["tokens"] += total
        used["input_tokens"] += input_tokens
        used["output_tokens"] += output_tokens
        return kind(self, amounts, entries, now, 0.0)

    async def _sleep_or_wake(self, delay: float) -> None:
        self._wake = wake = asyncio.get_running_loop().create_future()
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        try:
            await asyncio.wait({sleeper, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            if self._wake is wake:
                self._wake = None

    def _notify(self) -> None:
        """Let the head waiter recompute its wait (after a refund or a limit change)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _grant(
        self,
        amounts: dict[str, float],
        requested_at: float,
        now: float,
        kind: type[Reservation],
    ) -> Reservation:
        taken = self._entries
        for dimension, entry in taken:
            entry.bucket.take(amounts[dimension], now)
        self._reservations += 1
        waited = now - requested_at
        self._total_wait += waited
        self._count_usage(now, amounts)
        return kind(self, amounts, taken, now, waited)

    def _adjust(
        self, deltas: Mapping[str, float], taken: tuple[tuple[str, _Dimension], ...]
    ) -> None:
        """Apply a reservation's settlement: positive deltas are debt, negative are refunds.

        Only the buckets in ``taken`` (those the reservation took from) are adjusted.
        """
        now = self._time()
        self._count_usage(now, deltas)
        for dimension, entry in taken:
            delta = deltas.get(dimension)
            if not delta:
                continue
            if delta > 0:
                entry.bucket.take(delta, now)
            else:
                entry.bucket.give_back(-delta, now)
        if self._wake is not None:
            self._notify()

    def _count_usage(self, now: float, amounts: Mapping[str, float]) -> None:
        """Add ``amounts`` to the units used (for ``used_last_minute``)."""
        if now >= self._second + 1.0:
            self._new_second(now)
        used = self._used
        for dimension, amount in amounts.items():
            used[dimension] += amount

    def _new_second(self, now: float) -> None:
        """``now`` is in a clock second later than the last usage's: note the totals so far."""
        second = math.floor(now)
        if second != self._second:
            self._second = second
            self._history.append((second, self._used.copy()))
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget the seconds that began a minute or more ago."""
        history = self._history
        while history and history[0][0] <= now - _WINDOW:
            history.popleft()

    # -- headers -----------------------------------------------------------------------------

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from one answer's ``x-ratelimit-*`` / ``anthropic-ratelimit-*`` headers.

        For a dimension the scope did not declare, a ``limit`` header sets (or updates) a
        learned per-minute limit, making a bucket for it if there was none. For any dimension
        with a bucket, a ``remaining`` figure (with its ``reset``) lowers the bucket to
        :func:`snapshot_level` when that is stricter; it never raises a level. A declared limit
        is never changed by headers. Safe to use as a :data:`HEADER_SINK`.
        """
        now = self._clock.time()
        dims = self._dims(now)
        for snapshot in parse_rate_limit_headers(headers, now=self._wall_clock()):
            entry = dims.get(snapshot.dimension)
            if snapshot.limit is not None and snapshot.limit > 0:
                if entry is None:
                    rate, capacity, reserve = self._shape(snapshot.dimension, snapshot.limit)
                    bucket = TokenBucket(rate, capacity, now=now, reserve=reserve)
                    entry = _Dimension(float(snapshot.limit), "learned", bucket)
                    dims[snapshot.dimension] = entry
                    self._buckets_changed()
                elif entry.source == "learned" and entry.limit != snapshot.limit:
                    entry.limit = float(snapshot.limit)
                    rate, capacity, reserve = self._shape(snapshot.dimension, entry.limit)
                    entry.bucket.resize(rate, capacity, now, reserve=reserve)
            if entry is not None and snapshot.remaining is not None:
                limit = snapshot.limit if snapshot.limit is not None else entry.limit
                entry.bucket.lower_to(
                    snapshot_level(
                        snapshot.remaining, snapshot.reset_seconds, limit, entry.bucket.rate
                    ),
                    now,
                )
        self._notify()

    # -- introspection -----------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Reservations waiting now."""
        return len(self._waiters)

    def statistics(self) -> GateStatistics:
        """A snapshot of limits, levels, waiters, waits and the last minute's usage.

        Cheap (independent of the traffic in the last minute): the processor takes one for
        every finished item's event when observers are attached.
        """
        now = self._clock.time()
        dims = self._dims(now)
        self._prune(now)
        before = self._history[0][1] if self._history else self._used
        used = {dimension: self._used[dimension] - before[dimension] for dimension in DIMENSIONS}
        return GateStatistics(
            scope=self.scope,
            limits={dim: entry.limit for dim, entry in dims.items()},
            limit_sources={dim: entry.source for dim, entry in dims.items()},
            levels={dim: entry.bucket.refill(now) for dim, entry in dims.items()},
            capacities={dim: entry.bucket.capacity for dim, entry in dims.items()},
            waiting=len(self._waiters),
            reservations=self._reservations,
            total_wait_seconds=self._total_wait,
            used_last_minute={dim: max(0.0, amount) for dim, amount in used.items()},
            window_seconds=min(_WINDOW, now - self._created_at + self._burst),
        )

    def __repr__(self) -> str:
        if self._dimensions is None:
            buckets = ", ".join(f"{dim}={limit:g}/min" for dim, limit in self._declared.items())
        else:
            try:
                now: float | None = self._clock.time()
            except RuntimeError:  # a loop clock read outside its loop: show the last levels
                now = None
            buckets = ", ".join(
                f"{dim}={_level_at(entry.bucket, now):.6g}/{entry.bucket.capacity:.6g} "
                f"({entry.limit:g}/min {entry.source})"
                for dim, entry in self._dimensions.items()
            )
        return (
            f"AdmissionGate(scope={self.scope!r}, {buckets or 'unlimited'}, "
            f"waiting={len(self._waiters)}, reservations={self._reservations})"
        )


def _level_at(bucket: TokenBucket, now: float | None) -> float:
    return bucket.level if now is None else bucket.refill(now)


class GateRegistry:
    """The gates of every quota scope of one processor, made on first use.

    Args:
        default_limits: limits of every scope not listed in ``quotas``.
        clock: the clock the gates wait on.
        quotas: limits per scope; a listed scope takes its :class:`QuotaLimits` as a whole.
        burst_seconds: seconds of refill each bucket holds (finite, > 0).
        margin: fraction of each token bucket's capacity an admission leaves in it
            (0 <= margin < 1).
        wall_clock: Unix time, for RFC 3339 reset headers.

    Raises:
        TypeError / ValueError: if a limit, ``burst_seconds`` or ``margin`` is invalid.
    """

    def __init__(
        self,
        default_limits: Limits,
        clock: Clock,
        *,
        quotas: Mapping[str, QuotaLimits] | None = None,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        margin: float = DEFAULT_MARGIN,
        wall_clock: Callable[[], float] = time.time,
        backend: QuotaBackend | None = None,
    ) -> None:
        _check_burst_and_margin(burst_seconds, margin)
        self.backend = backend
        """Where the buckets live when not in the gates (``None``: in them, the default)."""
        self._default = _normalize_limits(default_limits)
        self._quotas = dict(quotas or {})
        for limits in self._quotas.values():
            _normalize_limits(limits)
        self._clock = clock
        self._burst = burst_seconds
        self._margin = margin
        self._wall_clock = wall_clock
        self.gates: dict[str, AdmissionGate] = {}
        """The gates made so far, by scope (read-only for callers: :meth:`gate` makes them)."""

    @classmethod
    def from_config(cls, config: ProcessorConfig, clock: Clock) -> GateRegistry:
        """The registry a processor with ``config`` needs (its ``max_*_per_minute`` fields,
        ``quotas`` and ``quota_burst_seconds``)."""
        default: dict[str, float | None] = {
            "requests": config.max_requests_per_minute,
            "tokens": config.max_tokens_per_minute,
            "input_tokens": config.max_input_tokens_per_minute,
            "output_tokens": config.max_output_tokens_per_minute,
        }
        burst = config.quota_burst_seconds
        backend = config.quota_backend
        return cls(
            default,
            clock,
            quotas=config.quotas,
            burst_seconds=DEFAULT_BURST_SECONDS if burst is None else burst,
            backend=backend if is_shared_backend(backend) else None,
        )

    def limits_for(self, scope: str) -> dict[str, float]:
        """The declared per-minute limits of ``scope`` (see :func:`scope_limits`)."""
        return scope_limits(scope, self._default, self._quotas)

    def gate(self, scope: str) -> AdmissionGate:
        """The gate of ``scope``, made on first request."""
        gate = self.gates.get(scope)
        if gate is None and self.backend is not None:
            from async_batch_llm._internal.shared_quota import SharedAdmissionGate

            gate = self.gates[scope] = SharedAdmissionGate(
                scope,
                self.limits_for(scope),
                self._clock,
                self.backend,
                burst_seconds=self._burst,
                margin=self._margin,
                wall_clock=self._wall_clock,
            )
        elif gate is None:
            gate = self.gates[scope] = AdmissionGate(
                scope,
                self.limits_for(scope),
                self._clock,
                burst_seconds=self._burst,
                margin=self._margin,
                wall_clock=self._wall_clock,
            )
        return gate

    def unused_scopes(self) -> list[str]:
        """The scopes given limits in ``quotas`` that no attempt has used, sorted."""
        return sorted(scope for scope in self._quotas if scope not in self.gates)

    async def drain(self) -> None:
        """Wait for every settlement sent to the shared backend (nothing to do without one)."""
        for gate in list(self.gates.values()):
            drain = getattr(gate, "drain", None)
            if drain is not None:
                await drain()

    def statistics(self) -> dict[str, GateStatistics]:
        """A snapshot of every gate made so far, by scope."""
        return {scope: gate.statistics() for scope, gate in self.gates.items()}

    def snapshot(self, scope: str) -> GateStatistics | None:
        """A read-only snapshot of the gate of ``scope``, or ``None`` if it was never made.

        What the gate knows, for observers: the limits in force (declared or learned), the
        last minute's usage and the time spent waiting. Never makes a gate.
        """
        gate = self.gates.get(scope)
        return None if gate is None else gate.statistics()

    def __repr__(self) -> str:
        return f"GateRegistry(scopes={sorted(self.gates)!r})"
