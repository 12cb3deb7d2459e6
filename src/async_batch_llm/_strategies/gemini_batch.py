"""Gemini batch jobs (Developer API, inline requests) as a
:class:`~._strategies.batch_api.BatchBackend`.

A job is one ``client.aio.batches.create(model=..., src=[inline requests])``: each request is a
``GenerateContentRequest`` carrying ``metadata={"key": custom_id}``, and the job's
``display_name`` is the processor's tag. Its state is ``JOB_STATE_PENDING``, ``_RUNNING``,
``_SUCCEEDED``, ``_FAILED``, ``_CANCELLED`` or ``_EXPIRED``; a finished job holds its results in
``dest.inlined_responses``: a ``response`` (the ``GenerateContentResponse``) or an ``error``
(a ``google.rpc.Status``, turned into the ``google.genai`` error the same answer raises online).
Lines a job never ran have no response and are sent again. A job whose name a crash lost is
found again by its display name (``batches.list``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from async_batch_llm._strategies.batch_api import BatchLimits, BatchLine, JobStatus, LineOutcome

if TYPE_CHECKING:
    from google import genai

__all__ = ["GEMINI_BATCH_LIMITS", "GeminiBatchBackend", "inline_request"]

GEMINI_BATCH_LIMITS = BatchLimits(max_requests=10_000, max_bytes=20 * 1000 * 1000)
"""Inline requests of one Gemini batch job: 20 MB in all (Gemini's limit for inline requests;
larger input needs a file), and at most 10,000 requests (our cap, which keeps each job's create
call and its inline results small)."""

_PROVIDER = "gemini"
_STATES = {
    "JOB_STATE_PENDING": "validating",
    "JOB_STATE_QUEUED": "validating",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
# google.rpc.Code -> (HTTP status, status name), as the REST API maps them.
_GRPC = {
    1: (499, "CANCELLED"),
    2: (500, "UNKNOWN"),
    3: (400, "INVALID_ARGUMENT"),
    4: (504, "DEADLINE_EXCEEDED"),
    5: (404, "NOT_FOUND"),
    6: (409, "ALREADY_EXISTS"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    10: (409, "ABORTED"),
    11: (400, "OUT_OF_RANGE"),
    12: (501, "UNIMPLEMENTED"),
    13: (500, "INTERNAL"),
    14: (503, "UNAVAILABLE"),
    15: (500, "DATA_LOSS"),
    16: (401, "UNAUTHENTICATED"),
}


def inline_request(
    custom_id: str, model: str, contents: Any, config: Mapping[str, Any]
) -> BatchLine:
    """One inline request of a batch job: what ``generate_content`` would send, keyed by id.

    Args:
        custom_id: the line's id, sent as ``metadata.key`` and handed back with its response.
        model: the model name (lines of one job share it).
        contents: the prompt (text, or JSON part dicts).
        config: the request config (temperature, system instruction, ...).

    Raises:
        TypeError: the contents or config are not JSON data (for example SDK ``Part`` objects).
    """
    payload = {"contents": contents, "config": dict(config), "metadata": {"key": custom_id}}
    try:
        size = len(json.dumps(payload).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"a Gemini batch request needs a JSON prompt (text or part dicts): {exc}"
        ) from exc
    return BatchLine(custom_id, model, payload, size)


class GeminiBatchBackend:
    """Create, poll, read and cancel Gemini batch jobs through one ``google.genai.Client``.

    Args:
        client: the model's client.
        model: the model every line of a job goes to.
        limits: what one job may hold.
        poll_interval, max_poll_interval: see :class:`~._strategies.batch_api.BatchBackend`.
    """

    provider = _PROVIDER

    def __init__(
        self,
        client: genai.Client,
        model: str,
        limits: BatchLimits = GEMINI_BATCH_LIMITS,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
    ) -> None:
        self.client = client
        self.model = model
        self.limits = limits
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.key: Hashable = (_PROVIDER, id(client), model)

    def __repr__(self) -> str:
        return f"GeminiBatchBackend(model={self.model!r}, limits={self.limits!r})"

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        src: Any = [dict(line.payload) for line in lines]
        job = await self.client.aio.batches.create(
            model=self.model, src=src, config={"display_name": tag}
        )
        return str(job.name)

    async def find(self, tag: str) -> str | None:
        pager = await self.client.aio.batches.list(config={"page_size": 100})
        async for job in pager:
            if job.display_name == tag and job.name:
                return str(job.name)
        return None

    async def status(self, job_id: str) -> JobStatus:
        job = await self.client.aio.batches.get(name=job_id)
        state = str(job.state.value if job.state is not None else "JOB_STATE_PENDING")
        responses = (job.dest.inlined_responses if job.dest is not None else None) or []
        failed = sum(1 for response in responses if response.error is not None)
        error = None
        if job.error is not None:
            error = str(job.error.message or job.error.code)
        return JobStatus(
            job_id=job_id,
            state=_STATES.get(state, "in_progress"),
            total=len(responses),
            completed=len(responses) - failed,
            failed=failed,
            error=error,
        )

    async def results(self, job_id: str) -> list[LineOutcome]:
        job = await self.client.aio.batches.get(name=job_id)
        responses = (job.dest.inlined_responses if job.dest is not None else None) or []
        outcomes = []
        for response in responses:
            custom_id = (response.metadata or {}).get("key")
            if custom_id is None:
                continue
            if response.error is not None:
                error = response.error
                outcomes.append(
                    LineOutcome(custom_id, error=_line_error(error.code, error.message))
                )
            elif response.response is not None:
                body = response.response.model_dump(mode="json", exclude_none=True)
                outcomes.append(LineOutcome(custom_id, body=body))
        return outcomes

    async def cancel(self, job_id: str) -> None:
        await self.client.aio.batches.cancel(name=job_id)


def _line_error(code: int | None, message: str | None) -> Exception:
    """The ``google.genai`` error an online call with the same answer raises."""
    from google.genai import errors

    status, name = _GRPC.get(code or 2, (500, "UNKNOWN"))
    body: Mapping[str, Any] = {
        "error": {"code": status, "message": message or name, "status": name}
    }
    if status >= 500:
        return errors.ServerError(status, dict(body))
    return errors.ClientError(status, dict(body))
