"""A local Gemini Developer API server for ``google-genai``.

Point the SDK at it with a custom base URL::

    from google import genai
    from google.genai import types

    async with GeminiServer() as server:
        client = genai.Client(
            api_key="test", http_options=types.HttpOptions(base_url=server.url)
        )
        response = await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="hello"
        )

Paths are accepted under any API version prefix (``/v1``, ``/v1beta``,
``/v1alpha``); google-genai 3.x uses ``/v1`` by default for the Gemini
Developer API (``/v1beta`` with ``GOOGLE_GENAI_API_VERSION=beta`` or
``HttpOptions(api_version=...)``).  Served:

* ``POST /{v}/models/{model}:generateContent`` (kind ``"generate_content"``)
* ``POST /{v}/models/{model}:streamGenerateContent`` (kind ``"stream_generate_content"``;
  server-sent events with ``alt=sse``, a JSON array otherwise)
* ``POST /{v}/models/{model}:countTokens`` (kind ``"count_tokens"``)
* ``POST /{v}/cachedContents`` (``"cache_create"``), ``GET /{v}/cachedContents``
  (``"cache_list"``), ``GET``/``PATCH``/``DELETE /{v}/cachedContents/{id}``
  (``"cache_get"``, ``"cache_update"``, ``"cache_delete"``)
* Batch jobs with inline requests: ``POST /{v}/models/{model}:batchGenerateContent``
  (``"batches_create"``; body ``{"batch": {"displayName", "inputConfig": {"requests":
  {"requests": [{"request", "metadata"}]}}}}``), ``GET /{v}/batches/{id}`` (``"batches_get"``),
  ``POST /{v}/batches/{id}:cancel`` (``"batches_cancel"``) and ``GET /{v}/batches``
  (``"batches_list"``). Each answers the job as a long-running operation whose ``metadata``
  holds ``state`` (``BATCH_STATE_PENDING`` → ``_RUNNING`` → ``_SUCCEEDED``, or ``_EXPIRED``,
  ``_CANCELLED``), ``batchStats`` and, once the job ended, ``output.inlinedResponses`` (one
  ``{"response"}`` or ``{"error": google.rpc.Status}`` with the request's ``metadata`` per line
  that ran; lines an expired or cancelled job never ran are absent). Jobs run like the other
  emulators' (``batch_timing``, :class:`~._batches.BatchTiming`; each line is answered by
  ``generateContent``, so ``respond`` can fail single lines). More than ``batch_max_requests``
  requests or ``batch_max_bytes`` of body is a 400. Counters: ``batch_jobs`` (by name),
  ``batch_line_submissions`` (by ``metadata.key``).

Token accounting (see :func:`~async_batch_llm.testing.servers.count_tokens`):
``promptTokenCount`` is the word count of the request's ``systemInstruction``
and every ``contents`` part (text, plus JSON of function calls/responses),
at least 1, **plus** the cached content's tokens when ``cachedContent`` names a
live cache; ``cachedContentTokenCount`` is then the cache's
``usageMetadata.totalTokenCount`` (the word count of its ``systemInstruction``
and ``contents``).  ``candidatesTokenCount`` is the word count of the reply text
(and function-call name and JSON arguments), at least 1.

Behaviour copied from the real service: a missing, deleted or expired cache is
``403 PERMISSION_DENIED`` "CachedContent not found (or permission denied)" for
``generateContent`` and for cache ``get``/``patch``/``delete``; a request that
sends ``systemInstruction``, ``tools`` or ``toolConfig`` together with
``cachedContent`` is a 400 ``INVALID_ARGUMENT`` (disable with
``strict_cached_content=False``); a cache below ``min_cache_tokens`` is refused
with 400 "Cached content is too small"; the default cache TTL is one hour; a
list with nothing alive answers ``{}``.

Errors use the Google API shape ``{"error": {"code", "message", "status"}}``.
:class:`RateLimited` answers 429 ``RESOURCE_EXHAUSTED`` with a
``google.rpc.QuotaFailure`` and, unless ``retry_after`` is ``None``, a
``google.rpc.RetryInfo`` detail (``"retryDelay": "2s"``); no ``Retry-After``
header is sent, as with the real API.

Retries: google-genai does **not** retry by default (with
``HttpOptions.retry_options`` unset it stops after one attempt), so tests need
no extra configuration.  Passing ``retry_options=types.HttpRetryOptions(...)``
enables tenacity retries (default codes 408, 429, 500, 502, 503, 504; 5
attempts; exponential backoff from 1 s); ``HttpRetryOptions(attempts=1)``
disables them again.  The SDK raises ``google.genai.errors.ClientError`` (4xx)
or ``ServerError`` (5xx), both ``APIError`` with ``.code`` (HTTP status),
``.status`` (e.g. ``"RESOURCE_EXHAUSTED"``), ``.message``, ``.details`` (the
parsed JSON body, so the ``RetryInfo`` is at
``err.details["error"]["details"]``) and ``.response`` (the ``httpx2`` response).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
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
    Reply,
    RequestDetails,
    Respond,
    Route,
    ToolSpec,
    count_tokens,
    cut_to_limit,
    output_tokens,
    split_text,
    tool_spec,
)
from ._http import HTTPRequest, HTTPResponse

__all__ = ["GeminiCache", "GeminiServer"]

_VERSION = r"/v\d+(?:alpha|beta)?\d*"
_MODEL_ACTION = re.compile(
    rf"^{_VERSION}/(?P<model>(?:models|tunedModels)/[^:/]+):(?P<action>\w+)$"
)
_CACHES = re.compile(rf"^{_VERSION}/cachedContents$")
_CACHE = re.compile(rf"^{_VERSION}/(?P<name>cachedContents/[^/:]+)$")
_BATCHES = re.compile(rf"^{_VERSION}/batches$")
_BATCH = re.compile(rf"^{_VERSION}/(?P<name>batches/[^/:]+)(?P<action>:cancel)?$")
_BATCH_STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
    "failed": "BATCH_STATE_FAILED",
}
# HTTP status -> google.rpc.Code, for the errors of inline responses.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1, 501: 12, 503: 14, 504: 4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: (
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, see the Gemini API rate limits documentation."
    ),
    500: "An internal error has occurred. Please retry or report the problem.",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
_CACHE_NOT_FOUND = "CachedContent not found (or permission denied)"
_CACHE_CONFLICT = (
    "CachedContent can not be used with GenerateContent request setting system_instruction, "
    "tools or tool_config.\n\nProposed fix: move those values to CachedContent from "
    "GenerateContent request."
)
_SAFETY_CATEGORIES = (
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)


@dataclass
class GeminiCache:
    """A cached-content resource held by :class:`GeminiServer`."""

    name: str
    model: str
    display_name: str
    create_time: float
    update_time: float
    expire_time: float
    token_count: int
    contents: list[Any] = field(default_factory=list)
    system_instruction: Any = None
    tools: list[Any] | None = None
    tool_config: Any = None

    def to_json(self) -> JSONDict:
        """The resource as the API returns it."""
        return {
            "name": self.name,
            "model": self.model,
            "createTime": format_timestamp(self.create_time),
            "updateTime": format_timestamp(self.update_time),
            "expireTime": format_timestamp(self.expire_time),
            "displayName": self.display_name,
            "usageMetadata": {"totalTokenCount": self.token_count},
        }


def format_timestamp(seconds: float) -> str:
    """RFC 3339 UTC timestamp with microseconds, as the Google APIs return them."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> float:
    """Parse an RFC 3339 timestamp (any number of fractional digits)."""
    match = re.match(r"^(.*?T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text.strip())
    if match is None:
        raise ValueError(f"invalid timestamp {text!r}")
    base, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    moment = datetime.fromisoformat(base + zone)
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def format_duration(seconds: float) -> str:
    """A protobuf JSON duration: ``"2s"``, ``"2.500s"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}s"


def _get(mapping: Mapping[str, Any], camel: str, snake: str | None = None) -> Any:
    if camel in mapping:
        return mapping[camel]
    if snake is None:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
    return mapping.get(snake)


def _parts(content: Any) -> list[Any]:
    if isinstance(content, Mapping):
        parts = content.get("parts")
        return parts if isinstance(parts, list) else []
    return []


def _part_text(part: Any) -> str:
    if not isinstance(part, Mapping):
        return ""
    if isinstance(part.get("text"), str):
        return str(part["text"])
    call = _get(part, "functionCall")
    if isinstance(call, Mapping):
        return f"{call.get('name', '')} {json.dumps(call.get('args', {}))}"
    result = _get(part, "functionResponse")
    if isinstance(result, Mapping):
        return f"{result.get('name', '')} {json.dumps(result.get('response', {}))}"
    return ""


def _content_text(contents: Any) -> str:
    if not isinstance(contents, list):
        return ""
    return " ".join(_part_text(p) for c in contents for p in _parts(c))


def _user_text(contents: Any) -> str:
    if not isinstance(contents, list):
        return ""
    texts: list[str] = []
    for content in contents:
        if isinstance(content, Mapping) and content.get("role", "user") == "user":
            texts.extend(
                str(p["text"])
                for p in _parts(content)
                if isinstance(p, Mapping) and isinstance(p.get("text"), str)
            )
    return "\n".join(texts)


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "\n".join(
        str(p["text"])
        for p in _parts(system)
        if isinstance(p, Mapping) and isinstance(p.get("text"), str)
    )


def _tools(tools: Any) -> tuple[ToolSpec, ...]:
    specs: list[ToolSpec] = []
    if not isinstance(tools, list):
        return ()
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        declarations = _get(tool, "functionDeclarations")
        for decl in declarations if isinstance(declarations, list) else []:
            if not isinstance(decl, Mapping) or not isinstance(decl.get("name"), str):
                continue
            params = _get(decl, "parametersJsonSchema")
            if not isinstance(params, Mapping):
                params = decl.get("parameters")
            specs.append(tool_spec(decl, params))
    return tuple(specs)


def _tool_choice(tool_config: Any) -> str | None:
    if not isinstance(tool_config, Mapping):
        return None
    config = _get(tool_config, "functionCallingConfig")
    if not isinstance(config, Mapping):
        return None
    mode = str(config.get("mode", "AUTO")).upper()
    if mode == "ANY":
        allowed = _get(config, "allowedFunctionNames")
        if isinstance(allowed, list) and len(allowed) == 1 and isinstance(allowed[0], str):
            return allowed[0]
        return "required"
    if mode == "NONE":
        return "none"
    return "auto"


def _response_schema(generation_config: Any) -> JSONDict | None:
    if not isinstance(generation_config, Mapping):
        return None
    for camel in ("responseJsonSchema", "responseSchema"):
        schema = _get(generation_config, camel)
        if isinstance(schema, Mapping):
            return dict(schema)
    if _get(generation_config, "responseMimeType") == "application/json":
        return {"type": "object"}
    return None


class GeminiServer(ProviderServer):
    """A local Gemini Developer API (``generativelanguage``) server.

    Args:
        respond: Response function for ``generateContent`` (see :class:`ProviderServer`).
        fault_fn: Per-request fault function.
        latency: Seconds to delay every request.
        clock: Wall clock used for cache timestamps and expiry (default ``time.time``).
        models: If given, only these model names (without ``models/``) exist;
            others get 404 ``NOT_FOUND``.
        min_cache_tokens: Caches smaller than this are refused (the real minimum
            is 1024 or more depending on the model; default 0 accepts any size).
        default_cache_ttl: TTL in seconds when a create request gives none (3600).
        strict_cached_content: Reject ``systemInstruction``/``tools``/``toolConfig``
            alongside ``cachedContent`` as the real API does.
        api_key: If set, the ``x-goog-api-key`` header (or ``key`` query
            parameter) must match, otherwise 400 ``API_KEY_INVALID``.
        host: See :class:`ProviderServer`.
        port: See :class:`ProviderServer`.
        raise_handler_errors: See :class:`ProviderServer`.
        batch_timing: How batch jobs progress (``None``: ``BatchTiming()``, real time).
        batch_max_requests: Inline requests one batch job may hold.
        batch_max_bytes: Bytes one batch create body may take (20 MB, Gemini's inline limit).
    """

    provider: ClassVar[str] = "gemini"
    kinds: ClassVar[frozenset[str]] = frozenset(
        {
            "generate_content",
            "stream_generate_content",
            "count_tokens",
            "cache_create",
            "cache_list",
            "cache_get",
            "cache_update",
            "cache_delete",
            "batches_create",
            "batches_get",
            "batches_cancel",
            "batches_list",
            "unknown",
        }
    )
    generation_kinds: ClassVar[frozenset[str]] = frozenset(
        {"generate_content", "stream_generate_content"}
    )

    def __init__(
        self,
        *,
        respond: Respond | None = None,
        fault_fn: FaultFn | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        models: Collection[str] | None = None,
        min_cache_tokens: int = 0,
        default_cache_ttl: float = 3600.0,
        strict_cached_content: bool = True,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        raise_handler_errors: bool = True,
        batch_timing: BatchTiming | None = None,
        batch_max_requests: int = 10_000,
        batch_max_bytes: int = 20 * 1000 * 1000,
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
        self.models = None if models is None else {m.removeprefix("models/") for m in models}
        self.min_cache_tokens = min_cache_tokens
        self.default_cache_ttl = default_cache_ttl
        self.strict_cached_content = strict_cached_content
        self._caches: dict[str, GeminiCache] = {}
        self.batch_timing = batch_timing if batch_timing is not None else BatchTiming()
        self.batch_max_requests = batch_max_requests
        self.batch_max_bytes = batch_max_bytes
        self.batch_jobs: dict[str, BatchJob] = {}
        self.batch_line_submissions: Counter[str] = Counter()

    # ------------------------------------------------------------------ caches

    @property
    def caches(self) -> dict[str, GeminiCache]:
        """Live (unexpired, undeleted) caches by name."""
        self._expire_caches()
        return dict(self._caches)

    def _expire_caches(self) -> None:
        now = self.clock()
        for name in [n for n, c in self._caches.items() if c.expire_time <= now]:
            del self._caches[name]

    def _live_cache(self, name: str) -> GeminiCache:
        self._expire_caches()
        cache = self._caches.get(name)
        if cache is None:
            raise APIError(403, _CACHE_NOT_FOUND)
        return cache

    # ----------------------------------------------------------------- routing

    def _check_api_key(self, raw: HTTPRequest) -> APIError | None:
        presented = raw.headers.get("x-goog-api-key") or next(iter(raw.query.get("key", [])), None)
        if presented == self.api_key:
            return None
        return APIError(
            400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID"
        )

    def _route(self, raw: HTTPRequest, body: JSONDict) -> Route | None:
        match = _MODEL_ACTION.match(raw.path)
        if match is not None and raw.method == "POST":
            model = match["model"]
            action = match["action"]
            if action == "generateContent":
                return Route(
                    self._generation_details(body, model, "generate_content"), self._generate
                )
            if action == "streamGenerateContent":
                details = self._generation_details(body, model, "stream_generate_content")
                return Route(details, self._stream_generate)
            if action == "countTokens":
                return Route(
                    RequestDetails(kind="count_tokens", model=_short(model)), self._count_tokens
                )
            if action == "batchGenerateContent":
                return Route(
                    RequestDetails(kind="batches_create", model=_short(model)),
                    self._batches_create,
                )
            return None
        if _BATCHES.match(raw.path) and raw.method == "GET":
            return Route(RequestDetails(kind="batches_list"), self._batches_list)
        match = _BATCH.match(raw.path)
        if match is not None:
            if raw.method == "GET" and match["action"] is None:
                return Route(RequestDetails(kind="batches_get"), self._batches_get)
            if raw.method == "POST" and match["action"] == ":cancel":
                return Route(RequestDetails(kind="batches_cancel"), self._batches_cancel)
            return None
        if _CACHES.match(raw.path):
            if raw.method == "POST":
                model = body.get("model")
                details = RequestDetails(
                    kind="cache_create",
                    model=_short(model) if isinstance(model, str) else None,
                    system=_system_text(_get(body, "systemInstruction")),
                    prompt=_user_text(body.get("contents")),
                )
                return Route(details, self._cache_create)
            if raw.method == "GET":
                return Route(RequestDetails(kind="cache_list"), self._cache_list)
            return None
        match = _CACHE.match(raw.path)
        if match is not None:
            handler = {
                "GET": self._cache_get,
                "PATCH": self._cache_update,
                "DELETE": self._cache_delete,
            }
            kind = {"GET": "cache_get", "PATCH": "cache_update", "DELETE": "cache_delete"}
            if raw.method in handler:
                return Route(
                    RequestDetails(kind=kind[raw.method], cached_content=match["name"]),
                    handler[raw.method],
                )
        return None

    def _generation_details(self, body: JSONDict, model: str, kind: str) -> RequestDetails:
        contents = body.get("contents")
        system = _get(body, "systemInstruction")
        tools = _get(body, "tools")
        tool_config = _get(body, "toolConfig")
        cache_name = _get(body, "cachedContent")
        cache = None
        if isinstance(cache_name, str):
            self._expire_caches()
            cache = self._caches.get(cache_name)
        if cache is not None:
            system = system if system is not None else cache.system_instruction
            tools = tools if tools is not None else cache.tools
            tool_config = tool_config if tool_config is not None else cache.tool_config
        own_text = " ".join(
            [_system_text(_get(body, "systemInstruction")), _content_text(contents)]
        )
        return RequestDetails(
            kind=kind,
            model=_short(model),
            prompt=_user_text(contents),
            system=_system_text(system),
            input_tokens=count_tokens(own_text),
            response_schema=_response_schema(_get(body, "generationConfig")),
            tools=_tools(tools),
            tool_choice=_tool_choice(tool_config),
            cached_content=cache_name if isinstance(cache_name, str) else None,
            generation=True,
        )

    # ----------------------------------------------------------------- errors

    def _account_error(
        self, fault: AccountFault, raw: HTTPRequest, request: ProviderRequest
    ) -> APIError:
        if isinstance(fault, InsufficientQuota):
            return APIError(429, _DEFAULT_MESSAGES[429])
        if isinstance(fault, InvalidAPIKey):
            return APIError(
                400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID"
            )
        return APIError(
            404,
            f"models/{request.model} is not found for API version v1beta, or is not supported "
            "for generateContent. Call ListModels to see the list of available models and their "
            "supported methods.",
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
        error: JSONDict = {
            "code": status,
            "message": message or _DEFAULT_MESSAGES.get(status, "Unknown error."),
            "status": _STATUS_NAMES.get(
                status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
            ),
        }
        details: list[JSONDict] = []
        if code is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": code,
                    "domain": "googleapis.com",
                }
            )
        if status == 429:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _QUOTA_METRIC,
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        }
                    ],
                }
            )
        if retry_after is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format_duration(retry_after),
                }
            )
        if details:
            error["details"] = details
        return self._json_response({"error": error}, status=status, headers=headers)

    # -------------------------------------------------------------- generation

    def _check_generation(self, request: ProviderRequest) -> GeminiCache | None:
        if self.models is not None and request.model not in self.models:
            raise APIError(
                404,
                f"models/{request.model} is not found for API version, "
                "or is not supported for generateContent.",
            )
        contents = request.body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise APIError(400, "* GenerateContentRequest.contents: contents is not specified\n")
        if request.cached_content is None:
            return None
        cache = self._live_cache(request.cached_content)
        if self.strict_cached_content and any(
            _get(request.body, key) is not None
            for key in ("systemInstruction", "tools", "toolConfig")
        ):
            raise APIError(400, _CACHE_CONFLICT)
        if cache.model != f"models/{request.model}":
            raise APIError(
                400,
                f"Model used by GenerateContent request (models/{request.model}) and "
                f"CachedContent ({cache.model}) has to be the same.",
            )
        return cache

    def _candidates(self, request: ProviderRequest, reply: Reply) -> tuple[list[JSONDict], int]:
        parts: list[JSONDict] = []
        finish = reply.finish_reason or "STOP"
        config = _get(request.body, "generationConfig")
        max_tokens = _get(config, "maxOutputTokens") if isinstance(config, Mapping) else None
        cut = cut_to_limit(reply, max_tokens)
        if cut is not None:
            reply, finish = cut, "MAX_TOKENS"
        if reply.text is not None:
            parts.append({"text": reply.text})
        for call in reply.tool_calls:
            function_call: JSONDict = {"name": call.name, "args": call.arguments_object()}
            if call.id is not None:
                function_call["id"] = call.id
            parts.append({"functionCall": function_call})
        if not parts:
            parts.append({"text": ""})
        count = _get(config, "candidateCount") if isinstance(config, Mapping) else None
        candidates = [
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": finish,
                "index": i,
                "safetyRatings": [
                    {"category": category, "probability": "NEGLIGIBLE"}
                    for category in _SAFETY_CATEGORIES
                ],
            }
            for i in range(count if isinstance(count, int) and count > 0 else 1)
        ]
        return candidates, output_tokens(reply) * len(candidates)

    def _usage(
        self, request: ProviderRequest, reply: Reply, cache: GeminiCache | None, output: int
    ) -> JSONDict:
        cached = reply.cached_tokens
        if cached is None:
            cached = cache.token_count if cache is not None else 0
        prompt = (
            reply.input_tokens if reply.input_tokens is not None else request.input_tokens + cached
        )
        usage: JSONDict = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if cached:
            usage["cachedContentTokenCount"] = cached
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        return usage

    async def _generate(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        cache = self._check_generation(request)
        reply = await self._reply(request, malformed)
        candidates, output = self._candidates(request, reply)
        payload = {
            "candidates": candidates,
            "usageMetadata": self._usage(request, reply, cache, output),
            "modelVersion": request.model,
            "responseId": self._next_id("resp-", 12),
        }
        return self._json_response(payload, headers=list(reply.headers.items()))

    async def _stream_generate(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        cache = self._check_generation(request)
        reply = await self._reply(request, malformed)
        candidates, output = self._candidates(request, reply)
        usage = self._usage(request, reply, cache, output)
        response_id = self._next_id("resp-", 12)
        chunks: list[JSONDict] = []
        parts = candidates[0]["content"]["parts"]
        pieces = split_text(parts[0]["text"]) if len(parts) == 1 and "text" in parts[0] else []
        if len(pieces) > 1:
            # The first text piece without a finish reason, then the rest with it.
            first = {k: v for k, v in candidates[0].items() if k != "finishReason"}
            first["content"] = {"parts": [{"text": pieces[0]}], "role": "model"}
            last = dict(candidates[0], content={"parts": [{"text": pieces[1]}], "role": "model"})
            chunks.extend([{"candidates": [first]}, {"candidates": [last]}])
        else:
            chunks.append({"candidates": candidates})
        for chunk in chunks:
            chunk["modelVersion"] = request.model
            chunk["responseId"] = response_id
        chunks[-1]["usageMetadata"] = usage
        sse = request.query.get("alt") == "sse"

        async def stream() -> AsyncIterator[bytes]:
            if not sse:
                yield (json.dumps(chunks)).encode("utf-8")
                return
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\r\n\r\n".encode()
                await asyncio.sleep(0)

        content_type = "text/event-stream" if sse else "application/json; charset=UTF-8"
        return HTTPResponse(
            200, stream=stream(), content_type=content_type, headers=list(reply.headers.items())
        )

    async def _count_tokens(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        body = request.body
        inner = _get(body, "generateContentRequest")
        source = inner if isinstance(inner, Mapping) else body
        text = " ".join(
            [_system_text(_get(source, "systemInstruction")), _content_text(source.get("contents"))]
        )
        payload: JSONDict = {"totalTokens": count_tokens(text)}
        cache_name = _get(source, "cachedContent")
        if isinstance(cache_name, str):
            cache = self._live_cache(cache_name)
            payload["totalTokens"] += cache.token_count
            payload["cachedContentTokenCount"] = cache.token_count
        return self._json_response(payload)

    # ------------------------------------------------------------- cache CRUD

    def _ttl_seconds(self, body: JSONDict) -> float | None:
        ttl = body.get("ttl")
        if ttl is None:
            expire = _get(body, "expireTime")
            if expire is None:
                return None
            try:
                return parse_timestamp(str(expire)) - self.clock()
            except ValueError as exc:
                raise APIError(
                    400, f"Invalid value at 'cached_content.expire_time': {exc}"
                ) from exc
        match = _DURATION.match(str(ttl))
        if match is None:
            raise APIError(
                400,
                f"Invalid value at 'cached_content.ttl' "
                f'(type.googleapis.com/google.protobuf.Duration), "{ttl}"',
            )
        return float(match[1])

    async def _cache_create(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        body = request.body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(
                400, "* CreateCachedContentRequest.cached_content.model: model is required\n"
            )
        short = _short(model)
        if self.models is not None and short not in self.models:
            raise APIError(
                404, f"models/{short} is not found for API version, or is not supported."
            )
        system = _get(body, "systemInstruction")
        raw_contents = body.get("contents")
        contents: list[Any] = raw_contents if isinstance(raw_contents, list) else []
        tokens = count_tokens(" ".join([_system_text(system), _content_text(contents)]))
        if tokens < self.min_cache_tokens:
            raise APIError(
                400,
                f"Cached content is too small. total_token_count={tokens}, "
                f"min_total_token_count={self.min_cache_tokens}",
            )
        ttl = self._ttl_seconds(body)
        now = self.clock()
        name = f"cachedContents/{self._next_id('', 12)}"
        display_name = _get(body, "displayName")
        cache = GeminiCache(
            name=name,
            model=f"models/{short}",
            display_name=display_name if isinstance(display_name, str) else "",
            create_time=now,
            update_time=now,
            expire_time=now + (self.default_cache_ttl if ttl is None else ttl),
            token_count=tokens,
            contents=list(contents),
            system_instruction=system,
            tools=tools if isinstance(tools := _get(body, "tools"), list) else None,
            tool_config=_get(body, "toolConfig"),
        )
        self._caches[name] = cache
        return self._json_response(cache.to_json())

    async def _cache_list(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        self._expire_caches()
        caches = sorted(self._caches.values(), key=lambda c: (c.create_time, c.name))
        try:
            size = int(request.query.get("pageSize", "0")) or 100
            token = request.query.get("pageToken") or "0"
            offset = int(token.removeprefix("page-"))
        except ValueError as exc:
            raise APIError(400, "Invalid page token or size.") from exc
        size = min(max(size, 1), 1000)
        page = caches[offset : offset + size]
        payload: JSONDict = {}
        if page:
            payload["cachedContents"] = [c.to_json() for c in page]
        if offset + size < len(caches):
            payload["nextPageToken"] = f"page-{offset + size}"
        return self._json_response(payload)

    async def _cache_get(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        assert request.cached_content is not None
        return self._json_response(self._live_cache(request.cached_content).to_json())

    async def _cache_update(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        assert request.cached_content is not None
        cache = self._live_cache(request.cached_content)
        ttl = self._ttl_seconds(request.body)
        now = self.clock()
        if ttl is not None:
            cache.expire_time = now + ttl
        cache.update_time = now
        return self._json_response(cache.to_json())

    async def _cache_delete(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        assert request.cached_content is not None
        self._live_cache(request.cached_content)
        del self._caches[request.cached_content]
        return self._json_response({})

    # --------------------------------------------------------------- batch jobs

    def _job(self, request: ProviderRequest) -> BatchJob:
        match = _BATCH.match(request.path)
        job = self.batch_jobs.get(match["name"]) if match is not None else None
        if job is None:
            raise APIError(404, "Requested entity was not found.")
        return job

    async def _batches_create(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        requests = _batch_requests(request.body)
        if not isinstance(requests, list) or not requests:
            raise APIError(400, "batch.input_config.requests: a non-empty list is required")
        if len(requests) > self.batch_max_requests:
            raise APIError(
                400, f"batch.input_config.requests: at most {self.batch_max_requests} requests"
            )
        if len(json.dumps(request.body)) > self.batch_max_bytes:
            raise APIError(400, f"Request payload size exceeds the limit: {self.batch_max_bytes}")
        lines: list[tuple[str, Any]] = []
        keys: list[JSONDict] = []
        for index, entry in enumerate(requests):
            inner = entry.get("request") if isinstance(entry, Mapping) else None
            if not isinstance(inner, Mapping) or not isinstance(inner.get("contents"), list):
                raise APIError(400, f"batch.input_config.requests[{index}].request: contents")
            metadata = entry.get("metadata")
            keys.append(dict(metadata) if isinstance(metadata, Mapping) else {})
            lines.append((str(index), dict(inner)))
        model = f"models/{request.model}"
        job = BatchJob(
            self._next_id("batches/", 20),
            lines,
            self.clock(),
            self.batch_timing.for_job(len(self.batch_jobs)),
            extra={
                "model": model,
                "metadata": keys,
                "display_name": _get(
                    request.body.get("batch") or {}, "displayName", "display_name"
                ),
            },
        )
        self.batch_jobs[job.id] = job
        self.batch_line_submissions.update(
            str(key["key"]) for key in keys if key.get("key") is not None
        )
        return self._json_response(self._operation(job))

    async def _batches_get(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await self._advance(job)
        return self._json_response(self._operation(job))

    async def _batches_cancel(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        job = self._job(request)
        await self._advance(job)
        job.cancel(self.clock())
        return self._json_response({})

    async def _batches_list(
        self, request: ProviderRequest, malformed: Malformed | None
    ) -> HTTPResponse:
        operations = []
        for job in self.batch_jobs.values():
            await self._advance(job)
            operations.append(self._operation(job))
        return self._json_response({"operations": operations})

    async def _advance(self, job: BatchJob) -> None:
        model = str(job.extra["model"])

        async def run_line(body: Any) -> LineAnswer:
            details = self._generation_details(body, model, "generate_content")
            line = line_request(self, details, body, f"/v1beta/{model}:generateContent")
            return await answer_line(self, line, self._generate)

        await job.advance(self.clock(), run_line)

    def _operation(self, job: BatchJob) -> JSONDict:
        def at(state: str) -> str | None:
            moment = job.times.get(state)
            return None if moment is None else format_timestamp(moment)

        pending = len(job.lines) - len(job.answers)
        metadata: JSONDict = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": job.extra["model"],
            "name": job.id,
            "displayName": job.extra.get("display_name") or job.id,
            "createTime": format_timestamp(job.created_at),
            "updateTime": format_timestamp(max([job.created_at, *job.times.values()])),
            "batchStats": {
                "requestCount": str(len(job.lines)),
                "successfulRequestCount": str(job.completed_count),
                "failedRequestCount": str(job.failed_count),
                "pendingRequestCount": str(0 if job.done else pending),
            },
            "state": _BATCH_STATES[job.state],
        }
        operation: JSONDict = {"name": job.id, "metadata": metadata, "done": job.done}
        if job.done:
            metadata["endTime"] = next(
                (at(s) for s in ("completed", "expired", "cancelled", "failed") if s in job.times),
                None,
            )
            responses: list[JSONDict] = []
            for (line_id, _), key in zip(job.lines, job.extra["metadata"], strict=True):
                answer = job.answers.get(line_id)
                if answer is None:
                    continue
                entry: JSONDict = {"metadata": key} if key else {}
                status, body = answer
                if 200 <= status < 300:
                    entry["response"] = body
                else:
                    error = body.get("error") if isinstance(body, Mapping) else None
                    message = error.get("message") if isinstance(error, Mapping) else None
                    entry["error"] = {
                        "code": _GRPC_CODES.get(status, 13 if status >= 500 else 9),
                        "message": str(message or status),
                    }
                responses.append(entry)
            output = {"inlinedResponses": {"inlinedResponses": responses}}
            metadata["output"] = output
            operation["response"] = {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                "GenerateContentBatchOutput",
                **output,
            }
        return operation


def _batch_requests(body: JSONDict) -> Any:
    batch = body.get("batch")
    config = _get(batch, "inputConfig", "input_config") if isinstance(batch, Mapping) else None
    outer = _get(config, "requests") if isinstance(config, Mapping) else None
    return _get(outer, "requests") if isinstance(outer, Mapping) else None


def _short(model: str) -> str:
    return model.removeprefix("models/")
