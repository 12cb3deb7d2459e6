"""What a progress display shows, computed from the processor's events: pure, clock injected.

:class:`ProgressTracker` folds events into counters and sliding one-minute windows;
:meth:`ProgressTracker.snapshot` turns them into the figures a panel or a log line prints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from async_batch_llm.observers.base import ProcessingEvent

__all__ = [
    "ProgressSnapshot",
    "ProgressTracker",
    "format_cost",
    "format_duration",
    "format_line",
]

_WINDOW = 60.0
"""Seconds of the rate windows (requests and tokens per minute)."""


@dataclass(frozen=True)
class ProgressSnapshot:
    """The figures of one moment of a batch.

    Attributes:
        total: items of the batch, when known.
        done: items finished (succeeded + failed).
        succeeded, failed, retries: counters; ``retries`` counts attempts after the first.
        in_flight: attempts running now.
        elapsed: seconds since the batch started.
        items_per_second: overall throughput (0 until the first item finishes).
        requests_per_minute: attempts started in the last minute (scaled while the batch is
            younger than a minute).
        tokens_per_minute: tokens of the items finished in the last minute (same scaling).
        max_requests_per_minute, max_tokens_per_minute: the limits, when known: given to the
            tracker, else those the quota gate reports in item events (declared or learned
            from rate-limit headers) while the batch uses a single quota scope.
        cooldown_remaining: seconds left in the shared rate-limit cooldown, or ``None``.
        rate_limits: rate-limit answers seen.
        eta: seconds until every item is done at the current throughput, when computable.
        finished: the batch has completed.
        spend: dollars of the items finished so far, once an item event carried a ``cost``
            (a ``cost_function`` prices the calls); ``None`` before.
        projected_cost: ``spend`` plus the spend per priced item times the items left (the
            whole batch's cost at the current average), when the total is known; equal to
            ``spend`` once the batch has completed.
    """

    total: int | None
    done: int
    succeeded: int
    failed: int
    retries: int
    in_flight: int
    elapsed: float
    items_per_second: float
    requests_per_minute: float
    tokens_per_minute: float
    max_requests_per_minute: float | None
    max_tokens_per_minute: float | None
    cooldown_remaining: float | None
    rate_limits: int
    eta: float | None
    finished: bool
    spend: float | None = None
    projected_cost: float | None = None


class ProgressTracker:
    """Counters and one-minute windows fed by processor events.

    Args:
        total: items of the batch if known in advance (``BATCH_STARTED`` fills it otherwise).
        max_requests_per_minute, max_tokens_per_minute: limits shown next to the rates.
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
    ) -> None:
        self.total = total
        self.max_requests_per_minute = max_requests_per_minute
        self.max_tokens_per_minute = max_tokens_per_minute
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.succeeded = 0
        self.failed = 0
        self.retries = 0
        self.rate_limits = 0
        self._attempted: set[str] = set()
        self._in_flight: set[str] = set()
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0
        self._cooldown_until: float | None = None
        self._scopes: set[str] = set()
        self._learned: dict[str, float] = {}
        self.spend: float | None = None
        self.priced = 0  # finished items whose event carried a cost

    def on_event(self, event: ProcessingEvent, data: Mapping[str, Any], now: float) -> None:
        """Fold one event in; ``now`` is the tracker's clock reading (seconds)."""
        if event is ProcessingEvent.BATCH_STARTED:
            self.started_at = now
            total = data.get("total")
            if self.total is None and isinstance(total, int) and total > 0:
                self.total = total
        elif event is ProcessingEvent.ITEM_STARTED:
            item_id = str(data.get("item_id"))
            if item_id in self._attempted:
                self.retries += 1
            self._attempted.add(item_id)
            self._in_flight.add(item_id)
            self._requests.append(now)
        elif event is ProcessingEvent.ITEM_COMPLETED:
            self._finish(data)
            self._note_limits(data)
            self.succeeded += 1
            tokens = data.get("tokens")
            if isinstance(tokens, int) and tokens > 0:
                self._tokens.append((now, tokens))
                self._tokens_in_window += tokens
        elif event is ProcessingEvent.ITEM_FAILED:
            self._finish(data)
            self._note_limits(data)
            self.failed += 1
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            self.rate_limits += 1
            self._in_flight.discard(str(data.get("item_id")))
        elif event is ProcessingEvent.COOLDOWN_STARTED:
            duration = data.get("duration")
            if isinstance(duration, int | float) and duration > 0:
                self._cooldown_until = now + float(duration)
        elif event is ProcessingEvent.COOLDOWN_ENDED:
            self._cooldown_until = None
        elif event is ProcessingEvent.BATCH_COMPLETED:
            self.finished_at = now
            self._in_flight.clear()
        if self.started_at is None:
            self.started_at = now
        self._expire(now)

    def _finish(self, data: Mapping[str, Any]) -> None:
        item_id = str(data.get("item_id"))
        self._in_flight.discard(item_id)
        self._attempted.discard(item_id)
        cost = data.get("cost")
        if (
            isinstance(cost, int | float)
            and not isinstance(cost, bool)
            and 0 <= cost < float("inf")
        ):
            self.spend = (self.spend or 0.0) + float(cost)
            self.priced += 1

    def _note_limits(self, data: Mapping[str, Any]) -> None:
        """Keep the limits the quota gate reports (declared or learned from headers)."""
        limits = data.get("quota_limits")
        if not isinstance(limits, Mapping):
            return
        self._scopes.add(str(data.get("quota_scope")))
        for dimension in ("requests", "tokens"):
            value = limits.get(dimension)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._learned[dimension] = float(value)

    def _limit(self, given: float | None, dimension: str) -> float | None:
        if given is not None:
            return given
        # One scope only: the limits of several scopes do not add up to one figure.
        return self._learned.get(dimension) if len(self._scopes) == 1 else None

    def _expire(self, now: float) -> None:
        horizon = now - _WINDOW
        requests = self._requests
        while requests and requests[0] <= horizon:
            requests.popleft()
        tokens = self._tokens
        while tokens and tokens[0][0] <= horizon:
            self._tokens_in_window -= tokens.popleft()[1]

    def snapshot(self, now: float) -> ProgressSnapshot:
        """The figures at ``now``."""
        self._expire(now)
        end = self.finished_at if self.finished_at is not None else now
        elapsed = max(0.0, end - self.started_at) if self.started_at is not None else 0.0
        done = self.succeeded + self.failed
        # Within the first minute the window is the time elapsed so far (at least a second,
        # so the first moments do not extrapolate a handful of requests to a huge rate).
        scale = 60.0 / min(_WINDOW, max(elapsed, 1.0))
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta: float | None = None
        if self.finished_at is not None:
            eta = 0.0
        elif self.total is not None and rate > 0:
            eta = max(0, self.total - done) / rate
        projected: float | None = None
        spend = self.spend
        if spend is not None:
            if self.finished_at is not None:
                projected = spend
            elif self.total is not None and self.priced:
                projected = spend + spend / self.priced * max(0, self.total - done)
        cooldown = None
        if self._cooldown_until is not None and self.finished_at is None:
            cooldown = max(0.0, self._cooldown_until - now)
        return ProgressSnapshot(
            total=self.total,
            done=done,
            succeeded=self.succeeded,
            failed=self.failed,
            retries=self.retries,
            in_flight=len(self._in_flight),
            elapsed=elapsed,
            items_per_second=rate,
            requests_per_minute=len(self._requests) * scale,
            tokens_per_minute=self._tokens_in_window * scale,
            max_requests_per_minute=self._limit(self.max_requests_per_minute, "requests"),
            max_tokens_per_minute=self._limit(self.max_tokens_per_minute, "tokens"),
            cooldown_remaining=cooldown,
            rate_limits=self.rate_limits,
            eta=eta,
            finished=self.finished_at is not None,
            spend=spend,
            projected_cost=projected,
        )


