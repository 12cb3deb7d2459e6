"""The strategy side of provider batch mode (``ProcessorConfig(mode="batch")``).

A strategy supports batch mode when it has the three methods of :class:`BatchCapable`:

- ``batch_backend()``: the provider's job API (:class:`BatchBackend`): submit a job of request
  lines, read its state, download its results, cancel it;
- ``batch_line(custom_id, prompt)``: the one request line an item sends (:class:`BatchLine`);
- ``batch_output(body)``: the ``(output, usage)`` of one successful result line, or the same
  exception ``execute()`` would raise for that answer (a reply that does not validate raises
  pydantic's ``ValidationError`` carrying its usage).

The processor (``_internal/batch_mode.py``) does the rest: grouping lines into jobs within the
backend's :class:`BatchLimits`, polling, mapping results back by ``custom_id``, retrying failed
and expired lines, pricing at the batch rate. No SDK is imported here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from async_batch_llm._types import TokenUsage

__all__ = [
    "TERMINAL_STATES",
    "BatchBackend",
    "BatchCapable",
    "BatchLimits",
    "BatchLine",
    "BatchLineExpiredError",
    "BatchLineMissingError",
    "JobState",
    "JobStatus",
    "LineOutcome",
    "supports_batch",
]

JobState = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
    "failed",
]
"""A provider job's state, in OpenAI's vocabulary (other providers' states are mapped to it)."""

TERMINAL_STATES: frozenset[str] = frozenset({"completed", "expired", "cancelled", "failed"})
"""States after which a job changes no more and its results can be downloaded."""


@dataclass(frozen=True)
class BatchLimits:
    """What one provider job may hold.

    Attributes:
        max_requests: request lines per job.
        max_bytes: bytes of all the lines of one job (the input file, or the request body).
        max_line_bytes: bytes of one line; a longer item fails on its own. ``None``: only
            ``max_bytes`` bounds a line.
    """

    max_requests: int
    max_bytes: int
    max_line_bytes: int | None = None

    def line_limit(self) -> int:
        """The most bytes one line may take."""
        return self.max_bytes if self.max_line_bytes is None else self.max_line_bytes


@dataclass(frozen=True)
class BatchLine:
    """One item's request as a job line.

    Attributes:
        custom_id: the id the provider hands back with the result.
        group: lines of different groups never share a job (OpenAI: one model per file).
        payload: the line as JSON data, in the provider's format.
        size: the bytes the line adds to its job.
    """

    custom_id: str
    group: str
    payload: Mapping[str, Any]
    size: int


@dataclass(frozen=True)
class JobStatus:
    """A job's state as last read from the provider.

    Attributes:
        job_id: the provider's id.
        state: see :data:`JobState`.
        total, completed, failed: request counts the provider reports.
        error: why the job itself failed (validation), for ``state == "failed"``.
    """

    job_id: str
    state: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    error: str | None = None

    @property
    def done(self) -> bool:
        """Whether the job reached a terminal state."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class LineOutcome:
    """One result line of a finished job: a successful answer body, or the converted error.

    Lines of a job that ended before running them (expired, cancelled) have no outcome.
    """

    custom_id: str
    body: Mapping[str, Any] | None = None
    error: Exception | None = None


class BatchLineExpiredError(TimeoutError):
    """The job ended (expired or cancelled) before this line ran; sending it again may work."""


class BatchLineMissingError(Exception):
    """A finished job returned no result for this line (retried in the next job)."""


class BatchBackend(Protocol):
    """A provider's job API, as the processor drives it.

    Attributes:
        provider: ``"openai"``, ``"anthropic"``, ``"gemini"``.
        key: equal for backends that may share jobs (same provider and client).
        limits: what one job may hold.
        poll_interval: seconds before the first status read; doubled (x1.5) up to
            ``max_poll_interval`` while the job runs.
    """

    provider: str
    key: Hashable
    limits: BatchLimits
    poll_interval: float
    max_poll_interval: float

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        """Create one job holding ``lines``, labelled ``tag``; return its id.

        Raises the converted API error.
        """
        ...

    async def find(self, tag: str) -> str | None:
        """The id of the job submitted with ``tag``, or ``None`` (a crash hid its id)."""
        ...

    async def status(self, job_id: str) -> JobStatus:
        """Read a job's state."""
        ...

    async def results(self, job_id: str) -> list[LineOutcome]:
        """Download a finished job's result lines (successes and per-line errors)."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Ask the provider to cancel a job (its finished lines stay downloadable)."""
        ...


@runtime_checkable
class BatchCapable(Protocol):
    """A strategy that can send its items through its provider's batch API."""

    def batch_backend(self) -> BatchBackend:
        """The job API this strategy's lines go through."""
        ...

    def batch_line(self, custom_id: str, prompt: Any) -> BatchLine:
        """The request line for one item (raises ``TypeError`` for a prompt it cannot send)."""
        ...

    def batch_output(self, body: Mapping[str, Any]) -> tuple[Any, TokenUsage]:
        """The output and usage of a successful result line, or the error ``execute`` raises."""
        ...


def supports_batch(strategy: object) -> bool:
    """Whether ``strategy`` has every method of :class:`BatchCapable` (and no
    ``batch_unavailable`` reason, which a strategy that only sometimes can run batches gives)."""
    if getattr(strategy, "batch_unavailable", None):
        return False
    return all(
        callable(getattr(strategy, name, None))
        for name in ("batch_backend", "batch_line", "batch_output")
    )
