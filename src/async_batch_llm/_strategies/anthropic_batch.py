"""Anthropic's Message Batches API as a :class:`~._strategies.batch_api.BatchBackend`.

A job is one Message Batch: ``POST /v1/messages/batches`` with ``requests: [{"custom_id",
"params"}]``. Its ``processing_status`` is ``in_progress``, ``canceling`` or ``ended``; once
ended, each request has one result: ``succeeded`` (the message), ``errored`` (an error body,
classified like the same answer online), ``canceled`` or ``expired`` (never ran: sent again).
Message Batches carry no metadata, so a job whose id a crash lost cannot be found again
(:meth:`AnthropicBatchBackend.find` answers ``None``; its lines are submitted again).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from async_batch_llm._strategies._http_api import ProviderAPIError, error_for_status
from async_batch_llm._strategies.batch_api import (
    BatchLimits,
    BatchLine,
    BatchLineExpiredError,
    JobStatus,
    LineOutcome,
)

if TYPE_CHECKING:
    import anthropic

__all__ = ["ANTHROPIC_BATCH_LIMITS", "AnthropicBatchBackend"]

ANTHROPIC_BATCH_LIMITS = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024)
"""Anthropic's limits: 100,000 requests or 256 MB per Message Batch."""

_LABEL = "Anthropic"
_PROVIDER = "anthropic"
_STATES = {"in_progress": "in_progress", "canceling": "cancelling", "ended": "completed"}
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class _LineStatusError(Exception):
    """Stands for the error answer of one batch request (the cause of its converted error)."""


class AnthropicBatchBackend:
    """Create, poll, download and cancel Message Batches through one ``AsyncAnthropic`` client.

    Args:
        client: the strategy's client.
        limits: what one batch may hold.
        poll_interval, max_poll_interval: see :class:`~._strategies.batch_api.BatchBackend`.
    """

    provider = _PROVIDER

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        limits: BatchLimits = ANTHROPIC_BATCH_LIMITS,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
    ) -> None:
        self.client = client
        self.limits = limits
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.key: Hashable = (_PROVIDER, id(client))

    def __repr__(self) -> str:
        return f"AnthropicBatchBackend(limits={self.limits!r})"

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        requests: Any = [dict(line.payload) for line in lines]
        async with _converting():
            batch = await self.client.messages.batches.create(requests=requests)
        return batch.id

    async def find(self, tag: str) -> str | None:
        return None

    async def status(self, job_id: str) -> JobStatus:
        async with _converting():
            batch = await self.client.messages.batches.retrieve(job_id)
        counts = batch.request_counts
        state = _STATES.get(batch.processing_status, batch.processing_status)
        if state == "completed":  # "ended": say why requests were left unrun, as OpenAI does
            if counts.canceled:
                state = "cancelled"
            elif counts.expired:
                state = "expired"
        return JobStatus(
            job_id=batch.id,
            state=state,
            total=counts.processing
            + counts.succeeded
            + counts.errored
            + counts.canceled
            + counts.expired,
            completed=counts.succeeded,
            failed=counts.errored,
        )

    async def results(self, job_id: str) -> list[LineOutcome]:
        outcomes = []
        async with _converting():
            decoder = await self.client.messages.batches.results(job_id)
            async for line in decoder:
                outcomes.append(_outcome(line.custom_id, line.result.model_dump(mode="json")))
        return outcomes

    async def cancel(self, job_id: str) -> None:
        async with _converting():
            await self.client.messages.batches.cancel(job_id)


def _outcome(custom_id: str, result: Mapping[str, Any]) -> LineOutcome:
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), Mapping):
        return LineOutcome(custom_id, body=result["message"])
    if kind in ("canceled", "expired"):
        return LineOutcome(
            custom_id, error=BatchLineExpiredError(f"Anthropic batch request not run ({kind})")
        )
    error = result.get("error")
    inner = error.get("error") if isinstance(error, Mapping) else None
    inner = inner if isinstance(inner, Mapping) else {}
    error_type = str(inner.get("type") or "api_error")
    message = inner.get("message")
    status = _ERROR_STATUS.get(error_type, 500)
    return LineOutcome(
        custom_id,
        error=error_for_status(
            status,
            label=_LABEL,
            provider=_PROVIDER,
            provider_message=str(message) if message is not None else error_type,
            out_of_credit=error_type == "billing_error",
            request_id=error.get("request_id") if isinstance(error, Mapping) else None,
            cause=_LineStatusError(error_type),
        ),
    )


class _converting:
    """Convert ``anthropic`` errors raised inside the block like ``AnthropicStrategy`` does."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        import anthropic

        from async_batch_llm._strategies.anthropic import _converted

        if isinstance(exc, anthropic.APIError):
            converted: ProviderAPIError = _converted(exc)
            raise converted from exc
        return False
