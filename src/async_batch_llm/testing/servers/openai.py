"""A local OpenAI Chat Completions server for ``openai``, pydantic-ai and LangChain.

Point the SDK at :attr:`OpenAIServer.base_url` (the ``/v1`` root)::

    from openai import AsyncOpenAI

    async with OpenAIServer() as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )

The same URL works for pydantic-ai (``OpenAIChatModel(...,
provider=OpenAIProvider(base_url=server.base_url, api_key="test"))``) and
LangChain (``ChatOpenAI(base_url=server.base_url, api_key="test", model=...)``).
Served:

* ``POST /v1/chat/completions`` (kind ``"chat_completions"``), including
  ``stream: true`` (server-sent events, with a usage chunk when
  ``stream_options.include_usage`` is set), ``n``, ``response_format``
  (``json_schema``/``json_object``), ``tools``/``tool_choice`` and
  ``max_tokens``/``max_completion_tokens`` (longer replies are cut to that many
  words with ``finish_reason: "length"``).
* ``GET /v1/models`` and ``GET /v1/models/{id}`` (kinds ``"models_list"``, ``"models_retrieve"``).
* The Batch API: ``POST /v1/files`` (multipart upload, ``purpose: "batch"``; kind
  ``"files_create"``), ``GET /v1/files/{id}`` and ``GET /v1/files/{id}/content``
  (``"files_retrieve"``, ``"files_content"``), ``POST /v1/batches`` (``"batches_create"``),
  ``GET /v1/batches/{id}`` (``"batches_retrieve"``), ``GET /v1/batches`` (``"batches_list"``,
  newest first, ``after``/``limit`` pages) and ``POST /v1/batches/{id}/cancel``
  (``"batches_cancel"``). A job validates its input file (JSONL lines with a unique
  ``custom_id``, ``method: "POST"``, the batch's ``url`` and one model per file, at most
  ``batch_max_requests`` lines and ``batch_max_bytes`` bytes; otherwise it ends ``failed``
  with ``errors``), then runs through ``validating``, ``in_progress``, ``finalizing`` and
  ``completed`` on the server clock times ``batch_timing.time_scale`` (see
  :class:`~._batches.BatchTiming`), answering each line through ``respond`` like a chat
  completion (a fault returned for a line becomes that line's error answer).  2xx answers go
  to the output file, the others to the error file; an expired (``expire_after_lines`` or past
  its window) or cancelled job reports its unanswered lines in the error file with
  ``error.code`` ``"batch_expired"`` / ``"batch_cancelled"``. Counters: ``batch_jobs``
  (every job created) and ``batch_line_submissions`` (``custom_id`` → how many jobs held it).

Structured output: pydantic-ai 2.62's ``OpenAIChatModel`` asks for a pydantic
``output_type`` with a ``final_result`` function tool and ``tool_choice:
"required"``; the default response function answers that with a tool call
whose arguments are an example of the tool's schema, and a response function
returning a ``dict`` gets that dict as the arguments of the forced tool.

Token accounting: ``prompt_tokens`` is the word count of every message's text
(all roles, plus assistant tool-call names/arguments), at least 1;
``completion_tokens`` is the word count of the reply text (plus tool-call names
and JSON arguments), at least 1, times ``n``.  Prompt caching is emulated like
OpenAI's automatic prefix caching: the word sequence of the prompt is compared
with earlier requests for the same model, and ``prompt_tokens_details.
cached_tokens`` is the longest shared prefix rounded down to
``prompt_cache_min_tokens + k * prompt_cache_increment`` (1024 + k*128, so 0 below
1024 shared words); entries expire ``prompt_cache_ttl`` seconds (by ``clock``)
after their last use.

Errors use ``{"error": {"message", "type", "param", "code"}}``.
:class:`RateLimited` answers 429 (``type: "requests"``, ``code:
"rate_limit_exceeded"``) with ``retry-after`` (whole seconds, rounded up) and
``retry-after-ms`` headers plus ``x-ratelimit-*`` headers (fixed figures unless
rate limits are configured).  Every response has an ``x-request-id`` header.

Rate limits (off by default): ``requests_per_minute`` and ``tokens_per_minute``
are enforced on chat completions like OpenAI does, as token buckets refilling
continuously at ``limit / 60`` per second that hold ``limit *
rate_limit_window_seconds / 60`` (at least 1; the window defaults to 3 s), so
a minute's worth can never be spent in one burst (see :mod:`._core`).
Accounting rule, per request:

* admission charges 1 request and ``prompt_tokens + max_tokens * n`` tokens
  (``max_completion_tokens`` if given, else ``max_tokens``, else 0);
* once the reply is known the token charge becomes ``prompt_tokens +
  max(max_tokens * n, completion_tokens)``: a reply longer than the reservation
  (or one with no ``max_tokens``) is charged its completion tokens on top, a
  shorter one is not refunded (OpenAI counts ``max_tokens`` against TPM);
* a request that does not fit is answered 429 ``rate_limit_exceeded`` with
  ``type: "requests"`` or ``type: "tokens"`` (the limit that needs the longest
  wait), ``retry-after``/``retry-after-ms`` headers giving that wait, and is not
  charged; one asking for more tokens than ``tokens_per_minute`` itself gets a
  429 "Request too large" without ``retry-after``.  Admitted requests keep their
  charge whatever the answer (faults and errors included).

With limits configured every chat-completion answer (200, 429 and errors)
carries the real headers of each configured limit: ``x-ratelimit-limit-requests``
/ ``-tokens`` (the per-minute figure), ``x-ratelimit-remaining-requests`` /
``-tokens`` (what the short-window bucket holds after this request, rounded
down) and ``x-ratelimit-reset-requests`` / ``-tokens`` (time until the bucket is
full again, as OpenAI writes durations: ``"12ms"``, ``"1s"``, ``"1m30.5s"``,
``"6m0s"``).  Headers set by a :class:`Reply` or :class:`ErrorResponse` win.
Counters: ``rate_limit_admitted``, ``rate_limit_rejections`` (per limit name),
``rate_limited_count``, ``rate_limit_charged`` (``"requests"``, ``"tokens"``);
``rate_limit_status()`` gives each limit's state.

Billing: :attr:`OpenAIServer.usage_log` keeps the usage of every chat completion answered
(model, prompt, cached and completion tokens), so a test can price what the server billed.

Retries: the ``openai`` SDK retries 408/409/429/5xx and connection errors twice
by default (honouring ``retry-after-ms``/``retry-after`` up to 120 s, otherwise
0.5 s doubling up to 8 s with jitter); pass ``max_retries=0`` to disable.  It
raises ``openai.RateLimitError`` (429), ``openai.InternalServerError`` (>= 500),
``openai.BadRequestError``/``AuthenticationError``/``NotFoundError``/... , all
``openai.APIStatusError`` with ``.status_code``, ``.response`` (``httpx2``; its
``.headers`` carry ``retry-after``), ``.body`` (the ``error`` object) and
``.request_id``; a client-side timeout raises ``openai.APITimeoutError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar

from ._batches import BatchJob, BatchTiming, LineAnswer, line_request
from ._core import (
    AccountFault,
    APIError,
    ErrorResponse,
    FaultFn,
    InsufficientQuota,
    InvalidAPIKey,
    JSONDict,
    Malformed,
    ProviderRequest,
    ProviderServer,
    RateLimited,
    RateLimitStatus,
    Reply,
    RequestDetails,
    Respond,
    Route,
    ServerError,
    ToolCall,
    ToolSpec,
    _FaultSignal,
    _HandlerFailure,
    count_tokens,
    cut_to_limit,
    output_tokens,
    retry_after_headers,
    split_text,
    tool_spec,
)
from ._http import HTTPRequest, HTTPResponse
from ._rate_limits import RateLimitRejection

__all__ = ["OpenAIServer"]

_MODEL = re.compile(r"^/v1/models/(?P<model>[^/]+)$")
_FILE = re.compile(r"^/v1/files/(?P<id>[^/]+)(?P<content>/content)?$")
_BATCH = re.compile(r"^/v1/batches/(?P<id>[^/]+)(?P<cancel>/cancel)?$")
_BATCH_ENDPOINTS = ("/v1/chat/completions",)


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def json(self) -> JSONDict:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


DEFAULT_OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini")

_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", None, "Not found."),
    409: ("invalid_request_error", None, "Conflict."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM). Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it.

    Milliseconds below one second (``"12ms"``), otherwise hours, minutes and seconds with
    up to three decimals (``"1s"``, ``"1m30.5s"``, ``"6m0s"``, ``"1h0m0s"``); ``"0s"`` for 0.
    """
    total_ms = max(round(seconds * 1000), 0)
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, millis = divmod(rest, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _reserved_completion(body: Mapping[str, Any]) -> int:
    """``max_completion_tokens`` (else ``max_tokens``) times ``n``, or 0 when neither is given."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return 0
    requested_n = body.get("n")
    n = requested_n if isinstance(requested_n, int) and requested_n > 0 else 1
    return limit * n


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") in ("text", "input_text", None)
        )
    return ""


def _message_text(message: Mapping[str, Any]) -> str:
    pieces = [_text(message.get("content"))]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            pieces.append(f"{function.get('name', '')} {function.get('arguments', '')}")
    return " ".join(p for p in pieces if p)


def _tool_choice(choice: Any) -> str | None:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, Mapping):
        function = choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
        allowed = choice.get("allowed_tools")
        if isinstance(allowed, Mapping):
            return str(allowed.get("mode", "auto"))
    return None


def _tools(tools: Any) -> tuple[ToolSpec, ...]:
    specs = []
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            specs.append(tool_spec(function, function.get("parameters")))
    return tuple(specs)


def _response_schema(response_format: Any) -> JSONDict | None:
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return dict(schema) if isinstance(schema, Mapping) else {"type": "object"}
    if kind == "json_object":
        return {"type": "object"}
    return None


class _PrefixCache:
    """OpenAI-style automatic prefix caching over word sequences."""

    def __init__(self, min_tokens: int, increment: int, ttl: float) -> None:
        self.min_tokens = min_tokens
        self.increment = max(increment, 1)
        self.ttl = ttl
        self._entries: dict[tuple[str, int, str], float] = {}

    def _boundaries(self, length: int) -> list[int]:
        start = self.min_tokens if self.min_tokens > 0 else self.increment
        return list(range(start, length + 1, self.increment))

    def lookup_and_store(self, model: str, words: Sequence[str], now: float) -> int:
        boundaries = self._boundaries(len(words))
        if not boundaries:
            return 0
        digests: dict[int, str] = {}
        hasher = hashlib.sha256()
        position = 0
        for boundary in boundaries:
            for word in words[position:boundary]:
                hasher.update(word.encode("utf-8") + b"\x00")
            position = boundary
            digests[boundary] = hasher.hexdigest()
        hit = 0
        for boundary, digest in digests.items():
            expiry = self._entries.get((model, boundary, digest))
            if expiry is not None and expiry > now:
                hit = boundary
        for boundary, digest in digests.items():
            self._entries[(model, boundary, digest)] = now + self.ttl
        return hit

    def clear(self) -> None:
        self._entries.clear()


class OpenAIServer(ProviderServer):
    """A local OpenAI Chat Completions server.

    Args:
        respond: Response function for chat completions (see :class:`ProviderServer`).
        fault_fn: Per-request fault function.
        latency: Seconds to delay every request.
        clock: Wall clock for ``created`` timestamps and prompt-cache expiry.
        models: If given, only these models exist (others get 404
            ``model_not_found``); also the list served by ``GET /v1/models``.
        prompt_caching: Emulate automatic prefix caching (``cached_tokens``).
        prompt_cache_min_tokens: Shortest cacheable prefix (1024, as OpenAI).
        prompt_cache_increment: Cache granularity above the minimum (128, as OpenAI).
        prompt_cache_ttl: Seconds an unused prefix stays cached (600).
        requests_per_minute: Enforce this RPM on chat completions (``None``: no limit).
        tokens_per_minute: Enforce this TPM on chat completions (``None``: no limit).
        rate_limit_window_seconds: The window the per-minute limits are enforced over:
            each bucket holds ``limit * window / 60`` (3 s: 5% of a minute's worth).
        api_key: If set, ``Authorization: Bearer <key>`` must match, otherwise 401.
        batch_timing: How batch jobs progress (``None``: ``BatchTiming()``, real time).
        batch_max_requests: Lines one batch input file may hold (50,000, as OpenAI).
        batch_max_bytes: Bytes one batch input file may hold (200 MB, as OpenAI).
        host: See :class:`ProviderServer`.
        port: See :class:`ProviderServer`.
        raise_handler_errors: See :class:`ProviderServer`.
    """

    provider: ClassVar[str] = "openai"
    kinds: ClassVar[frozenset[str]] = frozenset(
        {
            "chat_completions",
            "models_list",
            "models_retrieve",
            "files_create",
            "files_retrieve",
            "files_content",
            "batches_create",
            "batches_retrieve",
            "batches_list",
            "batches_cancel",
            "unknown",
        }
    )
    generation_kinds: ClassVar[frozenset[str]] = frozenset({"chat_completions"})

    def __init__(
        self,
        *,
        respond: Respond | None = None,
        fault_fn: FaultFn | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        models: Collection[str] | None = None,
        prompt_caching: bool = True,
        prompt_cache_min_tokens: int = 1024,
        prompt_cache_increment: int = 128,
        prompt_cache_ttl: float = 600.0,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        rate_limit_window_seconds: float = 3.0,
        api_key: str | None = None,
        batch_timing: BatchTiming | None = None,
        batch_max_requests: int = 50_000,
        batch_max_bytes: int = 200 * 1024 * 1024,
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
        self._prefix_cache = _PrefixCache(
            prompt_cache_min_tokens, prompt_cache_increment, prompt_cache_ttl
        )
        self._configure_rate_limits(
            {"requests": requests_per_minute, "tokens": tokens_per_minute},
            rate_limit_window_seconds,
        )
        self.batch_timing = batch_timing if batch_timing is not None else BatchTiming()
        self.batch_max_requests = batch_max_requests
        self.batch_max_bytes = batch_max_bytes
        self.batch_jobs: dict[str, BatchJob] = {}
        self.batch_line_submissions: Counter[str] = Counter()
        self._files: dict[str, _File] = {}
        self.usage_log: list[JSONDict] = []
        """The usage billed by every chat completion answered, in answer order: ``{"model",
        "prompt_tokens", "cached_tokens", "completion_tokens"}`` (the figures of its ``usage``)."""

    def reset_stats(self) -> None:
        """Clear recorded requests, exchanges, counters and :attr:`usage_log`."""
        super().reset_stats()
        self.usage_log.clear()

    @property
    def base_url(self) -> str:
        """The ``/v1`` root the ``openai`` SDK expects as ``base_url``."""
        return f"{self.url}/v1"

    def clear_prompt_cache(self) -> None:
        """Forget every cached prompt prefix."""
        self._prefix_cache.clear()

    # ----------------------------------------------------------------- routing

    def _check_api_key(self, raw: HTTPRequest) -> APIError | None:
        header = raw.headers.get("authorization", "")
        if header == f"Bearer {self.api_key}":
            return None
        presented = header.removeprefix("Bearer ")
        shown = f"{presented[:3]}***{presented[-4:]}" if len(presented) > 8 else "***"
        return APIError(
            401,
            f"Incorrect API key provided: {shown}. "
            "You can find your API key in your account settings.",
            code="invalid_api_key",
        )

    def _route(self, raw: HTTPRequest, body: JSONDict) -> Route | None:
        if raw.path == "/v1/chat/completions" and raw.method == "POST":
            return Route(self._chat_details(body), self._chat)
        if raw.path == "/v1/models" and raw.method == "GET":
            return Route(RequestDetails(kind="models_list"), self._models_list)
        batch_route = self._batch_route(raw)
        if batch_route is not None:
            return batch_route
        match = _MODEL.match(raw.path)
        if match is not None and raw.method == "GET":
            return Route(
                RequestDetails(kind="models_retrieve", model=match["model"]), self._models_retrieve
            )
        return None

    def _chat_details(self, body: JSONDict) -> RequestDetails:
        messages = body.get("messages")
        messages = (
            [m for m in messages if isinstance(m, Mapping)] if isinstance(messages, list) else []
        )
        model = body.get("model")
        return RequestDetails(
            kind="chat_completions",
            model=model if isinstance(model, str) else None,
            prompt="\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user"),
            system="\n".join(
                _text(m.get("content"))
                for m in messages
                if m.get("role") in ("system", "developer")
            ),
            input_tokens=count_tokens(" ".join(_message_text(m) for m in messages)),
            response_schema=_response_schema(body.get("response_format")),
            tools=_tools(body.get("tools")),
            tool_choice=_tool_choice(body.get("tool_choice")),
            generation=True,
        )

    # ----------------------------------------------------------------- errors

    def _account_error(
        self, fault: AccountFault, raw: HTTPRequest, request: ProviderRequest
    ) -> APIError:
        if isinstance(fault, InsufficientQuota):
            return APIError(
                429,
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                code="insufficient_quota",
            )
        if isinstance(fault, InvalidAPIKey):
            error = self._check_api_key(raw)
            if error is None:  # the key presented is the configured one: show it anyway
                error = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
            return error
        return APIError(
            404,
            f"The model `{request.model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    def _error_response(
        self,
        status: int,
        message: str | None,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> HTTPResponse:
        error_type, default_code, default_message = _ERROR_KINDS.get(
            status,
            ("server_error", None, "Server error.")
            if status >= 500
            else ("invalid_request_error", None, "Request failed."),
        )
        if code == "insufficient_quota":  # out of credit: its own type, not a rate limit
            error_type = code
        body = {
            "error": {
                "message": message or default_message,
                "type": error_type,
                "param": None,
                "code": code if code is not None else default_code,
            }
        }
        extra = [("x-request-id", self._next_id("req_", 24)), *retry_after_headers(retry_after)]
        if status == 429 and not self.rate_limits and code != "insufficient_quota":
            reset = f"{retry_after if retry_after is not None else 1.0:g}s"
            extra.extend(
                [
                    ("x-ratelimit-limit-requests", "500"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", reset),
                    ("x-ratelimit-limit-tokens", "200000"),
                    ("x-ratelimit-remaining-tokens", "0"),
                    ("x-ratelimit-reset-tokens", reset),
                ]
            )
        return self._json_response(body, status=status, headers=[*extra, *headers])

    # ------------------------------------------------------------ rate limits

    def _rate_limit_reservation(self, request: ProviderRequest) -> dict[str, int]:
        return {"tokens": request.input_tokens + _reserved_completion(request.body)}

    def _rate_limit_error(self, rejection: RateLimitRejection) -> HTTPResponse:
        unit = "requests per min (RPM)" if rejection.name == "requests" else "tokens per min (TPM)"
        where = f"for {rejection.model or 'this model'} in organization org-local on {unit}"
        figures = f"Limit {rejection.limit}, Requested {rejection.requested}."
        if rejection.retry_after is None:
            message = (
                f"Request too large {where}: {figures} "
                "The input or output tokens must be reduced in order to run successfully."
            )
        else:
            wait = format_duration(rejection.retry_after)
            message = f"Rate limit reached {where}: {figures} Please try again in {wait}."
        body = {
            "error": {
                "message": message,
                "type": "requests" if rejection.name == "requests" else "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        headers = [
            ("x-request-id", self._next_id("req_", 24)),
            *retry_after_headers(rejection.retry_after),
        ]
        return self._json_response(body, status=429, headers=headers)

    def _rate_limit_headers(
        self, status: Mapping[str, RateLimitStatus], now: float
    ) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for name in ("requests", "tokens"):
            state = status.get(name)
            if state is not None:
                headers.extend(
                    [
                        (f"x-ratelimit-limit-{name}", str(state.limit)),
                        (f"x-ratelimit-remaining-{name}", str(state.remaining)),
                        (f"x-ratelimit-reset-{name}", format_duration(state.reset)),
                    ]
                )
        return headers

    def _malformed_reply(self, reply: Reply, fault: Malformed) -> Reply:
        if reply.tool_calls:
            calls = tuple(ToolCall(c.name, fault.text, c.id) for c in reply.tool_calls)
            return replace(reply, tool_calls=calls)
        return replace(reply, text=fault.text)

    # ------------------------------------------------------------- generation

    def _validate(self, request: ProviderRequest) -> None:
        body = request.body
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise APIError(400, "you must provide a model parameter")
        messages = body.get("messages")
        if messages is None:
            raise APIError(
                400, "Missing required parameter: 'messages'.", code="missing_required_parameter"
            )
        if not isinstance(messages, list) or not messages:
            raise APIError(
                400, f"{json.dumps(messages)} is too short - 'messages'", code="empty_array"
            )
        self._check_model(request.model)

    def _check_model(self, model: str | None) -> None:
        if self.models is not None and model not in self.models:
            raise APIError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )

    def _cached_tokens(self, request: ProviderRequest, reply: Reply) -> int:
        if reply.cached_tokens is not None:
            return reply.cached_tokens
        if not self.prompt_caching:
            return 0
        messages = request.body.get("messages")
        texts = (
            [_message_text(m) for m in messages if isinstance(m, Mapping)]
            if isinstance(messages, list)
            else []
        )
        words = " ".join(texts).split()
        return self._prefix_cache.lookup_and_store(request.model or "", words, self.clock())

    async def _chat(self, request: ProviderRequest, malformed: Malformed | None) -> HTTPResponse:
        self._validate(request)
        reply = await self._reply(request, malformed)
        body = request.body
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        cut = cut_to_limit(reply, body.get("max_completion_tokens", body.get("max_tokens")))
        if cut is not None:
            reply, finish = cut, "length"
        text = reply.text
        requested_n = body.get("n")
        n = requested_n if isinstance(requested_n, int) and requested_n > 0 else 1
        tool_calls = [
            {
                "id": call.id or self._next_id("call_", 24),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for call in reply.tool_calls
        ]
        output = output_tokens(reply)
        prompt_tokens = (
            reply.input_tokens if reply.input_tokens is not None else request.input_tokens
        )
        cached = min(self._cached_tokens(request, reply), prompt_tokens)
        reserved = _reserved_completion(body)
        self._settle_rate_limits(request, {"tokens": prompt_tokens + max(reserved, output * n)})
        self.usage_log.append(
            {
                "model": request.model,
                "prompt_tokens": prompt_tokens,
                "cached_tokens": cached,
                "completion_tokens": output * n,
            }
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output * n,
            "total_tokens": prompt_tokens + output * n,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        completion_id = self._next_id("chatcmpl-", 24)
        created = int(self.clock())
        headers = [("x-request-id", self._next_id("req_", 24)), *reply.headers.items()]
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
            stream = self._stream(
                completion_id,
                created,
                request.model or "",
                text,
                tool_calls,
                finish,
                n,
                usage if include_usage else None,
            )
            return HTTPResponse(
                200, stream=stream, content_type="text/event-stream; charset=utf-8", headers=headers
            )
        message: JSONDict = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                for i in range(n)
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_local",
        }
        return self._json_response(payload, headers=headers)

    async def _stream(
        self,
        completion_id: str,
        created: int,
        model: str,
        text: str | None,
        tool_calls: list[JSONDict],
        finish: str,
        n: int,
        usage: JSONDict | None,
    ) -> AsyncIterator[bytes]:
        def event(choices: list[JSONDict], **extra: Any) -> bytes:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_local",
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(chunk)}\n\n".encode()

        for i in range(n):
            yield event(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for piece in split_text(text or ""):
                yield event(
                    [
                        {
                            "index": i,
                            "delta": {"content": piece},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                await asyncio.sleep(0)
            for position, call in enumerate(tool_calls):
                head = {
                    "index": position,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                yield event(
                    [
                        {
                            "index": i,
                            "delta": {"tool_calls": [head]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                args = {"index": position, "function": {"arguments": call["function"]["arguments"]}}
                yield event(
                    [
                        {
                            "index": i,
                            "delta": {"tool_calls": [args]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if usage is not None:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    # ----------------------------------------------------------------- batch API

    def _parse_body(self, raw: HTTPRequest) -> tuple[JSONDict, str | None]:
        content_type = raw.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return super()._parse_body(raw)
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
        message = BytesParser(policy=HTTP).parsebytes(head + raw.body)
        form: JSONDict = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            if not isinstance(name, str) or not isinstance(data, bytes):
                continue
            filename = part.get_filename()
            if filename is not None:
                form[name] = {"filename": filename, "data": data}
            else:
                form[name] = data.decode("utf-8")
        return form, None

    def _batch_route(self, raw: HTTPRequest) -> Route | None:
        method, path = raw.method, raw.path
        if path == "/v1/files" and method == "POST":
            return Route(RequestDetails(kind="files_create"), self._files_create)
        if path == "/v1/batches" and method == "POST":
            return Route(RequestDetails(kind="batches_create"), self._batches_create)
        if path == "/v1/batches" and method == "GET":
            return Route(RequestDetails(kind="batches_list"), self._batches_list)
        match = _FILE.match(path)
        if match is not None and method == "GET":
            kind = "files_content" if match["content"] else "files_retrieve"
            handler = self._files_content if match["content"] else self._files_retrieve
            return Route(RequestDetails(kind=kind), handler)
        match = _BATCH.match(path)
        if match is not None and (method == "POST") == bool(match["cancel"]):
            if match["cancel"]:
                return Route(RequestDetails(kind="batches_cancel"), self._batches_cancel)
            return Route(RequestDetails(kind="batches_retrieve"), self._batches_retrieve)
        return None

    def _file(self, request: ProviderRequest) -> _File:
        match = _FILE.match(request.path)
        found = self._files.get(match["id"]) if match is not None else None
        if found is None:
            raise APIError(404, "No such File object.")
        return found

    def _job(self, request: ProviderRequest) -> BatchJob:
        match = _BATCH.match(request.path)
        job = self.batch_jobs.get(match["id"]) if match is not None else None
        if job is None:
            raise APIError(404, "No batch found.")
        return job

    async def _files_create(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        upload = request.body.get("file")
        purpose = request.body.get("purpose")
        if not isinstance(upload, Mapping) or not isinstance(purpose, str):
            raise APIError(400, "A multipart upload with 'file' and 'purpose' is required.")
        created = _File(
            self._next_id("file-", 24),
            str(upload["filename"]),
            purpose,
            bytes(upload["data"]),
            int(self.clock()),
        )
        self._files[created.id] = created
        return self._json_response(created.json())

    async def _files_retrieve(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        return self._json_response(self._file(request).json())

    async def _files_content(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        return HTTPResponse(200, self._file(request).data, content_type="application/octet-stream")

    async def _batches_create(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        body = request.body
        source = self._files.get(str(body.get("input_file_id")))
        if source is None:
            raise APIError(400, f"Invalid 'input_file_id': {body.get('input_file_id')!r}.")
        endpoint = body.get("endpoint")
        if endpoint not in _BATCH_ENDPOINTS:
            raise APIError(400, f"Invalid 'endpoint': {endpoint!r}.")
        if body.get("completion_window") != "24h":
            raise APIError(400, "Invalid 'completion_window': only '24h' is supported.")
        job = BatchJob(
            self._next_id("batch_", 24),
            [],
            self.clock(),
            self.batch_timing.for_job(len(self.batch_jobs)),
        )
        metadata = body.get("metadata")
        job.extra.update(
            endpoint=endpoint,
            input_file_id=source.id,
            errors=None,
            metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
        )
        errors = self._read_input(source, str(endpoint), job)
        self.batch_jobs[job.id] = job
        if errors:
            job.extra["errors"] = {"object": "list", "data": errors}
            job.fail(self.clock())
        else:
            self.batch_line_submissions.update(custom_id for custom_id, _ in job.lines)
        return self._json_response(self._batch_json(job))

    def _read_input(self, source: _File, endpoint: str, job: BatchJob) -> list[JSONDict]:
        """Fill ``job.lines`` from the input file; return its validation errors."""

        def error(code: str, message: str, line: int | None = None) -> JSONDict:
            return {"code": code, "message": message, "param": None, "line": line}

        if len(source.data) > self.batch_max_bytes:
            return [error("file_too_large", f"File exceeds {self.batch_max_bytes} bytes.")]
        seen: set[str] = set()
        models: set[str] = set()
        for number, text in enumerate(source.data.decode("utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                return [error("invalid_json_line", "This line is not parseable as JSON.", number)]
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or custom_id in seen:
                return [error("duplicate_custom_id", "custom_id missing or repeated.", number)]
            if line.get("method") != "POST" or line.get("url") != endpoint:
                return [error("invalid_url", f"url must be {endpoint!r}.", number)]
            request_body = line.get("body")
            if not isinstance(request_body, dict) or not isinstance(request_body.get("model"), str):
                return [error("missing_required_parameter", "body.model is required.", number)]
            seen.add(custom_id)
            models.add(request_body["model"])
            job.lines.append((custom_id, request_body))
        if len(models) > 1:
            return [error("mismatched_model", "All lines of a file must use the same model.")]
        if len(job.lines) > self.batch_max_requests:
            return [error("too_many_requests", f"At most {self.batch_max_requests} requests.")]
        if not job.lines:
            return [error("empty_file", "The input file has no requests.")]
        return []

    async def _batches_retrieve(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await self._advance(job)
        return self._json_response(self._batch_json(job))

    async def _batches_list(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        """Newest first, ``limit`` (default 20) per page after the ``after`` id."""
        jobs = list(reversed(self.batch_jobs.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [job.id for job in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit") or 20)
        page = jobs[:limit]
        return self._json_response(
            {
                "object": "list",
                "data": [self._batch_json(job) for job in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(jobs) > limit,
            }
        )

    async def _batches_cancel(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await self._advance(job)
        job.cancel(self.clock())
        return self._json_response(self._batch_json(job))

    async def _advance(self, job: BatchJob) -> None:
        was_done = job.done
        await job.advance(self.clock(), self._run_line)
        if job.done and not was_done:
            self._write_results(job)

    async def _run_line(self, body: Any) -> LineAnswer:
        """Answer one line like ``POST /v1/chat/completions`` with that body."""
        details = self._chat_details(body)
        request = line_request(self, details, body, "/v1/chat/completions")
        try:
            response = await self._chat(request, None)
        except APIError as exc:
            return exc.status, _error_body(exc.status, exc.message, exc.code)
        except _FaultSignal as signal:
            fault = signal.fault
            if isinstance(fault, RateLimited):
                return 429, _error_body(429, fault.message, "rate_limit_exceeded")
            if isinstance(fault, ServerError | ErrorResponse):
                return fault.status, _error_body(fault.status, fault.message, None)
            if isinstance(fault, Malformed):
                response = await self._chat(request, fault)
            else:
                return 500, _error_body(500, type(fault).__name__, None)
        except _HandlerFailure as failure:
            return 500, _error_body(500, f"{type(failure.error).__name__}: {failure.error}", None)
        return response.status, json.loads(response.body)

    def _write_results(self, job: BatchJob) -> None:
        if job.state == "failed":
            return
        outputs: list[str] = []
        errors: list[str] = []
        not_run = "batch_cancelled" if job.state == "cancelled" else "batch_expired"
        for custom_id, _ in job.lines:
            answer = job.answers.get(custom_id)
            line: JSONDict = {"id": self._next_id("batch_req_", 24), "custom_id": custom_id}
            if answer is None:
                line["response"] = None
                line["error"] = {
                    "code": not_run,
                    "message": "This request could not be executed before the batch ended.",
                }
                errors.append(json.dumps(line))
                continue
            status, body = answer
            line["response"] = {
                "status_code": status,
                "request_id": self._next_id("req_", 24),
                "body": body,
            }
            line["error"] = None
            (outputs if 200 <= status < 300 else errors).append(json.dumps(line))
        for key, lines in (("output_file_id", outputs), ("error_file_id", errors)):
            if lines:
                created = _File(
                    self._next_id("file-", 24),
                    f"{job.id}_{key.removesuffix('_file_id')}.jsonl",
                    "batch_output",
                    ("\n".join(lines) + "\n").encode("utf-8"),
                    int(self.clock()),
                )
                self._files[created.id] = created
                job.extra[key] = created.id

    def _batch_json(self, job: BatchJob) -> JSONDict:
        def at(state: str) -> int | None:
            moment = job.times.get(state)
            return None if moment is None else int(moment)

        window = job.timing.completion_window / max(job.timing.time_scale, 1e-12)
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": job.extra["endpoint"],
            "errors": job.extra.get("errors"),
            "input_file_id": job.extra["input_file_id"],
            "completion_window": "24h",
            "status": job.state,
            "output_file_id": job.extra.get("output_file_id"),
            "error_file_id": job.extra.get("error_file_id"),
            "created_at": int(job.created_at),
            "in_progress_at": at("in_progress"),
            "expires_at": int(job.created_at + window),
            "finalizing_at": at("finalizing"),
            "completed_at": at("completed"),
            "failed_at": at("failed"),
            "expired_at": at("expired"),
            "cancelling_at": at("cancelling"),
            "cancelled_at": at("cancelled"),
            "request_counts": {
                "total": len(job.lines),
                "completed": job.completed_count,
                "failed": job.failed_count,
            },
            "metadata": job.extra.get("metadata"),
        }

    # ----------------------------------------------------------------- models

    def _model_names(self) -> list[str]:
        return list(self.models) if self.models is not None else list(DEFAULT_OPENAI_MODELS)

    def _model_json(self, name: str) -> JSONDict:
        return {"id": name, "object": "model", "created": 1700000000, "owned_by": "system"}

    async def _models_list(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        return self._json_response(
            {"object": "list", "data": [self._model_json(m) for m in self._model_names()]}
        )

    async def _models_retrieve(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        self._check_model(request.model)
        return self._json_response(self._model_json(request.model or ""))


def _error_body(status: int, message: str | None, code: str | None) -> JSONDict:
    kind, default_code, default_message = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    return {
        "error": {
            "message": message or default_message,
            "type": kind,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }
