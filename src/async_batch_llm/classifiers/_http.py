"""What the classifiers of the HTTP-API SDKs (``openai``, ``anthropic``) have in common.

:class:`SDKErrorClassifier` holds the order of the rules; the helpers read an SDK's exception
classes and HTTP status codes. No SDK is imported here: an SDK exception can only exist once
the SDK has been loaded, so its classes are looked up in :data:`sys.modules`, and
``import async_batch_llm`` stays free of the SDKs.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from typing import ClassVar

from pydantic import ValidationError

from async_batch_llm._internal.retry_after import retry_after_seconds
from async_batch_llm.strategies.errors import (
    DEFAULT_RATE_LIMIT_WAIT,
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
)


class SDKErrorClassifier(ErrorClassifier):
    """Classifies the errors of one SDK, first match wins (template method).

    1. :class:`~async_batch_llm.strategies.errors.FrameworkTimeoutError` → retryable
       (``framework_timeout``).
    2. The SDK error found by :func:`sdk_error`, classified by :meth:`_classify_sdk_error`
       (when that returns ``None``, the next rules apply).
    3. A pydantic ``ValidationError`` or pydantic-ai's ``UnexpectedModelBehavior`` → retryable
       (``validation_error``).
    4. Anything else: :class:`~async_batch_llm.strategies.errors.DefaultErrorClassifier`.

    A subclass sets :attr:`_sdk_module` and implements :meth:`_classify_sdk_error`.
    """

    _sdk_module: ClassVar[str]
    """The SDK's top-level module (``"openai"``, ``"anthropic"``)."""

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
        error = sdk_error(exception, self._sdk_module)
        if error is not None:
            found = self._classify_sdk_error(error)
            if found is not None:
                return found
        if isinstance(exception, ValidationError) or is_unexpected_model_behavior(exception):
            return info("validation_error", retryable=True)
        return self._fallback.classify(exception)

    @abstractmethod
    def _classify_sdk_error(self, error: BaseException) -> ErrorInfo | None:
        """Classify an error of the SDK, or return ``None`` to let the later rules decide."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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


def client_class_info(error: BaseException, module_name: str) -> ErrorInfo | None:
    """The classification of the SDK's own error classes that carry no HTTP status.

    ``APITimeoutError`` → retryable timeout (``api_timeout``); ``APIConnectionError`` →
    retryable (``connection_error``); ``APIResponseValidationError`` → retryable
    (``validation_error``); anything else → ``None``.
    """
    if is_instance(error, module_name, "APITimeoutError"):
        return info("api_timeout", retryable=True, timeout=True)
    if is_instance(error, module_name, "APIConnectionError"):
        return info("connection_error", retryable=True)
    if is_instance(error, module_name, "APIResponseValidationError"):
        return info("validation_error", retryable=True)
    return None


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
