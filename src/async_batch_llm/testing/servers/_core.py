"""Provider-independent parts of the local provider servers.

This module defines the scripting vocabulary shared by every server (the
request object handed to response functions, replies, tool calls and faults),
the deterministic token counter, a JSON-schema example generator used by the
default response function, the token buckets behind the servers' configurable
rate limits, and :class:`ProviderServer`, the base class that records requests,
enforces those limits, applies scripted faults and manages the HTTP server's
life cycle.

Rate limits (OpenAI and Anthropic servers): each configured per-minute limit is
a token bucket that refills continuously at ``limit / 60`` per second and holds
at most ``limit * window / 60`` (at least 1), where ``window`` is the server's
``rate_limit_window_seconds``: like the real services, a per-minute limit is
enforced over a window of a few seconds, so a whole minute's worth can never be
spent in one burst.  A request is admitted when every bucket holds what it asks
for; a request that asks for more than a bucket can hold (but no more than the
per-minute limit) is admitted when that bucket is full and leaves it in debt.
Admission is all or nothing: a rejected request charges nothing.  What refills
within a millisecond (the resolution of ``retry-after-ms``) counts as there, so a
client that waits exactly the advertised time is admitted.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import json
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias

from ._http import ClientConnection, HandlerResult, HTTPRequest, HTTPResponse, HTTPServer
from ._http import Disconnect as _DisconnectResult
from ._rate_limits import (
    RATE_LIMIT_NAMES,
    RateLimitRejection,
    RateLimitStatus,
    _Bucket,
    _check_limit,
)
from ._schema_examples import example_for_schema

__all__ = [
    "Disconnect",
    "ErrorResponse",
    "Exchange",
    "Fault",
    "FaultFn",
    "Hang",
    "InsufficientQuota",
    "InvalidAPIKey",
    "Latency",
    "Malformed",
    "ModelNotFound",
    "ProviderRequest",
    "ProviderServer",
    "RateLimitStatus",
    "RateLimited",
    "Reply",
    "Respond",
    "ResponseValue",
    "ServerError",
    "ToolCall",
    "ToolSpec",
    "count_tokens",
    "default_respond",
    "example_for_schema",
]

JSONDict: TypeAlias = dict[str, Any]


def count_tokens(text: str) -> int:
    """Count tokens the way every local server does: whitespace-separated words, at least 1.

    The servers count the *joined* text of a request (see each server's
    docstring for which parts are included), so the count of several pieces
    is the sum of their word counts, with a floor of 1 for the whole request.
    """
    return max(1, len(text.split()))


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text`` (may be 0)."""
    return len(text.split())


def split_text(text: str) -> list[str]:
    """Split ``text`` into at most two non-empty pieces (at a middle space) for streaming."""
    if not text:
        return []
    cut = text.find(" ", len(text) // 2)
    if cut <= 0:
        return [text]
    return [text[:cut], text[cut:]]


def truncate_words(text: str, limit: int) -> str:
    """The first ``limit`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[: max(limit, 0)])


def retry_after_headers(retry_after: float | None) -> list[tuple[str, str]]:
    """The ``retry-after`` and ``retry-after-ms`` headers, as OpenAI and Anthropic send them.

    ``retry-after`` is in whole seconds, rounded up; ``None`` gives no headers.
    """
    if retry_after is None:
        return []
    return [
        ("retry-after", str(max(math.ceil(retry_after), 0))),
        ("retry-after-ms", str(max(round(retry_after * 1000), 0))),
    ]


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Latency:
    """Delay the request by ``seconds`` (``asyncio.sleep``), then answer it normally."""

    seconds: float


@dataclass(frozen=True)
class RateLimited:
    """Answer with HTTP 429 in the provider's real error format.

    ``retry_after`` (seconds) is sent the way the provider sends it:
    ``retry-after``/``retry-after-ms`` headers for OpenAI and Anthropic, a
    ``google.rpc.RetryInfo`` detail (``retryDelay: "2s"``) for Gemini.  ``None``
    omits it.
    """

    retry_after: float | None = 2.0
    message: str | None = None


@dataclass(frozen=True)
class ServerError:
    """Answer with a 5xx status (500, 502, 503, 504, 529, ...) in the provider's error format."""

    status: int = 500
    message: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if not 500 <= self.status <= 599:
            raise ValueError(f"ServerError status must be 5xx, got {self.status}")


@dataclass(frozen=True)
class ErrorResponse:
    """Answer with any error ``status`` (e.g. 400, 401, 403, 404) in the provider's error format."""

    status: int
    message: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"ErrorResponse status must be 4xx or 5xx, got {self.status}")


