"""Error classification for the ``openai`` SDK (and the clients built on it).

:class:`OpenAIErrorClassifier` reads the SDK's own exception classes and HTTP status codes
instead of matching words in messages. It recognises errors raised by ``openai.AsyncOpenAI``
directly, by LangChain's ``ChatOpenAI`` (its errors subclass the SDK's) and by pydantic-ai's
OpenAI models (``ModelHTTPError`` and friends, raised ``from`` the SDK error).

The SDK is never imported here: an ``openai`` exception can only exist once the SDK has been
loaded, so the classes are looked up in :data:`sys.modules`, and ``import async_batch_llm``
stays free of the SDK.
"""

from __future__ import annotations

from typing import Any

from async_batch_llm.classifiers._http import (
    SDKErrorClassifier,
    client_class_info,
    info,
    status_info,
)
from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["OpenAIErrorClassifier"]

_OUT_OF_QUOTA = "insufficient_quota"
"""The code of a 429 that means the account is out of credit: waiting does not help."""


class OpenAIErrorClassifier(SDKErrorClassifier):
    """Classification rules for the OpenAI API (``openai`` SDK errors), first match wins.

    1. :class:`~async_batch_llm.strategies.errors.FrameworkTimeoutError` → retryable
       (``framework_timeout``).
    2. The SDK error, found on the exception itself or on its ``__cause__`` (pydantic-ai wraps
       it; LangChain subclasses it):

       - ``APITimeoutError`` → retryable timeout (``api_timeout``);
       - ``APIConnectionError`` → retryable (``connection_error``);
       - status 429 with code ``insufficient_quota`` (the account is out of credit) →
         **not** retryable, not a rate limit (``client_error``);
       - status 429 → retryable rate limit (``rate_limit``) with ``suggested_wait`` = the
         response's ``retry-after-ms``/``retry-after`` header, else
         :data:`~async_batch_llm.strategies.errors.DEFAULT_RATE_LIMIT_WAIT`;
       - 408 → retryable timeout (``api_timeout``); 409 → retryable (``client_error``);
       - 504 → retryable timeout (``server_timeout``); other 5xx (500, 502, 503, 529) →
         retryable (``server_error``), with the Retry-After as ``suggested_wait`` if sent;
       - any other 4xx (400, 401, 403, 404, 422, ...) → **not** retryable (``client_error``):
         the same request would fail again, and each retry may be billed;
       - ``APIResponseValidationError`` (the response did not match the SDK's schema) →
         retryable (``validation_error``).

    3. A pydantic ``ValidationError`` or pydantic-ai's ``UnexpectedModelBehavior`` → retryable
       (``validation_error``).
    4. Anything else: :class:`~async_batch_llm.strategies.errors.DefaultErrorClassifier`.

    Rate limits are retryable, so a rate-limited item is retried after the shared cooldown,
    which honours the provider's Retry-After.
    """

    _sdk_module = "openai"

    def _classify_sdk_error(self, error: BaseException) -> ErrorInfo | None:
        found = client_class_info(error, self._sdk_module)
        if found is not None:
            return found
        status: Any = getattr(error, "status_code", None)
        if not isinstance(status, int):
            return None
        if status == 429 and _error_code(error) == _OUT_OF_QUOTA:
            return info("client_error", retryable=False)
        return status_info(status, error)


def _error_code(error: BaseException) -> str | None:
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return code
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        nested = body.get("error", body)
        if isinstance(nested, dict) and isinstance(nested.get("code"), str):
            return str(nested["code"])
    return None
