"""Batch jobs for the emulators: states, a time scale, partial results on expiry (internal).

A job moves through ``validating`` → ``in_progress`` → ``finalizing`` → ``completed`` on the
server clock multiplied by :attr:`BatchTiming.time_scale`, so a job the real service might take
hours over finishes in a fraction of a second in tests. Lines run lazily: whenever the job is
read, the lines whose simulated time has come are answered (through the server's ordinary
response function, so ``respond`` can fail single lines with the usual faults). A job still
running when its completion window ends is ``expired``: the lines answered so far are its
results, the rest come back as not run. ``cancel`` moves it to ``cancelling``, then to
``cancelled`` at the next read, also with the lines answered so far.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ._core import (
    APIError,
    ErrorResponse,
    Handler,
    Malformed,
    ProviderRequest,
    ProviderServer,
    RateLimited,
    RequestDetails,
    ServerError,
    _FaultSignal,
    _HandlerFailure,
)

__all__ = ["BatchJob", "BatchTiming", "LineAnswer", "LineRunner", "answer_line", "line_request"]

LineAnswer = tuple[int, Any]
"""``(http_status, body)`` of one line's answer."""

LineRunner = Callable[[Any], Awaitable[LineAnswer]]
"""Answers one line's request body (the server's own chat/message handler)."""


@dataclass
class BatchTiming:
    """How long jobs take, in simulated seconds, and how fast simulated time runs.

    Attributes:
        time_scale: simulated seconds per second of the server clock (``3600`` makes an hour
            pass in a second).
        validating_seconds: time in ``validating``.
        seconds_per_line: time each line takes in ``in_progress`` (lines run one after the
            other).
        finalizing_seconds: time in ``finalizing``.
        completion_window: seconds after creation at which an unfinished job expires (24 h).
        expire_after_lines: script an expiry: the job expires as soon as this many of its
            lines have run (``None``: only the window expires jobs).
        expiring_jobs: how many jobs (the first ones created) ``expire_after_lines`` applies
            to; ``None``: every job.
    """

    time_scale: float = 1.0
    validating_seconds: float = 10.0
    seconds_per_line: float = 1.0
    finalizing_seconds: float = 10.0
    completion_window: float = 24 * 3600.0
    expire_after_lines: int | None = None
    expiring_jobs: int | None = None

    def for_job(self, index: int) -> BatchTiming:
        """The timing of the job created ``index``-th (0-based)."""
        if self.expiring_jobs is not None and index >= self.expiring_jobs:
            return replace(self, expire_after_lines=None)
        return replace(self)


@dataclass
class BatchJob:
    """One job: its lines, how far it got and its answers.

    Attributes:
        id: the job id.
        lines: ``(custom_id, request body)`` in submission order.
        created_at: server clock at creation.
        state: the current state.
        answers: ``custom_id`` → ``(status, body)`` for every line that ran.
        times: state → server clock time it was entered.
        extra: provider-specific fields (input file id, endpoint, ...).
    """

    id: str
    lines: list[tuple[str, Any]]
    created_at: float
    timing: BatchTiming
    state: str = "validating"
    answers: dict[str, LineAnswer] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in ("completed", "expired", "cancelled", "failed")

    @property
    def failed_count(self) -> int:
        return sum(1 for status, _ in self.answers.values() if not 200 <= status < 300)

    @property
    def completed_count(self) -> int:
        return len(self.answers) - self.failed_count

    def cancel(self, now: float) -> None:
        """Start cancelling (a finished job stays as it is)."""
        if not self.done and self.state != "cancelling":
            self._enter("cancelling", now)

    def fail(self, now: float) -> None:
        """End the job in ``failed`` (validation refused it)."""
        self._enter("failed", now)

    async def advance(self, now: float, run_line: LineRunner) -> None:
        """Bring the job up to ``now``: run the lines whose time has come, change state."""
        if self.done:
            return
        if self.state == "cancelling":
            self._enter("cancelled", now)
            return
        timing = self.timing
        elapsed = (now - self.created_at) * timing.time_scale
        if elapsed < timing.validating_seconds:
            return
        if self.state == "validating":
            self._enter("in_progress", now)
        window_over = elapsed >= timing.completion_window
        running = min(elapsed, timing.completion_window) - timing.validating_seconds
        due = len(self.lines)
        if timing.seconds_per_line > 0:
            due = min(due, math.floor(running / timing.seconds_per_line + 1e-9))
        if timing.expire_after_lines is not None:
            due = min(due, timing.expire_after_lines)
        for custom_id, body in self.lines[len(self.answers) : due]:
            self.answers[custom_id] = await run_line(body)
        if len(self.answers) < len(self.lines):
            scripted = timing.expire_after_lines is not None and len(self.answers) >= (
                timing.expire_after_lines
            )
            if window_over or scripted:
                self._enter("expired", now)
            return
        ran_until = timing.validating_seconds + len(self.lines) * timing.seconds_per_line
        if self.state == "in_progress":
            self._enter("finalizing", now)
        if elapsed >= ran_until + timing.finalizing_seconds:
            self._enter("completed", now)

    def _enter(self, state: str, now: float) -> None:
        self.state = state
        self.times.setdefault(state, now)


def line_request(
    server: ProviderServer, details: RequestDetails, body: Any, path: str
) -> ProviderRequest:
    """The :class:`ProviderRequest` ``respond`` sees for one line of a job (kind ``batch_line``)."""
    return ProviderRequest(
        provider=server.provider,
        kind="batch_line",
        index=len(server.requests),
        kind_index=0,
        method="POST",
        path=path,
        query={},
        headers={},
        body=body,
        model=details.model,
        prompt=details.prompt,
        system=details.system,
        input_tokens=details.input_tokens,
        response_schema=details.response_schema,
        tools=details.tools,
        tool_choice=details.tool_choice,
        received_at=server.clock(),
    )


async def answer_line(
    server: ProviderServer, request: ProviderRequest, handler: Handler
) -> LineAnswer:
    """Answer one line with the server's own handler; a fault ``respond`` returned for the line
    becomes the provider's error answer (a hang or disconnect a 500)."""
    try:
        response = await handler(request, None)
    except APIError as exc:
        response = server._error_response(exc.status, exc.message, code=exc.code)
    except _FaultSignal as signal:
        fault = signal.fault
        if isinstance(fault, Malformed):
            response = await handler(request, fault)
        elif isinstance(fault, RateLimited):
            response = server._error_response(429, fault.message, retry_after=fault.retry_after)
        elif isinstance(fault, ServerError | ErrorResponse):
            response = server._error_response(fault.status, fault.message)
        else:
            response = server._error_response(500, type(fault).__name__)
    except _HandlerFailure as failure:
        error = failure.error
        response = server._error_response(500, f"{type(error).__name__}: {error}")
    return response.status, json.loads(response.body)
