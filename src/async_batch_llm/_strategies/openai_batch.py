"""OpenAI's Batch API (Files + Batches) as a :class:`~._strategies.batch_api.BatchBackend`.

A job is one JSONL input file (``purpose="batch"``) of request lines ``{"custom_id", "method":
"POST", "url": "/v1/chat/completions", "body"}`` and one batch over it (``completion_window
"24h"``). Results come back in two files: the output file holds the 2xx answers, the error file
the other answers and the lines that never ran (``error.code == "batch_expired"`` when the
window passed, ``"batch_cancelled"`` when cancelled). Errors of the job API itself are
converted like ``OpenAIStrategy.execute`` converts them.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from async_batch_llm._strategies._http_api import (
    ProviderAPIError,
    ProviderRequestError,
    error_for_status,
    make_error,
)
from async_batch_llm._strategies.batch_api import (
    BatchLimits,
    BatchLine,
    BatchLineExpiredError,
    JobStatus,
    LineOutcome,
)

if TYPE_CHECKING:
    import openai

__all__ = ["OPENAI_BATCH_LIMITS", "OPENAI_BATCH_URL", "OpenAIBatchBackend", "line_size"]

OPENAI_BATCH_LIMITS = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
"""OpenAI's limits: 50,000 requests and 200 MB per input file (one model per file)."""

OPENAI_BATCH_URL: Final = "/v1/chat/completions"
"""The endpoint every line of a job calls."""

_LABEL = "OpenAI"
_PROVIDER = "openai"
_NOT_RUN = ("batch_expired", "batch_cancelled")
_TAG = "async_batch_llm_job"
"""The batch metadata key holding the job's tag (found again by a resumed run)."""


class _LineStatusError(Exception):
    """Stands for the HTTP answer of one result line (the cause of its converted error)."""


class OpenAIBatchBackend:
    """Submit, poll, download and cancel OpenAI batch jobs through one ``AsyncOpenAI`` client.

    Args:
        client: the strategy's client.
        limits: what one job may hold.
        poll_interval, max_poll_interval: see :class:`~._strategies.batch_api.BatchBackend`.
    """

    provider = _PROVIDER

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        limits: BatchLimits = OPENAI_BATCH_LIMITS,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
    ) -> None:
        self.client = client
        self.limits = limits
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.key: Hashable = (_PROVIDER, id(client))

    def __repr__(self) -> str:
        return f"OpenAIBatchBackend(limits={self.limits!r})"

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        data = "".join(_dumps(line.payload) + "\n" for line in lines).encode("utf-8")
        async with _converting():
            uploaded = await self.client.files.create(
                file=("batch.jsonl", data, "application/jsonl"), purpose="batch"
            )
            batch = await self.client.batches.create(
                input_file_id=uploaded.id,
                endpoint=OPENAI_BATCH_URL,
                completion_window="24h",
                metadata={_TAG: tag},
            )
        return batch.id

    async def find(self, tag: str) -> str | None:
        async with _converting():
            async for batch in self.client.batches.list(limit=100):
                if batch.metadata is not None and batch.metadata.get(_TAG) == tag:
                    return batch.id
        return None

    async def status(self, job_id: str) -> JobStatus:
        async with _converting():
            batch = await self.client.batches.retrieve(job_id)
        counts = batch.request_counts
        error = None
        if batch.errors is not None and batch.errors.data:
            first = batch.errors.data[0]
            error = f"{first.code}: {first.message}"
        return JobStatus(
            job_id=batch.id,
            state=batch.status,
            total=counts.total if counts is not None else 0,
            completed=counts.completed if counts is not None else 0,
            failed=counts.failed if counts is not None else 0,
            error=error,
        )

    async def results(self, job_id: str) -> list[LineOutcome]:
        async with _converting():
            batch = await self.client.batches.retrieve(job_id)
            texts = []
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    content = await self.client.files.content(file_id)
                    texts.append(content.text)
        outcomes = []
        for text in texts:
            for raw in text.splitlines():
                if raw.strip():
                    outcomes.append(_outcome(json.loads(raw)))
        return outcomes

    async def cancel(self, job_id: str) -> None:
        async with _converting():
            await self.client.batches.cancel(job_id)


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def line_size(payload: Mapping[str, Any]) -> int:
    """Bytes a line takes in the input file (newline included)."""
    return len(_dumps(payload).encode("utf-8")) + 1


def _outcome(line: Mapping[str, Any]) -> LineOutcome:
    custom_id = str(line.get("custom_id"))
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, Mapping):
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        if 200 <= status < 300 and isinstance(body, Mapping):
            return LineOutcome(custom_id, body=body)
        message = _error_message(body)
        return LineOutcome(
            custom_id,
            error=error_for_status(
                status,
                label=_LABEL,
                provider=_PROVIDER,
                provider_message=message,
                out_of_credit=status == 429 and _error_code(body) == "insufficient_quota",
                request_id=response.get("request_id"),
                cause=_LineStatusError(message or f"HTTP {status}"),
            ),
        )
    code = error.get("code") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    if code in _NOT_RUN:
        return LineOutcome(
            custom_id, error=BatchLineExpiredError(f"OpenAI batch line not run ({code})")
        )
    return LineOutcome(
        custom_id,
        error=make_error(
            ProviderRequestError,
            label=_LABEL,
            provider=_PROVIDER,
            category="bad_request",
            provider_message=f"{code}: {message}" if code else message,
        ),
    )


def _error_message(body: object) -> str | None:
    if isinstance(body, Mapping):
        nested = body.get("error", body)
        if isinstance(nested, Mapping) and isinstance(nested.get("message"), str):
            return str(nested["message"])
    return None


def _error_code(body: object) -> str | None:
    if isinstance(body, Mapping):
        nested = body.get("error")
        if isinstance(nested, Mapping) and isinstance(nested.get("code"), str):
            return str(nested["code"])
    return None


class _converting:
    """Convert ``openai`` errors raised inside the block like ``OpenAIStrategy`` does."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        import openai

        from async_batch_llm._strategies.openai import _converted

        if isinstance(exc, openai.APIError):
            converted: ProviderAPIError = _converted(exc)
            raise converted from exc
        return False
