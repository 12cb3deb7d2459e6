"""Error classification: which failures retry, which are rate limits (spec §7.1–7.3, 7.5, 7.6).

The processor asks an :class:`ErrorClassifier` about every exception an attempt raises and acts
on the :class:`ErrorInfo` it returns. :class:`DefaultErrorClassifier` holds the provider-neutral
rules; the two exceptions defined here are raised by the processor
(:class:`FrameworkTimeoutError`) and by strategies (:class:`TokenTrackingError`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import cast

from pydantic import ValidationError

from async_batch_llm._types import TokenUsage

__all__ = [
    "DEFAULT_RATE_LIMIT_WAIT",
    "RATE_LIMIT_PATTERNS",
    "DefaultErrorClassifier",
    "ErrorClassifier",
    "ErrorInfo",
    "FrameworkTimeoutError",
    "TokenTrackingError",
]

RATE_LIMIT_PATTERNS: tuple[str, ...] = ("429", "resource_exhausted", "quota", "rate limit")
"""Lower-case fragments whose presence in ``str(exc).lower()`` marks a rate limit."""

DEFAULT_RATE_LIMIT_WAIT: float = 300.0
"""The ``suggested_wait`` (seconds) reported for rate limits; informational only."""

_LOGIC_ERROR_TYPES: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    NameError,
    ZeroDivisionError,
    AssertionError,
)


@dataclass
class ErrorInfo:
    """What a classifier concluded about one exception.

    Attributes:
        is_retryable: whether the processor may run another attempt of the item.
        is_rate_limit: whether the error starts (or joins) the shared rate-limit cooldown.
        is_timeout: whether the error is a timeout of some kind.
        error_category: a short label; the built-in classifiers use ``rate_limit``,
            ``framework_timeout``, ``api_timeout``, ``timeout``, ``server_timeout``,
            ``connection_error``, ``validation_error``, ``client_error``, ``server_error``,
            ``logic_error`` and ``unknown``.
        suggested_wait: seconds the provider would like us to wait, if known. Informational:
            the processor does not use it.
    """

    is_retryable: bool
    is_rate_limit: bool
    is_timeout: bool
    error_category: str
    suggested_wait: float | None = None


class ErrorClassifier(ABC):
    """Turns an exception raised by an attempt into an :class:`ErrorInfo`.

    The processor only needs a ``classify`` method, so any object that has one works; subclass
    this to make the intent explicit. ``classify`` must be fast and must not block: it runs on
    the event loop for every failed attempt.
    """

    @abstractmethod
    def classify(self, exception: Exception) -> ErrorInfo:
        """Classify ``exception``.

        Args:
            exception: the exception an attempt raised.

        Returns:
            The classification the processor acts on.
        """


class DefaultErrorClassifier(ErrorClassifier):
    """Provider-neutral classification rules (spec §7.3).

    With ``msg = str(exception).lower()``, the first matching rule wins:

    1. ``msg`` contains one of :data:`RATE_LIMIT_PATTERNS` → retryable rate limit
       (``rate_limit``, ``suggested_wait=300.0``);
    2. :class:`FrameworkTimeoutError` → retryable timeout (``framework_timeout``);
    3. a ``TimeoutError``, or ``msg`` contains ``timeout`` → retryable timeout (``api_timeout``);
    4. a ``ConnectionError``, or ``msg`` contains ``connection`` → retryable
       (``connection_error``);
    5. a pydantic ``ValidationError`` → retryable (``validation_error``);
    6. ``ValueError``, ``TypeError``, ``AttributeError``, ``KeyError``, ``IndexError``,
       ``NameError``, ``ZeroDivisionError`` or ``AssertionError`` (or a subclass) →
       **not** retryable (``logic_error``);
    7. anything else → retryable (``unknown``).

    The message is consulted before the type, so ``ValueError("connection reset")`` is a
    retryable connection error and ``KeyError("quota")`` is a rate limit.
    """

    def classify(self, exception: Exception) -> ErrorInfo:
        """Classify ``exception`` by the rules in the class docstring.

        Args:
            exception: the exception an attempt raised.

        Returns:
            A new :class:`ErrorInfo`.
        """
        msg = str(exception).lower()
        if any(pattern in msg for pattern in RATE_LIMIT_PATTERNS):
            return ErrorInfo(
                is_retryable=True,
                is_rate_limit=True,
                is_timeout=False,
                error_category="rate_limit",
                suggested_wait=DEFAULT_RATE_LIMIT_WAIT,
            )
        if isinstance(exception, FrameworkTimeoutError):
            return _retryable("framework_timeout", is_timeout=True)
        if isinstance(exception, TimeoutError) or "timeout" in msg:
            return _retryable("api_timeout", is_timeout=True)
        if isinstance(exception, ConnectionError) or "connection" in msg:
            return _retryable("connection_error")
        if isinstance(exception, ValidationError):
            return _retryable("validation_error")
        if isinstance(exception, _LOGIC_ERROR_TYPES):
            return ErrorInfo(
                is_retryable=False,
                is_rate_limit=False,
                is_timeout=False,
                error_category="logic_error",
            )
        return _retryable("unknown")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _retryable(category: str, *, is_timeout: bool = False) -> ErrorInfo:
    return ErrorInfo(
        is_retryable=True,
        is_rate_limit=False,
        is_timeout=is_timeout,
        error_category=category,
    )


class FrameworkTimeoutError(TimeoutError):
    """An attempt exceeded ``ProcessorConfig.timeout_per_item`` (spec §4.4.1).

    Raised by the processor (chained ``from`` the original timeout) when it cancels a running
    ``execute()`` call. Being a ``TimeoutError``, ``except TimeoutError`` catches it too.

    Args:
        message: the text ``str(error)`` returns.
        item_id: the work item whose attempt timed out.
        elapsed: seconds the attempt ran before it was cancelled.
        timeout_limit: the limit in seconds that was exceeded.

    Attributes:
        item_id, elapsed, timeout_limit: the keyword arguments, as given.
    """

    def __init__(
        self,
        message: str,
        *,
        item_id: str | None = None,
        elapsed: float | None = None,
        timeout_limit: float | None = None,
    ) -> None:
        super().__init__(message)
        self.item_id = item_id
        self.elapsed = elapsed
        self.timeout_limit = timeout_limit


class TokenTrackingError(Exception):
    """Carries the token usage of a failed call, so a failed item still reports its spend.

    Use it when the original exception cannot take attributes: raise
    ``TokenTrackingError(str(err), token_usage=usage) from err``. The usage is stored under the
    documented attachment attribute ``_failed_token_usage`` (spec §4.7), which the processor
    reads from the exception's ``__dict__``.

    Args:
        message: the text ``str(error)`` returns.
        token_usage: the tokens the failed call consumed; ``None`` or empty stores ``{}``. A
            copy is stored, so later changes to the caller's mapping do not leak in.

    Attributes:
        _failed_token_usage: the stored usage dict (``{}`` when none was given).
    """

    _failed_token_usage: dict[str, int]

    def __init__(
        self,
        message: str,
        *,
        token_usage: TokenUsage | dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        # A TokenUsage holds only int values; the cast records that for the type checker.
        usage = cast("dict[str, int]", dict(token_usage)) if token_usage else {}
        self.__dict__["_failed_token_usage"] = usage
