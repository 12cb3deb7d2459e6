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

import sys
from typing import Any

from pydantic import ValidationError

from async_batch_llm._internal.retry_after import retry_after_seconds
from async_batch_llm.strategies.errors import (
    DEFAULT_RATE_LIMIT_WAIT,
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
)

__all__ = ["OpenAIErrorClassifier"]

_OUT_OF_QUOTA = "insufficient_quota"
"""The code of a 429 that means the account is out of credit: waiting does not help."""


def sdk_error(exception: BaseException, module_name: str) -> BaseException | None:
    """The SDK ``APIError`` behind ``exception``: itself, or the ``__cause__`` a wrapper kept.

    Args:
        exception: the exception an attempt raised.
        module_name: the SDK's top-level module (``"openai"``, ``"anthropic"``).

    Returns:
        The SDK error, or ``None`` when neither is one (or the SDK is not loaded).
    """
    module = sys.modules.get(module_name)
    api_error = getattr(module, "APIError", None)
    if not isinstance(api_error, type):
        return None
    for candidate in (exception, exception.__cause__):
        if isinstance(candidate, api_error):
            return candidate
    return None


def is_instance(error: BaseException, module_name: str, class_name: str) -> bool:
    """Whether ``error`` is an instance of ``module_name.class_name`` (a loaded SDK class)."""
    kind = getattr(sys.modules.get(module_name), class_name, None)
    return isinstance(kind, type) and isinstance(error, kind)


def is_unexpected_model_behavior(error: BaseException) -> bool:
    """Whether ``error`` is pydantic-ai's ``UnexpectedModelBehavior`` (output validation)."""
    return is_instance(error, "pydantic_ai.exceptions", "UnexpectedModelBehavior")


def info(
    category: str,
    *,
    retryable: bool,
    timeout: bool = False,
    rate_limit: bool = False,
    wait: float | None = None,
) -> ErrorInfo:
    """An :class:`ErrorInfo` built by keyword."""
    return ErrorInfo(
        is_retryable=retryable,
        is_rate_limit=rate_limit,
        is_timeout=timeout,
        error_category=category,
        suggested_wait=wait,
    )


def rate_limit_info(error: BaseException) -> ErrorInfo:
    """A retryable rate limit whose ``suggested_wait`` is the provider's Retry-After."""
    wait = retry_after_seconds(error)
    return info(
        "rate_limit",
        retryable=True,
        rate_limit=True,
        wait=DEFAULT_RATE_LIMIT_WAIT if wait is None else wait,
    )


def status_info(status: int, error: BaseException) -> ErrorInfo | None:
    """The classification of an HTTP error status shared by the OpenAI-style APIs.

    Args:
        status: the HTTP status code of the error response.
        error: the SDK error (read for a ``Retry-After`` on server errors).

    Returns:
        The classification, or ``None`` for a status that is not an error (below 400).
    """
    if status == 429:
        return rate_limit_info(error)
    if status == 408:
        return info("api_timeout", retryable=True, timeout=True)
    if status == 409:  # a conflict (e.g. a lock held by a concurrent request) clears by itself
        return info("client_error", retryable=True)
    if status == 504:
        return info("server_timeout", retryable=True, timeout=True, wait=retry_after_seconds(error))
    if status >= 500:  # 500, 502, 503 and overload statuses such as 529
        return info("server_error", retryable=True, wait=retry_after_seconds(error))
    if status >= 400:  # the request itself is wrong: retrying costs money and cannot succeed
        return info("client_error", retryable=False)
    return None


class OpenAIErrorClassifier(ErrorClassifier):
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

    def __init__(self) -> None:
        self._fallback = DefaultErrorClassifier()

    def classify(self, exception: Exception) -> ErrorInfo:
        """Classify ``exception`` by the rules in the class docstring.

        Args:
            exception: the exception an attempt raised.

        Returns:
            A new :class:`~async_batch_llm.strategies.errors.ErrorInfo`.
        """
        if isinstance(exception, FrameworkTimeoutError):
            return info("framework_timeout", retryable=True, timeout=True)
        error = sdk_error(exception, "openai")
        if error is not None:
            found = _classify_openai(error)
            if found is not None:
                return found
        if isinstance(exception, ValidationError) or is_unexpected_model_behavior(exception):
            return info("validation_error", retryable=True)
        return self._fallback.classify(exception)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _classify_openai(error: BaseException) -> ErrorInfo | None:
    if is_instance(error, "openai", "APITimeoutError"):
        return info("api_timeout", retryable=True, timeout=True)
    if is_instance(error, "openai", "APIConnectionError"):
        return info("connection_error", retryable=True)
    if is_instance(error, "openai", "APIResponseValidationError"):
        return info("validation_error", retryable=True)
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
