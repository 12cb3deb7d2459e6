"""A local Anthropic Messages API server for ``anthropic``.

Point the SDK at :attr:`AnthropicServer.url` (the SDK appends ``/v1/...``)::

    from anthropic import AsyncAnthropic

    async with AnthropicServer() as server:
        client = AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)
        message = await client.messages.create(
            model="claude-sonnet-5",
            max_tokens=256,
            messages=[{"role": "user", "content": "hello"}],
        )

Served:

* ``POST /v1/messages`` (kind ``"messages"``), including ``stream: true``
  (server-sent events), ``tools``/``tool_choice``, structured output via
  ``output_config.format`` (or the older ``output_format``) and ``max_tokens``
  (longer replies are cut to that many words with ``stop_reason: "max_tokens"``).
* ``POST /v1/messages/count_tokens`` (kind ``"count_tokens"``).
* ``GET /v1/models`` (kind ``"models_list"``).
* Message Batches: ``POST /v1/messages/batches`` (kind ``"batches_create"``),
  ``GET /v1/messages/batches/{id}`` (``"batches_retrieve"``), ``POST
  /v1/messages/batches/{id}/cancel`` (``"batches_cancel"``) and ``GET
  /v1/messages/batches/{id}/results`` (``"batches_results"``, JSONL). A batch is refused with 400
  unless every request has a unique ``custom_id`` (``[A-Za-z0-9_-]{1,64}``) and ``params`` with
  ``model``, ``max_tokens`` and ``messages``, and there are at most ``batch_max_requests`` of them
  (413 past ``batch_max_bytes``). It runs like the OpenAI emulator's jobs (``batch_timing``, see
  :class:`~._batches.BatchTiming`; ``processing_status`` ``in_progress`` → ``ended``, or
  ``canceling`` → ``ended``), each request answered through ``respond`` like ``POST
  /v1/messages``; results are ``succeeded``, ``errored`` (the error body), ``canceled`` or
  ``expired``. Counters: ``batch_jobs``, ``batch_line_submissions``.

Token accounting: the prompt is the word count of ``system`` and every message
block (text, tool-use name and JSON input, tool-result text), at least 1; tool
definitions count 0 tokens but are part of the cached prefix.  Prompt caching
follows ``cache_control`` breakpoints in the real order (``tools``, ``system``,
``messages``): a breakpoint whose prefix has at least ``cache_min_tokens`` words
is written (``cache_creation_input_tokens``, in the ``ephemeral_5m`` or, with
``"ttl": "1h"``, ``ephemeral_1h`` bucket) and read back by later requests with
the same prefix for the same model (``cache_read_input_tokens``) until its TTL
(by ``clock``) runs out; reads refresh the TTL.  Smaller breakpoints are
ignored.  ``input_tokens`` is the prompt minus the read and written tokens, as
in the real API.  ``output_tokens`` is the word count of the reply text (plus
tool-use names and JSON inputs), at least 1.

Errors use ``{"type": "error", "error": {"type", "message"}, "request_id"}``
with a ``request-id`` header; 429 is ``rate_limit_error`` (with
``retry-after``, whole seconds rounded up, ``retry-after-ms`` and
``anthropic-ratelimit-*`` headers, fixed figures unless rate limits are
configured), 500 ``api_error``, 529 ``overloaded_error``.

Rate limits (off by default): ``requests_per_minute``, ``input_tokens_per_minute``
(ITPM), ``output_tokens_per_minute`` (OTPM) and ``tokens_per_minute`` (input plus
output) are enforced on ``/v1/messages`` like Anthropic does, as token buckets
refilling continuously at ``limit / 60`` per second that hold ``limit *
rate_limit_window_seconds / 60`` (at least 1; the window defaults to 3 s), so a
minute's worth can never be spent in one burst (see :mod:`._core`).  Accounting
rule, per request:

* admission charges 1 request, the whole prompt (the request's input token
  count) to ITPM, ``max_tokens`` to OTPM and both to the combined limit;
* once the reply is known, ITPM is charged the uncached input (``input_tokens +
  cache_creation_input_tokens``: cache reads do not count, as on the real API),
  OTPM the actual ``output_tokens`` (the unused part of ``max_tokens`` is
  refunded, as Anthropic adjusts its OTPM estimate at the end of a request),
  and the combined limit their sum;
* a request that does not fit is answered 429 ``rate_limit_error`` naming the
  limit that needs the longest wait, with ``retry-after`` (and
  ``retry-after-ms``) giving that wait, and is not charged; one asking for more
  than a per-minute limit itself gets a 429 without ``retry-after``.  Admitted
  requests keep their admission charge when the answer is an error or a fault.

With limits configured every ``/v1/messages`` answer (200, 429 and errors)
carries the real headers of each configured limit:
``anthropic-ratelimit-requests-limit``/``-remaining``/``-reset``,
``anthropic-ratelimit-input-tokens-*``, ``anthropic-ratelimit-output-tokens-*``
and ``anthropic-ratelimit-tokens-*`` (the combined limit if configured, otherwise
whichever of the input/output limits has the least remaining, as Anthropic
reports "the most restrictive limit").  ``limit`` is the per-minute figure,
``remaining`` what the short-window bucket holds after this request (rounded
down) and ``reset`` the RFC 3339 UTC time (by ``clock``) when the bucket is full
again, e.g. ``2025-06-15T14:20:03.5Z`` (fractional seconds only when not whole).
Headers set by a :class:`Reply` or :class:`ErrorResponse` win.  Counters:
``rate_limit_admitted``, ``rate_limit_rejections`` (per limit name),
``rate_limited_count``, ``rate_limit_charged`` (``"requests"``, ``"tokens"``,
``"input_tokens"``, ``"output_tokens"``); ``rate_limit_status()`` gives each
limit's state.

Retries: the ``anthropic`` SDK retries 408/409/429/5xx (including 529) and
connection errors twice by default, honouring ``retry-after-ms``/``retry-after``;
pass ``max_retries=0`` to disable.  It raises ``anthropic.RateLimitError``
(429), ``anthropic.InternalServerError`` (500) and its subclasses
``ServiceUnavailableError`` (503), ``GatewayTimeoutError`` (504) and
``OverloadedError`` (529), all ``anthropic.APIStatusError`` with
``.status_code``, ``.response`` (``httpx2``; ``.headers`` has ``retry-after``),
``.body``, ``.type`` (the error type) and ``.request_id``; a client-side timeout
raises ``anthropic.APITimeoutError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from ._batches import BatchJob, BatchTiming, LineAnswer, answer_line, line_request
from ._core import (
    AccountFault,
    APIError,
    FaultFn,
    InsufficientQuota,
    InvalidAPIKey,
    JSONDict,
    Malformed,
    ProviderRequest,
    ProviderServer,
    RateLimitStatus,
    Reply,
    RequestDetails,
    Respond,
    Route,
    count_tokens,
    cut_to_limit,
    output_tokens,
    retry_after_headers,
    split_text,
    tool_spec,
    word_count,
)
from ._http import HTTPRequest, HTTPResponse
from ._rate_limits import RateLimitRejection

_BATCH = re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)(?P<action>/cancel|/results)?$")
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

__all__ = ["AnthropicServer"]

DEFAULT_ANTHROPIC_MODELS = ("claude-opus-5", "claude-sonnet-5", "claude-haiku-4-5")

_ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed your organization's rate limit. Please try again later.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_LIMIT_WORDS = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}


def format_timestamp(epoch_seconds: float) -> str:
    """An RFC 3339 UTC time such as ``2025-06-15T14:20:03Z`` (milliseconds only when not 0)."""
    millis = round(epoch_seconds * 1000)
    moment = datetime.fromtimestamp(millis // 1000, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = millis % 1000
    if fraction:
        text += "." + f"{fraction:03d}".rstrip("0")
    return text + "Z"


def _max_tokens(body: Mapping[str, Any]) -> int:
    value = body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, Mapping):
        return ""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return f"{block.get('name', '')} {json.dumps(block.get('input', {}))}"
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return " ".join(_block_text(b) for b in content)
        return str(content) if content is not None else ""
    return ""


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def _ttl(block: Any) -> float | None:
    if not isinstance(block, Mapping):
        return None
    control = block.get("cache_control")
    if not isinstance(control, Mapping):
        return None
    return _TTL_SECONDS.get(str(control.get("ttl", "5m")), 300.0)


@dataclass(frozen=True)
class _Segment:
    key: str
    tokens: int
    ttl: float | None


def _segments(body: Mapping[str, Any]) -> list[_Segment]:
    segments: list[_Segment] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, Mapping):
            clean = {k: v for k, v in tool.items() if k != "cache_control"}
            segments.append(_Segment(json.dumps(clean, sort_keys=True), 0, _ttl(tool)))
    for block in _blocks(body.get("system")):
        segments.append(_Segment(_block_text(block), word_count(_block_text(block)), _ttl(block)))
    for message in body.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        for block in _blocks(message.get("content")):
            text = _block_text(block)
            segments.append(
                _Segment(f"{message.get('role')}:{text}", word_count(text), _ttl(block))
            )
    return segments


@dataclass(frozen=True)
class _CacheUsage:
    read: int = 0
    created: int = 0
    created_1h: bool = False


class _BreakpointCache:
    """Anthropic-style explicit prompt caching at ``cache_control`` breakpoints."""

    def __init__(self, min_tokens: int) -> None:
        self.min_tokens = min_tokens
        self._entries: dict[tuple[str, str], float] = {}

    def process(self, model: str, segments: Sequence[_Segment], now: float) -> _CacheUsage:
        hasher = hashlib.sha256()
        total = 0
        points: list[tuple[int, str, float]] = []
        for segment in segments:
            hasher.update(segment.key.encode("utf-8") + b"\x00")
            total += segment.tokens
            if segment.ttl is not None and total > 0 and total >= self.min_tokens:
                points.append((total, hasher.hexdigest(), segment.ttl))
        if not points:
            return _CacheUsage()
        read = 0
        for tokens, digest, _ in points:
            expiry = self._entries.get((model, digest))
            if expiry is not None and expiry > now:
                read = tokens
        last_tokens, _, last_ttl = points[-1]
        for _tokens, digest, ttl in points:
            key = (model, digest)
            self._entries[key] = max(self._entries.get(key, 0.0), now + ttl)
        return _CacheUsage(read=read, created=last_tokens - read, created_1h=last_ttl > 300.0)

    def clear(self) -> None:
        self._entries.clear()


class AnthropicServer(ProviderServer):
    """A local Anthropic Messages API server.

    Args:
        respond: Response function for messages (see :class:`ProviderServer`).
        fault_fn: Per-request fault function.
        latency: Seconds to delay every request.
        clock: Wall clock for prompt-cache expiry.
        models: If given, only these models exist (others get 404 ``not_found_error``).
        prompt_caching: Honour ``cache_control`` breakpoints.
        cache_min_tokens: Smallest cacheable prefix in words (1024, as Sonnet/Opus).
        requests_per_minute: Enforce this RPM on messages (``None``: no limit).
        tokens_per_minute: Enforce this limit on input plus output tokens (``None``: no limit).
        input_tokens_per_minute: Enforce this ITPM (``None``: no limit).
        output_tokens_per_minute: Enforce this OTPM (``None``: no limit).
        rate_limit_window_seconds: The window the per-minute limits are enforced over:
            each bucket holds ``limit * window / 60`` (3 s: 5% of a minute's worth).
        api_key: If set, the key must match, otherwise 401 ``authentication_error``; it is
            read from ``Authorization: Bearer`` (what anthropic 2.x sends) or ``x-api-key``.
        batch_timing: How Message Batches progress (``None``: ``BatchTiming()``, real time).
        batch_max_requests: Requests one Message Batch may hold (100,000, as Anthropic).
        batch_max_bytes: Bytes one Message Batch request body may take (256 MB, as Anthropic).
        host: See :class:`ProviderServer`.
        port: See :class:`ProviderServer`.
        raise_handler_errors: See :class:`ProviderServer`.
    """

    provider: ClassVar[str] = "anthropic"
    kinds: ClassVar[frozenset[str]] = frozenset(
        {
            "messages",
            "count_tokens",
            "models_list",
            "batches_create",
            "batches_retrieve",
            "batches_cancel",
            "batches_results",
            "unknown",
        }
    )
    generation_kinds: ClassVar[frozenset[str]] = frozenset({"messages"})

    def __init__(
        self,
        *,
        respond: Respond | None = None,
        fault_fn: FaultFn | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        models: Collection[str] | None = None,
        prompt_caching: bool = True,
        cache_min_tokens: int = 1024,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        input_tokens_per_minute: int | None = None,
        output_tokens_per_minute: int | None = None,
        rate_limit_window_seconds: float = 3.0,
        api_key: str | None = None,
        batch_timing: BatchTiming | None = None,
        batch_max_requests: int = 100_000,
        batch_max_bytes: int = 256 * 1024 * 1024,
        host: str = "127.0.0.1",
        port: int = 0,
        raise_handler_errors: bool = True,
    ) -> None:
        super().__init__(
            respond=respond,
            fault_fn=fault_fn,
            latency=latency,
            clock=clock,
            host=host,
            port=port,
            api_key=api_key,
            raise_handler_errors=raise_handler_errors,
        )
        self.models = None if models is None else list(models)
        self.prompt_caching = prompt_caching
        self._cache = _BreakpointCache(cache_min_tokens)
        self._configure_rate_limits(
            {
                "requests": requests_per_minute,
                "tokens": tokens_per_minute,
                "input_tokens": input_tokens_per_minute,
                "output_tokens": output_tokens_per_minute,
            },
            rate_limit_window_seconds,
        )
        self.batch_timing = batch_timing if batch_timing is not None else BatchTiming()
        self.batch_max_requests = batch_max_requests
        self.batch_max_bytes = batch_max_bytes
        self.batch_jobs: dict[str, BatchJob] = {}
        self.batch_line_submissions: Counter[str] = Counter()

    def clear_prompt_cache(self) -> None:
        """Forget every cached prompt prefix."""
        self._cache.clear()

    # ----------------------------------------------------------------- routing

    def _check_api_key(self, raw: HTTPRequest) -> APIError | None:
        presented = raw.headers.get("x-api-key") or raw.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if presented == self.api_key:
            return None
        return APIError(401, "invalid x-api-key")

    def _route(self, raw: HTTPRequest, body: JSONDict) -> Route | None:
        if raw.method == "POST" and raw.path == "/v1/messages":
            return Route(self._details(body, "messages", generation=True), self._messages)
        if raw.method == "POST" and raw.path == "/v1/messages/count_tokens":
            return Route(self._details(body, "count_tokens", generation=False), self._count_tokens)
        if raw.method == "GET" and raw.path == "/v1/models":
            return Route(RequestDetails(kind="models_list"), self._models_list)
        if raw.method == "POST" and raw.path == "/v1/messages/batches":
            return Route(RequestDetails(kind="batches_create"), self._batches_create)
        match = _BATCH.match(raw.path)
        if match is not None:
            action = match["action"]
            if raw.method == "GET" and action is None:
                return Route(RequestDetails(kind="batches_retrieve"), self._batches_retrieve)
            if raw.method == "POST" and action == "/cancel":
                return Route(RequestDetails(kind="batches_cancel"), self._batches_cancel)
            if raw.method == "GET" and action == "/results":
                return Route(RequestDetails(kind="batches_results"), self._batches_results)
        return None

    # ----------------------------------------------------------------- message batches

    def _job(self, request: ProviderRequest) -> BatchJob:
        match = _BATCH.match(request.path)
        job = self.batch_jobs.get(match["id"]) if match is not None else None
        if job is None:
            raise APIError(404, "Message batch not found.")
        return job

    async def _batches_create(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        requests = request.body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise APIError(400, "requests: a non-empty list is required")
        if len(requests) > self.batch_max_requests:
            raise APIError(400, f"requests: at most {self.batch_max_requests} requests")
        if len(json.dumps(request.body)) > self.batch_max_bytes:
            raise APIError(413, f"Request exceeds the maximum size of {self.batch_max_bytes}")
        lines: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for index, entry in enumerate(requests):
            custom_id = entry.get("custom_id") if isinstance(entry, Mapping) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                raise APIError(400, f"requests.{index}.custom_id: must match [A-Za-z0-9_-]{{1,64}}")
            if custom_id in seen:
                raise APIError(400, f"requests.{index}.custom_id: duplicate {custom_id!r}")
            params = entry.get("params")
            if not isinstance(params, Mapping) or not all(
                key in params for key in ("model", "max_tokens", "messages")
            ):
                raise APIError(
                    400, f"requests.{index}.params: model, max_tokens, messages required"
                )
            seen.add(custom_id)
            lines.append((custom_id, dict(params)))
        job = BatchJob(
            self._next_id("msgbatch_", 24),
            lines,
            self.clock(),
            self.batch_timing.for_job(len(self.batch_jobs)),
        )
        self.batch_jobs[job.id] = job
        self.batch_line_submissions.update(custom_id for custom_id, _ in lines)
        return self._json_response(self._batch_json(job))

    async def _batches_retrieve(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await job.advance(self.clock(), self._run_line)
        return self._json_response(self._batch_json(job))

    async def _batches_cancel(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await job.advance(self.clock(), self._run_line)
        job.cancel(self.clock())
        return self._json_response(self._batch_json(job))

    async def _batches_results(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await job.advance(self.clock(), self._run_line)
        if not job.done:
            raise APIError(400, f"Message batch {job.id} has not ended yet.")
        not_run = "canceled" if job.state == "cancelled" else "expired"
        out = []
        for custom_id, _ in job.lines:
            answer = job.answers.get(custom_id)
            result: JSONDict
            if answer is None:
                result = {"type": not_run}
            elif 200 <= answer[0] < 300:
                result = {"type": "succeeded", "message": answer[1]}
            else:
                result = {"type": "errored", "error": answer[1]}
            out.append(json.dumps({"custom_id": custom_id, "result": result}))
        data = ("\n".join(out) + "\n").encode("utf-8")
        return HTTPResponse(200, data, content_type="application/binary")

    async def _run_line(self, body: Any) -> LineAnswer:
        details = self._details(body, "messages", generation=True)
        request = line_request(self, details, body, "/v1/messages")
        return await answer_line(self, request, self._messages)

    def _batch_json(self, job: BatchJob) -> JSONDict:
        def at(state: str) -> str | None:
            moment = job.times.get(state)
            return None if moment is None else format_timestamp(moment)

        unanswered = len(job.lines) - len(job.answers)
        ended = job.done
        window = job.timing.completion_window / max(job.timing.time_scale, 1e-12)
        if job.state == "cancelling":
            status = "canceling"
        elif ended:
            status = "ended"
        else:
            status = "in_progress"
        ended_at = next(
            (at(state) for state in ("completed", "expired", "cancelled") if state in job.times),
            None,
        )
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if ended else unanswered,
                "succeeded": job.completed_count,
                "errored": job.failed_count,
                "canceled": unanswered if job.state == "cancelled" else 0,
                "expired": unanswered if ended and job.state != "cancelled" else 0,
            },
            "ended_at": ended_at,
            "created_at": format_timestamp(job.created_at),
            "expires_at": format_timestamp(job.created_at + window),
            "archived_at": None,
            "cancel_initiated_at": at("cancelling"),
            "results_url": f"{self.url}/v1/messages/batches/{job.id}/results" if ended else None,
        }

    def _details(self, body: JSONDict, kind: str, *, generation: bool) -> RequestDetails:
        messages = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
        system = "\n".join(_block_text(b) for b in _blocks(body.get("system")))
        user = [
            _block_text(b)
            for m in messages
            if m.get("role") == "user"
            for b in _blocks(m.get("content"))
            if isinstance(b, Mapping) and b.get("type") == "text"
        ]
        all_text = [system, *(_block_text(b) for m in messages for b in _blocks(m.get("content")))]
        tools = tuple(
            tool_spec(t, t.get("input_schema"))
            for t in body.get("tools") or []
            if isinstance(t, Mapping) and isinstance(t.get("name"), str)
        )
        model = body.get("model")
        return RequestDetails(
            kind=kind,
            model=model if isinstance(model, str) else None,
            prompt="\n".join(user),
            system=system,
            input_tokens=count_tokens(" ".join(all_text)),
            response_schema=_response_schema(body),
            tools=tools,
            tool_choice=_tool_choice(body.get("tool_choice")),
            generation=generation,
        )

    # ----------------------------------------------------------------- errors

    def _account_error(
        self, fault: AccountFault, raw: HTTPRequest, request: ProviderRequest
    ) -> APIError:
        if isinstance(fault, InsufficientQuota):
            return APIError(
                400,
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.",
            )
        if isinstance(fault, InvalidAPIKey):
            return APIError(401, "invalid x-api-key")
        return APIError(404, f"model: {request.model}")

    def _error_response(
        self,
        status: int,
        message: str | None,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> HTTPResponse:
        error_type, default_message = _ERROR_KINDS.get(
            status,
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", "Error"),
        )
        request_id = self._next_id("req_", 24)
        body = {
            "type": "error",
            "error": {"type": code or error_type, "message": message or default_message},
            "request_id": request_id,
        }
        extra = [("request-id", request_id), *retry_after_headers(retry_after)]
        if status == 429 and not self.rate_limits:
            extra.extend(
                [
                    ("anthropic-ratelimit-requests-limit", "50"),
                    ("anthropic-ratelimit-requests-remaining", "0"),
                    ("anthropic-ratelimit-requests-reset", "1970-01-01T00:00:00Z"),
                ]
            )
        return self._json_response(body, status=status, headers=[*extra, *headers])

    # ------------------------------------------------------------ rate limits

    def _rate_limit_reservation(self, request: ProviderRequest) -> dict[str, int]:
        output = _max_tokens(request.body)
        return {
            "tokens": request.input_tokens + output,
            "input_tokens": request.input_tokens,
            "output_tokens": output,
        }

    def _rate_limit_error(self, rejection: RateLimitRejection) -> HTTPResponse:
        what = f"{rejection.limit} {_LIMIT_WORDS[rejection.name]} per minute"
        if rejection.retry_after is None:
            message = (
                f"This request would exceed your organization's rate limit of {what} "
                f"on its own ({rejection.requested} requested). "
                "Reduce the prompt length or the maximum tokens requested."
            )
        else:
            message = (
                f"This request would exceed your organization's rate limit of {what}. "
                "Please try again later or contact sales to discuss your options for a "
                "rate limit increase."
            )
        return self._error_response(429, message, retry_after=rejection.retry_after)

    def _rate_limit_headers(
        self, status: Mapping[str, RateLimitStatus], now: float
    ) -> list[tuple[str, str]]:
        shown: dict[str, RateLimitStatus] = {
            name: state for name, state in status.items() if name != "tokens"
        }
        combined = status.get("tokens")
        if combined is None:
            candidates = [status[n] for n in ("input_tokens", "output_tokens") if n in status]
            combined = min(candidates, key=lambda s: s.remaining) if candidates else None
        if combined is not None:
            shown["tokens"] = combined
        headers: list[tuple[str, str]] = []
        for name in ("requests", "tokens", "input_tokens", "output_tokens"):
            state = shown.get(name)
            if state is None:
                continue
            prefix = f"anthropic-ratelimit-{name.replace('_', '-')}"
            headers.extend(
                [
                    (f"{prefix}-limit", str(state.limit)),
                    (f"{prefix}-remaining", str(state.remaining)),
                    (f"{prefix}-reset", format_timestamp(now + state.reset)),
                ]
            )
        return headers

    # ------------------------------------------------------------- generation

    def _validate(self, request: ProviderRequest, *, need_max_tokens: bool) -> None:
        body = request.body
        for name in ("model", "messages", *(("max_tokens",) if need_max_tokens else ())):
            if name not in body:
                raise APIError(400, f"{name}: Field required")
        if not isinstance(body["messages"], list) or not body["messages"]:
            raise APIError(400, "messages: at least one message is required")
        if self.models is not None and request.model not in self.models:
            raise APIError(404, f"model: {request.model}")

    async def _messages(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        self._validate(request, need_max_tokens=True)
        reply = await self._reply(request, malformed)
        body = request.body
        stop = reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")
        cut = cut_to_limit(reply, body.get("max_tokens"))
        if cut is not None:
            reply, stop = cut, "max_tokens"
        text = reply.text
        content: list[JSONDict] = []
        if text is not None and (text or not reply.tool_calls):
            content.append({"type": "text", "text": text})
        for call in reply.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id or self._next_id("toolu_", 24),
                    "name": call.name,
                    "input": call.arguments_object(),
                }
            )
        usage = self._usage(request, reply)
        charged_input = usage["input_tokens"] + usage["cache_creation_input_tokens"]
        self._settle_rate_limits(
            request,
            {
                "tokens": charged_input + usage["output_tokens"],
                "input_tokens": charged_input,
                "output_tokens": usage["output_tokens"],
            },
        )
        message_id = self._next_id("msg_", 24)
        headers = [("request-id", self._next_id("req_", 24)), *reply.headers.items()]
        if body.get("stream") is True:
            stream = self._stream(message_id, request.model or "", content, stop, usage)
            return HTTPResponse(
                200, stream=stream, content_type="text/event-stream; charset=utf-8", headers=headers
            )
        payload = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        return self._json_response(payload, headers=headers)

    def _usage(self, request: ProviderRequest, reply: Reply) -> JSONDict:
        total = reply.input_tokens if reply.input_tokens is not None else request.input_tokens
        if reply.cached_tokens is not None:
            cache = _CacheUsage(read=reply.cached_tokens)
        elif self.prompt_caching:
            cache = self._cache.process(request.model or "", _segments(request.body), self.clock())
        else:
            cache = _CacheUsage()
        output = output_tokens(reply)
        return {
            "input_tokens": max(total - cache.read - cache.created, 0),
            "cache_creation_input_tokens": cache.created,
            "cache_read_input_tokens": cache.read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0 if cache.created_1h else cache.created,
                "ephemeral_1h_input_tokens": cache.created if cache.created_1h else 0,
            },
            "output_tokens": output,
            "service_tier": "standard",
        }

    async def _stream(
        self, message_id: str, model: str, content: list[JSONDict], stop: str, usage: JSONDict
    ) -> AsyncIterator[bytes]:
        def event(name: str, data: JSONDict) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        start_usage = dict(usage, output_tokens=1)
        message: JSONDict = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        yield event("message_start", {"type": "message_start", "message": message})
        for index, block in enumerate(content):
            if block["type"] == "text":
                yield event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                yield event("ping", {"type": "ping"})
                for piece in split_text(block["text"]):
                    delta = {"type": "text_delta", "text": piece}
                    yield event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                    await asyncio.sleep(0)
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                yield event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": head},
                )
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                yield event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            yield event("content_block_stop", {"type": "content_block_stop", "index": index})
        yield event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        yield event("message_stop", {"type": "message_stop"})

    async def _count_tokens(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        self._validate(request, need_max_tokens=False)
        return self._json_response({"input_tokens": request.input_tokens})

    async def _models_list(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        names = list(self.models) if self.models is not None else list(DEFAULT_ANTHROPIC_MODELS)
        data = [
            {"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
            for n in names
        ]
        return self._json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        )


def _tool_choice(choice: Any) -> str | None:
    if not isinstance(choice, Mapping):
        return None
    kind = choice.get("type")
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if kind in ("auto", "none"):
        return str(kind)
    return None


def _response_schema(body: Mapping[str, Any]) -> JSONDict | None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, Mapping) else None
    if not isinstance(fmt, Mapping):
        fmt = body.get("output_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return dict(schema) if isinstance(schema, Mapping) else {"type": "object"}
    return None
