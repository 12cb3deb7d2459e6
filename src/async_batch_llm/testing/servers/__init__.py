"""Local provider servers that speak the real wire formats of Gemini, OpenAI and Anthropic.

Each server is an in-process HTTP/1.1 server (stdlib :mod:`asyncio` streams
only) on ``127.0.0.1`` with a random free port.  The official SDKs work against
it unchanged, so tests exercise the SDKs' real HTTP code paths offline::

    from async_batch_llm.testing.servers import GeminiServer, OpenAIServer, AnthropicServer

    async with GeminiServer() as server:
        client = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))

    async with OpenAIServer() as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)

    async with AnthropicServer() as server:
        client = AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0)

Scripting (the same on every server):

* ``respond(request) -> str | dict | list | ToolCall | Reply | fault`` (sync or
  async) decides each generation reply from a :class:`ProviderRequest`
  (``model``, ``prompt``, ``system``, ``body``, ``index``, ``tools``,
  ``response_schema``, ...).  The default, :func:`default_respond`, echoes
  ``"echo: " + prompt``, answers forced tool calls and structured-output
  requests with an example of the requested JSON schema.
* Faults: :class:`Latency`, :class:`RateLimited`, :class:`ServerError`,
  :class:`ErrorResponse`, :class:`Hang`, :class:`Disconnect`, :class:`Malformed`, and the
  account answers :class:`InsufficientQuota`, :class:`InvalidAPIKey`, :class:`ModelNotFound`
  (each provider's real status and body).
  Queue them with ``server.script(RateLimited(2.0), None, ServerError(503))``
  (consumed one per generation request in arrival order, ``None`` = pass
  through; ``kind="cache_create"`` etc. targets another request kind,
  ``kind="*"`` any), or decide them per request with
  ``fault_fn(request) -> Fault | None``; ``respond`` may also return a fault.
* Counters: ``request_count``, ``counts`` (per kind), ``path_counts``,
  ``status_counts``, ``fault_counts``, ``in_flight``/``max_in_flight``, and the
  recorded ``requests`` (:class:`ProviderRequest`) and ``exchanges``
  (:class:`Exchange`: request, status, fault, error).
* Tokens: :func:`count_tokens` (whitespace-separated words, at least 1) is the
  deterministic tokenizer behind every usage number; each server module
  documents exactly which text is counted.
* Time: ``clock`` (default ``time.time``) drives timestamps, every cache
  expiry and the rate-limit buckets, so tests can expire caches and refill
  limits without sleeping.
* Rate limits (OpenAI and Anthropic, off by default):
  ``OpenAIServer(requests_per_minute=..., tokens_per_minute=...)`` and
  ``AnthropicServer(requests_per_minute=..., tokens_per_minute=...,
  input_tokens_per_minute=..., output_tokens_per_minute=...)`` enforce
  per-minute limits over a short window (``rate_limit_window_seconds``, 3 s)
  like the real services: over-limit requests get the provider's 429 with
  ``retry-after``, and every answer carries the real ``x-ratelimit-*`` /
  ``anthropic-ratelimit-*`` headers.  Counters: ``rate_limit_admitted``,
  ``rate_limit_rejections`` (per limit), ``rate_limited_count``,
  ``rate_limit_charged`` (per limit, after settling with actual usage) and
  ``rate_limit_status()`` (:class:`RateLimitStatus` per limit).  Each server
  module documents its accounting rule and headers.

Exiting the context closes the listening socket and every connection
(including hung ones) and waits for all handler tasks.  Exceptions raised by
``respond``/``fault_fn`` are answered with a 500 and re-raised as an
``ExceptionGroup`` when the context exits (``raise_handler_errors=False`` to
disable).

SDK retry defaults (disable them in tests that count requests):

* google-genai: no retries unless ``HttpOptions(retry_options=HttpRetryOptions(...))``.
* openai / anthropic: 2 retries; pass ``max_retries=0``.
"""

from ._batches import BatchTiming
from ._core import (
    Disconnect,
    ErrorResponse,
    Exchange,
    Fault,
    FaultFn,
    Hang,
    InsufficientQuota,
    InvalidAPIKey,
    Latency,
    Malformed,
    ModelNotFound,
    ProviderRequest,
    ProviderServer,
    RateLimited,
    RateLimitStatus,
    Reply,
    Respond,
    ResponseValue,
    ServerError,
    ToolCall,
    ToolSpec,
    count_tokens,
    default_respond,
    example_for_schema,
)
from .anthropic import AnthropicServer
from .gemini import GeminiCache, GeminiServer
from .openai import OpenAIServer

__all__ = [
    "AnthropicServer",
    "BatchTiming",
    "Disconnect",
    "ErrorResponse",
    "Exchange",
    "Fault",
    "FaultFn",
    "GeminiCache",
    "GeminiServer",
    "Hang",
    "InsufficientQuota",
    "InvalidAPIKey",
    "Latency",
    "Malformed",
    "ModelNotFound",
    "OpenAIServer",
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
