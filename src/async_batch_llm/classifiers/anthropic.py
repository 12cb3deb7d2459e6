"""Error classification for the ``anthropic`` SDK.

:class:`AnthropicErrorClassifier` reads the SDK's exception classes, HTTP status codes and the
error ``type`` of the response body. It recognises errors raised by ``anthropic.AsyncAnthropic``
directly and by wrappers that chain the SDK error as ``__cause__`` (pydantic-ai's
``ModelHTTPError``).

The SDK is never imported here (see :mod:`async_batch_llm.classifiers.openai`): its classes
are looked up in :data:`sys.modules`, so ``import async_batch_llm`` stays free of it.
"""

from __future__ import annotations

from typing import Any

from async_batch_llm.classifiers._http import (
    SDKErrorClassifier,
    client_class_info,
    info,
    rate_limit_info,
    status_info,
)
from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["AnthropicErrorClassifier"]

_CLIENT_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)


class AnthropicErrorClassifier(SDKErrorClassifier):
    """Classification rules for the Anthropic API (``anthropic`` SDK errors), first match wins.

    1. :class:`~async_batch_llm.strategies.errors.FrameworkTimeoutError` → retryable
       (``framework_timeout``).
    2. The SDK error, found on the exception itself or on its ``__cause__``:

       - ``APITimeoutError`` → retryable timeout (``api_timeout``);
       - ``APIConnectionError`` → retryable (``connection_error``);
       - status 429 (``rate_limit_error``) → retryable rate limit (``rate_limit``) with
         ``suggested_wait`` = the ``retry-after-ms``/``retry-after`` header, else
         :data:`~async_batch_llm.strategies.errors.DEFAULT_RATE_LIMIT_WAIT`;
       - 408 → retryable timeout (``api_timeout``); 409 → retryable (``client_error``);
       - 504 (``timeout_error``) → retryable timeout (``server_timeout``);
       - 529 (``overloaded_error``) and other 5xx (500, 502, 503) → retryable
         (``server_error``), with the Retry-After as ``suggested_wait`` if sent;
       - any other 4xx (400, 401, 402, 403, 404, 413, 422, ...) → **not** retryable
         (``client_error``): the same request would fail again;
       - an error event inside a streamed (HTTP 200) response is classified by its ``type``
         the same way (``overloaded_error``/``api_error`` → ``server_error``, and so on);
       - ``APIResponseValidationError`` → retryable (``validation_error``).

    3. A pydantic ``ValidationError`` or pydantic-ai's ``UnexpectedModelBehavior`` → retryable
       (``validation_error``).
    4. Anything else: :class:`~async_batch_llm.strategies.errors.DefaultErrorClassifier`.
    """

    _sdk_module = "anthropic"

    def _classify_sdk_error(self, error: BaseException) -> ErrorInfo | None:
        found = client_class_info(error, self._sdk_module)
        if found is not None:
            return found
        status: Any = getattr(error, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return status_info(status, error)
        return _by_error_type(getattr(error, "type", None), error)


def _by_error_type(kind: object, error: BaseException) -> ErrorInfo | None:
    """Classify an error event of a streamed response, whose HTTP status was 200."""
    if kind == "rate_limit_error":
        return rate_limit_info(error)
    if kind in ("overloaded_error", "api_error"):
        return info("server_error", retryable=True)
    if kind == "timeout_error":
        return info("server_timeout", retryable=True, timeout=True)
    if kind in _CLIENT_ERROR_TYPES:
        return info("client_error", retryable=False)
    return None
