"""The emulators' rate limits: per-minute token buckets, their status and rejections.

Split from ``_core`` (the servers' shared machinery): the buckets know nothing of HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RATE_LIMIT_NAMES", "RateLimitRejection", "RateLimitStatus"]


RATE_LIMIT_NAMES = ("requests", "tokens", "input_tokens", "output_tokens")
"""Every rate-limit name a server may configure, in the order they are checked."""

_EPSILON = 1e-9
_SLACK_SECONDS = 0.001


@dataclass(frozen=True)
class RateLimitStatus:
    """The state of one configured rate limit, as the rate-limit headers report it.

    Attributes:
        limit: The configured per-minute figure (the ``limit`` headers).
        capacity: The most the bucket holds: ``limit * window / 60``, at least 1.
        remaining: What the bucket holds now, rounded down, never below 0 (the
            ``remaining`` headers).
        reset: Seconds until the bucket is full again (the ``reset`` headers).
    """

    limit: int
    capacity: float
    remaining: int
    reset: float


class _Bucket:
    """A token bucket refilling at ``limit / 60`` per second up to ``limit * window / 60``."""

    def __init__(self, limit: int, window: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(limit * window / 60.0, 1.0)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def fits(self, amount: int) -> bool:
        # What refills within a millisecond (the resolution of ``retry-after-ms``) counts as
        # there: an epoch clock's float steps must not turn a wait of 0 ms into a refusal.
        slack = max(_EPSILON, self.rate * _SLACK_SECONDS)
        if amount <= self.level + slack:
            return True
        return self.level + slack >= self.capacity and amount <= self.limit

    def wait(self, amount: int) -> float:
        """Seconds until ``amount`` fits (without other traffic)."""
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def status(self) -> RateLimitStatus:
        return RateLimitStatus(
            limit=self.limit,
            capacity=self.capacity,
            remaining=max(0, math.floor(self.level + max(_EPSILON, self.rate * _SLACK_SECONDS))),
            reset=max(0.0, (self.capacity - self.level) / self.rate),
        )


@dataclass(frozen=True)
class RateLimitRejection:
    """Why the configured limits refused a request (internal; handed to the error builder).

    ``retry_after`` is ``None`` when the request asks for more than the per-minute limit
    itself (it can never be admitted).
    """

    name: str
    limit: int
    requested: int
    retry_after: float | None
    model: str | None


def _check_limit(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value
