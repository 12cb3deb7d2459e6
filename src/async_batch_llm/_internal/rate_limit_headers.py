"""How a strategy hands the provider's rate-limit headers to the quota gate of its attempt.

A strategy calls :func:`report_rate_limit_headers` with the headers of each answer it receives
(successes and errors alike). The processor points :data:`HEADER_SINK` at the admission gate of
the item's quota scope around every attempt; the variable is task-local, so concurrent workers
never see each other's sink. Outside a processor the report is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar

__all__ = ["HEADER_SINK", "HeaderSink", "report_rate_limit_headers"]

HeaderSink = Callable[[Mapping[str, str]], None]
"""Receives one answer's headers (names in any case)."""

HEADER_SINK: ContextVar[HeaderSink | None] = ContextVar(
    "async_batch_llm_rate_limit_header_sink", default=None
)


def report_rate_limit_headers(headers: Mapping[str, str]) -> None:
    """Report one provider answer's headers to the quota gate of the running attempt.

    Only ``x-ratelimit-*``, ``anthropic-ratelimit-*`` and ``retry-after`` headers matter; the
    rest are ignored. Does nothing when called outside an attempt run by a processor.
    """
    sink = HEADER_SINK.get()
    if sink is not None:
        sink(headers)