@dataclass(frozen=True)
class Hang:
    """Never answer: the connection stays open until the client gives up or the server closes."""


@dataclass(frozen=True)
class Disconnect:
    """Drop the connection without sending any response (a connection-level failure)."""


@dataclass(frozen=True)
class Malformed:
    """Answer 200, but with content that is not valid for the expected structure.

    By default the generated reply is kept and its payload corrupted: the
    text becomes ``text`` (not valid JSON), and tool-call arguments become
    ``text`` where the wire format carries them as a JSON string (OpenAI) or an
    empty object where it carries a parsed object (Gemini, Anthropic), so
    schema validation fails.  With ``raw_body=True`` the HTTP body itself is
    ``text``, which the SDK cannot parse at all.
    """

    text: str = '{"malformed": '
    raw_body: bool = False


@dataclass(frozen=True)
class InsufficientQuota:
    """Answer as the provider does when the account is out of credit.

    OpenAI: HTTP 429 with type and code ``insufficient_quota``; Anthropic: HTTP 400
    ``invalid_request_error`` "Your credit balance is too low ..."; Gemini, which has no
    separate answer for it: HTTP 429 ``RESOURCE_EXHAUSTED`` "You exceeded your current quota".
    """


@dataclass(frozen=True)
class InvalidAPIKey:
    """Answer as the provider does when the API key is wrong, whatever key was sent.

    OpenAI: HTTP 401 ``invalid_api_key``; Anthropic: HTTP 401 ``authentication_error``;
    Gemini: HTTP 400 ``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``. (Servers built with
    ``api_key=`` answer so by themselves to requests presenting another key.)
    """


@dataclass(frozen=True)
class ModelNotFound:
    """Answer HTTP 404 as the provider does for a model that does not exist (the request's).

    (Servers built with ``models=`` answer so by themselves for models not in the list.)
    """


Fault: TypeAlias = (
    Latency
    | RateLimited
    | ServerError
    | ErrorResponse
    | Hang
    | Disconnect
    | Malformed
    | InsufficientQuota
    | InvalidAPIKey
    | ModelNotFound
)
"""Any scripted fault."""

AccountFault: TypeAlias = InsufficientQuota | InvalidAPIKey | ModelNotFound
"""The faults a server renders from the request (its key, its model)."""

_ACCOUNT_FAULTS = (InsufficientQuota, InvalidAPIKey, ModelNotFound)
_FAULT_TYPES = (
    Latency,
    RateLimited,
    ServerError,
    ErrorResponse,
    Hang,
    Disconnect,
    Malformed,
    *_ACCOUNT_FAULTS,
)


# ------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ToolSpec:
    """A tool (function) offered to the model, normalised across providers."""

    name: str
    description: str | None = None
    parameters: JSONDict = field(default_factory=dict)


def tool_spec(declaration: Mapping[str, Any], parameters: Any) -> ToolSpec:
    """The :class:`ToolSpec` of a provider's tool declaration.

    Args:
        declaration: the declaration, with a ``name`` and an optional ``description``.
        parameters: its JSON schema as sent (``{}`` when it is not an object).
    """
    return ToolSpec(
        name=str(declaration["name"]),
        description=declaration.get("description"),
        parameters=dict(parameters) if isinstance(parameters, Mapping) else {},
    )


@dataclass(frozen=True)
class ProviderRequest:
    """One request received by a server, as handed to ``respond`` and ``fault_fn``.

    Attributes:
        provider: ``"gemini"``, ``"openai"`` or ``"anthropic"``.
        kind: The operation, e.g. ``"generate_content"``, ``"chat_completions"``,
            ``"messages"``, ``"cache_create"``; ``"unknown"`` for unrouted paths.
        index: 0-based position among all requests this server received.
        kind_index: 0-based position among requests of the same ``kind``.
        method: HTTP method.
        path: Request path without the query string.
        query: Query parameters (first value of each).
        headers: Request headers, lower-cased names.
        body: The decoded JSON body (``{}`` when empty or not a JSON object).
        model: The model named by the request (without ``models/``), if any.
        prompt: The user text of the request: every user-role text part, joined with newlines.
        system: The system/developer instruction text, joined with newlines.
        input_tokens: The prompt token count the server reports for this request
            (excluding Gemini cached content).
        response_schema: The JSON schema requested for structured output, if any
            (``{"type": "object"}`` for schema-less JSON mode).
        tools: The tools offered to the model.
        tool_choice: ``"auto"``, ``"none"``, ``"required"``, a tool name, or ``None``
            if the request does not say.
        cached_content: Gemini only: the ``cachedContents/...`` name the request uses.
        received_at: The server clock's time when the request arrived.
    """

    provider: str
    kind: str
    index: int
    kind_index: int
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: JSONDict
    model: str | None = None
    prompt: str = ""
    system: str = ""
    input_tokens: int = 0
    response_schema: JSONDict | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    cached_content: str | None = None
    received_at: float = 0.0

    @property
    def forced_tool(self) -> ToolSpec | None:
        """The tool the model must call, if the request forces one.

        A named ``tool_choice`` selects that tool; ``"required"`` selects the first tool.
        """
        if not self.tools or self.tool_choice in (None, "auto", "none"):
            return None
        if self.tool_choice == "required":
            return self.tools[0]
        for tool in self.tools:
            if tool.name == self.tool_choice:
                return tool
        return None