def format_duration(seconds: float | None) -> str:
    """``"—"`` for unknown, else ``"42s"``, ``"3m05s"`` or ``"2h04m"``."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_cost(dollars: float | None) -> str:
    """``"—"`` for unknown, else dollars: ``"$0.000045"``, ``"$0.0123"`` or ``"$1,234.56"``."""
    if dollars is None:
        return "—"
    if dollars < 0.01:
        return f"${dollars:.6f}"
    if dollars < 1:
        return f"${dollars:.4f}"
    return f"${dollars:,.2f}"


def format_rate(value: float, limit: float | None) -> str:
    """``"120"`` or ``"120/500"`` (a rate against its limit)."""
    text = f"{value:,.0f}"
    return f"{text}/{limit:,.0f}" if limit is not None else text


def format_line(snap: ProgressSnapshot) -> str:
    """One plain log line of a snapshot."""
    total = f"/{snap.total}" if snap.total is not None else ""
    percent = f" ({100 * snap.done / snap.total:.0f}%)" if snap.total else ""
    parts = [
        f"items {snap.done}{total}{percent}",
        f"ok {snap.succeeded}",
        f"failed {snap.failed}",
        f"{snap.items_per_second:.1f} items/s",
        f"req/min {format_rate(snap.requests_per_minute, snap.max_requests_per_minute)}",
        f"tok/min {format_rate(snap.tokens_per_minute, snap.max_tokens_per_minute)}",
        f"retries {snap.retries}",
    ]
    if snap.cooldown_remaining is not None:
        parts.append(f"cooldown {format_duration(snap.cooldown_remaining)}")
    if snap.spend is None:
        parts.append("spend —")
    else:
        parts.append(
            f"spend {format_cost(snap.spend)} (projected {format_cost(snap.projected_cost)})"
        )
    parts.append(f"elapsed {format_duration(snap.elapsed)}")
    parts.append("done" if snap.finished else f"ETA {format_duration(snap.eta)}")
    return " | ".join(parts)