@dataclass(frozen=True)
class ToolCall:
    """A tool (function) call for the model to return.

    ``arguments`` is a mapping (serialised as JSON) or a raw JSON string, which is
    sent verbatim where the wire format carries a string (OpenAI).
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as JSON text."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))

    def arguments_object(self) -> JSONDict:
        """The arguments as an object; an unparsable or non-object string becomes ``{}``."""
        if not isinstance(self.arguments, str):
            return dict(self.arguments)
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Reply:
    """A full reply; every field is optional.

    Attributes:
        text: The assistant text (``None`` for a pure tool-call reply).
        tool_calls: Tool calls to return.
        finish_reason: Provider-native finish/stop reason overriding the default
            (``"stop"``/``"tool_calls"``, ``"STOP"``, ``"end_turn"``/``"tool_use"``).
        input_tokens: Override the prompt token count.
        output_tokens: Override the completion token count.
        cached_tokens: Override the cached-token count (OpenAI ``cached_tokens``,
            Anthropic ``cache_read_input_tokens``, Gemini ``cachedContentTokenCount``).
        headers: Extra response headers.
    """

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def output_text(self) -> str:
        """The text the output token count is computed from (text plus tool-call arguments)."""
        pieces = [self.text or ""]
        pieces.extend(f"{call.name} {call.arguments_json()}" for call in self.tool_calls)
        return " ".join(pieces)


def output_tokens(reply: Reply) -> int:
    """The completion token count of ``reply``: its own, else that of :meth:`Reply.output_text`."""
    if reply.output_tokens is not None:
        return reply.output_tokens
    return count_tokens(reply.output_text())


def cut_to_limit(reply: Reply, limit: Any) -> Reply | None:
    """``reply`` with its text cut to the first ``limit`` words, or ``None`` if nothing is cut.

    Nothing is cut when ``limit`` (the request's output-token limit, as sent) is not an
    ``int``, when the text fits, or when the reply sets its own finish reason.
    """
    text = reply.text
    if (
        text is None
        or not isinstance(limit, int)
        or word_count(text) <= limit
        or reply.finish_reason is not None
    ):
        return None
    return replace(reply, text=truncate_words(text, limit))


ResponseValue: TypeAlias = str | Mapping[str, Any] | list[Any] | ToolCall | Reply | Fault
"""What a response function may return.

* ``str``: the reply text.
* ``dict``/``list``: structured output; becomes the arguments of the forced tool
  call when the request forces one, otherwise its JSON text.
* :class:`ToolCall` / :class:`Reply`: full control.
* A fault (other than :class:`Latency`): fail this request.
"""

Respond: TypeAlias = Callable[[ProviderRequest], ResponseValue | Awaitable[ResponseValue]]
"""A deterministic response function (sync or async)."""

FaultFn: TypeAlias = Callable[[ProviderRequest], Fault | None]
"""Decide a fault per request (``None`` = answer normally)."""


@dataclass(frozen=True)
class Exchange:
    """A recorded request and how it was answered.

    ``status`` is ``None`` when nothing was sent (:class:`Hang`, :class:`Disconnect`),
    ``fault`` is the fault applied (if any) and ``error`` the exception raised by
    a response function (answered with a 500).  ``rate_limited`` names the limit
    (``"requests"``, ``"tokens"``, ``"input_tokens"``, ``"output_tokens"``) when
    the server's own configured rate limits answered the request with a 429.
    """

    request: ProviderRequest
    status: int | None
    fault: Fault | None = None
    error: Exception | None = None
    rate_limited: str | None = None


def default_respond(request: ProviderRequest) -> ResponseValue:
    """The default response function.

    * A forced tool call (``tool_choice`` required/named, Gemini mode ``ANY``)
      returns that tool with arguments from :func:`example_for_schema`.
    * A structured-output request returns an example of the requested schema.
    * Anything else returns ``"echo: " + request.prompt``.
    """
    tool = request.forced_tool
    if tool is not None:
        return ToolCall(tool.name, example_for_schema(tool.parameters, request.prompt))
    if request.response_schema is not None:
        value = example_for_schema(request.response_schema, request.prompt)
        return value if isinstance(value, dict | list) else json.dumps(value)
    return f"echo: {request.prompt}"


# --------------------------------------------------------------- provider errors


class APIError(Exception):
    """Raised inside a handler to answer with a provider-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = list(headers)


_GENERATION = "<generation>"


class _FaultSignal(Exception):
    def __init__(self, fault: Fault) -> None:
        super().__init__(type(fault).__name__)
        self.fault = fault


@dataclass(frozen=True)
class RequestDetails:
    """What a server's router extracts from a request (internal)."""

    kind: str
    model: str | None = None
    prompt: str = ""
    system: str = ""
    input_tokens: int = 0
    response_schema: JSONDict | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    cached_content: str | None = None
    generation: bool = False


Handler: TypeAlias = Callable[[ProviderRequest, Malformed | None], Awaitable[HTTPResponse]]


@dataclass(frozen=True)
class Route:
    """A routed request: its details and the coroutine that answers it (internal)."""

    details: RequestDetails
    handler: Handler


# ------------------------------------------------------------------- base server


class ProviderServer(abc.ABC):
    """Base class of the local provider servers.

    Use as an async context manager (``async with GeminiServer() as server``) or
    call :meth:`start` / :meth:`close`.  Servers listen on ``127.0.0.1`` on a
    random free port unless ``port`` is given.

    Servers that support rate limits (OpenAI, Anthropic) take them as their own
    keyword options; a request of a generation kind is checked against them after
    the API key and before any scripted fault (a refused request consumes no
    scripted fault and is answered 429 at once).

    Args:
        respond: Response function for generation requests; defaults to
            :func:`default_respond`.  May be async and may return a fault.
        fault_fn: Called for every request whose kind has no scripted fault
            queued; returns a fault or ``None``.
        latency: Seconds to delay every request before answering.
        clock: Wall-clock source (seconds since the epoch) for timestamps, cache
            expiry and rate-limit refill; inject a fake to expire caches and refill
            limits without sleeping.
        host: Interface to bind (keep the default ``127.0.0.1``).
        port: Port to bind; ``0`` picks a free one.
        api_key: If set, requests must present this key (as the SDK sends it)
            or get the provider's authentication error; ``None`` accepts any key.
        raise_handler_errors: Re-raise exceptions from ``respond``/``fault_fn``
            (as an ``ExceptionGroup``) when the context manager exits.
    """

    provider: ClassVar[str]
    """``"gemini"``, ``"openai"`` or ``"anthropic"``."""
    kinds: ClassVar[frozenset[str]]
    """Every request kind the server routes (plus ``"unknown"``)."""
    generation_kinds: ClassVar[frozenset[str]]
    """The kinds answered by ``respond`` and targeted by ``script()`` without ``kind``."""

    def __init__(
        self,
        *,
        respond: Respond | None = None,
        fault_fn: FaultFn | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        raise_handler_errors: bool = True,
    ) -> None:
        self.respond: Respond = respond if respond is not None else default_respond
        self.api_key = api_key
        self.fault_fn: FaultFn | None = fault_fn
        self.latency = latency
        self.clock = clock
        self.raise_handler_errors = raise_handler_errors
        self._http = HTTPServer(self._handle, host=host, port=port)
        self._scripts: dict[str, deque[Fault | None]] = {}
        self._ids: Counter[str] = Counter()
        self.requests: list[ProviderRequest] = []
        """Every request received, in arrival order."""
        self.exchanges: list[Exchange] = []
        """Every answered (or hung/dropped) request with its outcome, in completion order."""
        self.counts: Counter[str] = Counter()
        """Requests per kind (``"generate_content"``, ``"cache_create"``, ...)."""
        self.path_counts: Counter[str] = Counter()
        """Requests per path (without query string)."""
        self.status_counts: Counter[int] = Counter()
        """Responses per HTTP status (hung/dropped requests are not counted)."""
        self.fault_counts: Counter[str] = Counter()
        """Faults applied, per fault class name."""
        self.handler_errors: list[Exception] = []
        """Exceptions raised by ``respond`` or ``fault_fn`` (each answered with a 500)."""
        self.in_flight = 0
        """Requests received but not yet answered (hung requests count until the client leaves)."""
        self.max_in_flight = 0
        """The highest ``in_flight`` seen."""
        self.rate_limits: dict[str, int] = {}
        """The configured per-minute limits by name (empty: no limits, no rate-limit headers)."""
        self.rate_limit_window_seconds = 3.0
        """The window the per-minute limits are enforced over (bucket capacity)."""
        self.rate_limit_admitted = 0
        """Generation requests the configured limits admitted."""
        self.rate_limit_rejections: Counter[str] = Counter()
        """429s sent by the configured limits, per limit name (scripted faults not included)."""
        self.rate_limit_charged: Counter[str] = Counter()
        """What admitted requests were charged, per limit name (``"requests"``, ``"tokens"``,
        ``"input_tokens"``, ``"output_tokens"``), after settling with the actual usage.  Counted
        for every name the server accounts, also those without a configured limit."""
        self._buckets: dict[str, _Bucket] = {}
        self._charges: dict[int, dict[str, int]] = {}

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> Self:
        """Start listening; returns ``self``."""
        await self._http.start()
        return self

    async def close(self) -> None:
        """Close the listening socket and every connection; cancel all handler tasks."""
        await self._http.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc is None and self.raise_handler_errors and self.handler_errors:
            raise ExceptionGroup(
                f"{type(self).__name__}: respond/fault_fn raised", list(self.handler_errors)
            )

    # ----------------------------------------------------------------------- urls

    @property
    def port(self) -> int:
        """The bound port."""
        return self._http.port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self._http.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The base URL the provider's SDK expects (see subclasses)."""
        return self.url

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        return self._http.open_connections

    # ------------------------------------------------------------------ scripting

    def script(self, *faults: Fault | None, kind: str | None = None) -> None:
        """Queue faults for the next requests, consumed one per request in arrival order.

        ``None`` entries let a request through unchanged.  Without ``kind`` the
        faults apply to generation requests (every kind in
        :attr:`generation_kinds`, e.g. Gemini's ``generateContent`` and
        ``streamGenerateContent``); ``kind`` (one of :attr:`kinds`) targets one
        kind; ``"*"`` targets requests of any kind.  A request takes from its
        own kind's queue first, then the generation queue, then ``"*"``.
        """
        for fault in faults:
            if fault is not None and not isinstance(fault, _FAULT_TYPES):
                raise TypeError(f"not a fault: {fault!r}")
        key = _GENERATION if kind is None else kind
        if key not in (_GENERATION, "*") and key not in self.kinds:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(self.kinds)} or '*'")
        self._scripts.setdefault(key, deque()).extend(faults)

    def pending_faults(self, kind: str | None = None) -> int:
        """Scripted entries not yet consumed: all, or those a request of ``kind`` could take."""
        if kind is None:
            return sum(len(q) for q in self._scripts.values())
        keys = [kind, "*"] + ([_GENERATION] if kind in self.generation_kinds else [])
        return sum(len(self._scripts.get(key, ())) for key in keys)

    def clear_script(self) -> None:
        """Drop every queued fault."""
        self._scripts.clear()

    @property
    def request_count(self) -> int:
        """Total requests received."""
        return len(self.requests)

    def reset_stats(self) -> None:
        """Clear recorded requests, exchanges and counters (not the script or provider state)."""
        self.requests.clear()
        self.exchanges.clear()
        self.counts.clear()
        self.path_counts.clear()
        self.status_counts.clear()
        self.fault_counts.clear()
        self.handler_errors.clear()
        self.max_in_flight = self.in_flight
        self.rate_limit_admitted = 0
        self.rate_limit_rejections.clear()
        self.rate_limit_charged.clear()

    # --------------------------------------------------------------- rate limits

    @property
    def rate_limited_count(self) -> int:
        """429s sent by the configured limits (all reasons; scripted faults not included)."""
        return sum(self.rate_limit_rejections.values())

    def rate_limit_status(self) -> dict[str, RateLimitStatus]:
        """The current state of every configured limit, by name (refilled to the clock's now)."""
        now = self.clock()
        for bucket in self._buckets.values():
            bucket.refill(now)
        return {name: bucket.status() for name, bucket in self._buckets.items()}

    def reset_rate_limits(self) -> None:
        """Fill every configured limit's bucket up (e.g. between benchmark runs)."""
        now = self.clock()
        for bucket in self._buckets.values():
            bucket.level = bucket.capacity
            bucket.updated = now

    def _configure_rate_limits(self, limits: Mapping[str, int | None], window: float) -> None:
        """Set up the buckets of the limits that are not ``None`` (called by subclasses)."""
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ValueError(f"rate_limit_window_seconds must be a number, got {window!r}")
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"rate_limit_window_seconds must be > 0, got {window!r}")
        self.rate_limit_window_seconds = float(window)
        now = self.clock()
        for name, value in limits.items():
            if name not in RATE_LIMIT_NAMES:
                raise ValueError(f"unknown rate limit {name!r}")
            limit = _check_limit(value, f"{name}_per_minute")
            if limit is not None:
                self.rate_limits[name] = limit
                self._buckets[name] = _Bucket(limit, float(window), now)

    def _rate_limit_reservation(self, request: ProviderRequest) -> dict[str, int]:
        """What a generation request is charged at admission, besides one request."""
        return {}

    def _rate_limit_error(self, rejection: RateLimitRejection) -> HTTPResponse:
        """The provider's 429 for a request the configured limits refused."""
        return self._error_response(429, None, retry_after=rejection.retry_after)

    def _rate_limit_headers(
        self, status: Mapping[str, RateLimitStatus], now: float
    ) -> list[tuple[str, str]]:
        """The provider's rate-limit headers for the configured limits' ``status``."""
        return []

    def _admit(self, request: ProviderRequest) -> RateLimitRejection | None:
        """Charge the request's reservation to every bucket, or return why it does not fit."""
        wanted = {"requests": 1, **self._rate_limit_reservation(request)}
        now = self.clock()
        rejection: RateLimitRejection | None = None
        for name, bucket in self._buckets.items():
            bucket.refill(now)
            amount = wanted.get(name, 0)
            if amount > bucket.limit:
                return RateLimitRejection(name, bucket.limit, amount, None, request.model)
            if not bucket.fits(amount):
                wait = bucket.wait(amount)
                if rejection is None or wait > (rejection.retry_after or 0.0):
                    rejection = RateLimitRejection(name, bucket.limit, amount, wait, request.model)
        if rejection is not None:
            return rejection
        for name, bucket in self._buckets.items():
            bucket.level -= wanted.get(name, 0)
        self._charges[request.index] = dict(wanted)
        self.rate_limit_charged.update(wanted)
        self.rate_limit_admitted += 1
        return None

    def _settle_rate_limits(self, request: ProviderRequest, usage: Mapping[str, int]) -> None:
        """Replace the admission charge of ``request`` by its final ``usage`` (per limit name).

        A higher usage is charged on top (the bucket may go into debt); a lower one is
        refunded (the bucket never holds more than its capacity).  Called by handlers once
        the answer's usage is known; a no-op without configured limits.
        """
        charged = self._charges.get(request.index)
        if charged is None:
            return
        now = self.clock()
        for name, final in usage.items():
            delta = final - charged.get(name, 0)
            charged[name] = final
            self.rate_limit_charged[name] += delta
            bucket = self._buckets.get(name)
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.capacity, bucket.level - delta)

    def _add_rate_limit_headers(self, response: HTTPResponse) -> None:
        """Append the rate-limit headers; headers the response already names are kept."""
        headers = self._rate_limit_headers(self.rate_limit_status(), self.clock())
        present = {name.lower() for name, _ in response.headers}
        response.headers.extend(h for h in headers if h[0].lower() not in present)

    # ------------------------------------------------------- provider hooks

    @abc.abstractmethod
    def _route(self, raw: HTTPRequest, body: JSONDict) -> Route | None:
        """Map a request to a route, or ``None`` for an unknown path."""

    @abc.abstractmethod
    def _error_response(
        self,
        status: int,
        message: str | None,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> HTTPResponse:
        """Render an error in the provider's format."""

    @abc.abstractmethod
    def _account_error(
        self, fault: AccountFault, raw: HTTPRequest, request: ProviderRequest
    ) -> APIError:
        """The provider's answer to an out-of-credit account, a wrong key or an unknown model."""

    def _malformed_reply(self, reply: Reply, fault: Malformed) -> Reply:
        """Corrupt a reply for :class:`Malformed`.

        A reply with tool calls gets empty arguments (``{}``), otherwise its text becomes
        ``fault.text``. Empty arguments fail schema validation where the wire format carries
        them as a parsed object (Gemini, Anthropic); a server whose format carries them as a
        JSON string overrides this.
        """
        if reply.tool_calls:
            calls = tuple(ToolCall(c.name, {}, c.id) for c in reply.tool_calls)
            return replace(reply, tool_calls=calls)
        return replace(reply, text=fault.text)

    @abc.abstractmethod
    def _check_api_key(self, raw: HTTPRequest) -> APIError | None:
        """Return the provider's authentication error if ``raw`` lacks :attr:`api_key`."""

    def _next_id(self, prefix: str, width: int = 24) -> str:
        """A deterministic, unique id such as ``msg_000000000000000000000001``."""
        self._ids[prefix] += 1
        return f"{prefix}{self._ids[prefix]:0{width}d}"

    # ------------------------------------------------------- request handling

    def _json_response(
        self, payload: Any, *, status: int = 200, headers: Sequence[tuple[str, str]] = ()
    ) -> HTTPResponse:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return HTTPResponse(status, body, headers=list(headers))

    async def _reply(self, request: ProviderRequest, malformed: Malformed | None) -> Reply:
        """Call the response function and normalise its result (used by handlers)."""
        try:
            value = self.respond(request)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise _HandlerFailure(exc) from exc
        reply = self._normalise(value, request)
        if malformed is not None:
            reply = self._malformed_reply(reply, malformed)
        return reply

    def _normalise(self, value: ResponseValue, request: ProviderRequest) -> Reply:
        if isinstance(value, Latency):
            raise _HandlerFailure(
                TypeError("respond() may not return Latency; make it async and sleep instead")
            )
        if isinstance(value, Malformed):
            reply = self._normalise(default_respond(request), request)
            return self._malformed_reply(reply, value)
        if isinstance(value, _FAULT_TYPES):
            raise _FaultSignal(value)
        if isinstance(value, Reply):
            return value
        if isinstance(value, ToolCall):
            return Reply(tool_calls=(value,))
        if isinstance(value, str):
            return Reply(text=value)
        if isinstance(value, Mapping | list):
            tool = request.forced_tool
            if tool is not None and isinstance(value, Mapping):
                return Reply(tool_calls=(ToolCall(tool.name, dict(value)),))
            return Reply(text=json.dumps(value))
        raise _HandlerFailure(TypeError(f"respond() returned unsupported value {value!r}"))

    def _next_fault(self, request: ProviderRequest) -> Fault | None:
        generation = request.kind in self.generation_kinds
        for key in (request.kind, _GENERATION if generation else None, "*"):
            if key is None:
                continue
            queue = self._scripts.get(key)
            if queue:
                return queue.popleft()
        if self.fault_fn is None:
            return None
        try:
            fault = self.fault_fn(request)
        except Exception as exc:
            raise _HandlerFailure(exc) from exc
        if fault is not None and not isinstance(fault, _FAULT_TYPES):
            raise _HandlerFailure(TypeError(f"fault_fn returned a non-fault {fault!r}"))
        return fault

    def _parse_body(self, raw: HTTPRequest) -> tuple[JSONDict, str | None]:
        if not raw.body.strip():
            return {}, None
        try:
            value = json.loads(raw.body)
        except ValueError as exc:
            return {}, f"Invalid JSON payload received. {exc}"
        if not isinstance(value, dict):
            return {}, "Invalid JSON payload received. Expected an object."
        return value, None

    async def _handle(self, raw: HTTPRequest, connection: ClientConnection) -> HandlerResult:
        body, body_error = self._parse_body(raw)
        route = None if body_error else self._route(raw, body)
        details = route.details if route is not None else RequestDetails(kind="unknown")
        request = ProviderRequest(
            provider=self.provider,
            kind=details.kind,
            index=len(self.requests),
            kind_index=self.counts[details.kind],
            method=raw.method,
            path=raw.path,
            query={k: v[0] for k, v in raw.query.items() if v},
            headers=dict(raw.headers),
            body=body,
            model=details.model,
            prompt=details.prompt,
            system=details.system,
            input_tokens=details.input_tokens,
            response_schema=details.response_schema,
            tools=details.tools,
            tool_choice=details.tool_choice,
            cached_content=details.cached_content,
            received_at=self.clock(),
        )
        self.requests.append(request)
        self.counts[request.kind] += 1
        self.path_counts[request.path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        outcome = _Outcome()
        try:
            return await self._process(raw, request, route, body_error, connection, outcome)
        finally:
            self.in_flight -= 1
            self._charges.pop(request.index, None)
            if outcome.fault is not None:
                self.fault_counts[type(outcome.fault).__name__] += 1
            if outcome.status is not None:
                self.status_counts[outcome.status] += 1
            self.exchanges.append(
                Exchange(
                    request, outcome.status, outcome.fault, outcome.error, outcome.rate_limited
                )
            )

    async def _process(
        self,
        raw: HTTPRequest,
        request: ProviderRequest,
        route: Route | None,
        body_error: str | None,
        connection: ClientConnection,
        outcome: _Outcome,
    ) -> HandlerResult:
        limited = (
            route is not None and bool(self._buckets) and request.kind in self.generation_kinds
        )
        try:
            auth_error = None if route is None or self.api_key is None else self._check_api_key(raw)
            if auth_error is not None:
                response = self._error_response(
                    auth_error.status, auth_error.message, code=auth_error.code
                )
                outcome.status = response.status
                return response
            if limited:
                rejection = self._admit(request)
                if rejection is not None:
                    self.rate_limit_rejections[rejection.name] += 1
                    outcome.rate_limited = rejection.name
                    response = self._rate_limit_error(rejection)
                    self._add_rate_limit_headers(response)
                    outcome.status = response.status
                    return response
            fault = self._next_fault(request)
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if isinstance(fault, Latency):
                self.fault_counts["Latency"] += 1
                await asyncio.sleep(fault.seconds)
                fault = None
            outcome.fault = fault
            result: HandlerResult | None
            try:
                result = await self._answer(raw, request, route, body_error, fault)
            except _FaultSignal as signal:
                outcome.fault = signal.fault
                if isinstance(signal.fault, _ACCOUNT_FAULTS):
                    result = self._account_response(signal.fault, raw, request)
                else:
                    result = self._fault_result(signal.fault)
        except _HandlerFailure as failure:
            outcome.error = failure.error
            self.handler_errors.append(failure.error)
            error = failure.error
            result = self._error_response(500, f"{type(error).__name__}: {error}")
        if result is None:  # Hang
            await connection.wait_for_disconnect()
            return _DisconnectResult()
        if isinstance(result, HTTPResponse):
            if limited:
                self._add_rate_limit_headers(result)
            outcome.status = result.status
        return result

    async def _answer(
        self,
        raw: HTTPRequest,
        request: ProviderRequest,
        route: Route | None,
        body_error: str | None,
        fault: Fault | None,
    ) -> HandlerResult | None:
        if isinstance(fault, _ACCOUNT_FAULTS):
            return self._account_response(fault, raw, request)
        if fault is not None and not isinstance(fault, Malformed):
            return self._fault_result(fault)
        if isinstance(fault, Malformed) and (fault.raw_body or route is None):
            return HTTPResponse(200, fault.text.encode("utf-8"))
        if body_error is not None:
            return self._error_response(400, body_error)
        if route is None:
            return self._error_response(404, f"Unknown path {raw.method} {raw.path}")
        malformed = fault if isinstance(fault, Malformed) else None
        if malformed is not None and not route.details.generation:
            return HTTPResponse(200, malformed.text.encode("utf-8"))
        try:
            return await route.handler(request, malformed)
        except APIError as exc:
            return self._error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)

    def _account_response(
        self, fault: AccountFault, raw: HTTPRequest, request: ProviderRequest
    ) -> HTTPResponse:
        error = self._account_error(fault, raw, request)
        return self._error_response(
            error.status, error.message, code=error.code, headers=error.headers
        )

    def _fault_result(self, fault: Fault) -> HandlerResult | None:
        """The response for a fault; ``None`` means hang."""
        if isinstance(fault, Hang):
            return None
        if isinstance(fault, Disconnect):
            return _DisconnectResult()
        if isinstance(fault, RateLimited):
            return self._error_response(429, fault.message, retry_after=fault.retry_after)
        if isinstance(fault, ServerError):
            return self._error_response(fault.status, fault.message, retry_after=fault.retry_after)
        if isinstance(fault, ErrorResponse):
            return self._error_response(fault.status, fault.message, headers=fault.headers)
        if isinstance(fault, Malformed):
            return HTTPResponse(200, fault.text.encode("utf-8"))
        raise TypeError(f"unexpected fault {fault!r}")  # Latency is consumed earlier


@dataclass
class _Outcome:
    status: int | None = None
    fault: Fault | None = None
    error: Exception | None = None
    rate_limited: str | None = None


class _HandlerFailure(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
