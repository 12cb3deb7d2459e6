"""Gemini-aware error classification (spec §7.4, §7.5).

:class:`GeminiErrorClassifier` recognises the ``google-genai`` SDK's ``ClientError`` and
``ServerError`` without importing the SDK: an instance of those classes can only exist once the
SDK is loaded, so the classifier looks them up among the loaded modules.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from async_batch_llm._providers import gemini as _gemini
from async_batch_llm.strategies.errors import DEFAULT_RATE_LIMIT_WAIT as DEFAULT_RATE_LIMIT_WAIT
from async_batch_llm.strategies.errors import RATE_LIMIT_PATTERNS as RATE_LIMIT_PATTERNS
from async_batch_llm.strategies.errors import ErrorClassifier, ErrorInfo, FrameworkTimeoutError

__all__ = [
    "DEFAULT_RATE_LIMIT_WAIT",
    "RATE_LIMIT_PATTERNS",
    "TIMEOUT_PATTERNS",
    "GeminiErrorClassifier",
    "retry_delay_from_gemini_error",
]

TIMEOUT_PATTERNS: tuple[str, ...] = ("timeout", "504", "deadline")
"""Lower-case fragments whose presence in ``str(exc).lower()`` marks a timeout."""

_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
# A google.protobuf.Duration in its JSON form: decimal seconds followed by "s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
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


def _seconds(value: object) -> float | None:
    """Seconds from a Duration: ``"2s"``/``"1.5s"`` or ``{"seconds": .., "nanos": ..}``."""
    seconds: float
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            return None
        seconds = float(match.group(1))
    elif isinstance(value, Mapping):
        whole, nanos = value.get("seconds", 0), value.get("nanos", 0)
        try:
            seconds = float(whole) + float(nanos) / 1e9
        except (TypeError, ValueError):
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _retry_after_header(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not isinstance(headers, Mapping):
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not isinstance(value, str):
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # the HTTP-date form is not worth a clock dependency here
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_delay_from_gemini_error(exc: BaseException) -> float | None:
    """The wait the Gemini API asked for in a rate-limit error, in seconds.

    Reads the ``google.rpc.RetryInfo`` entry (``retryDelay``, e.g. ``"2s"``) among the error
    details that ``google.genai.errors.APIError`` keeps in its ``details`` attribute (the JSON
    error body, with or without its ``{"error": ...}`` envelope). Falls back to a numeric
    ``Retry-After`` header on the error's HTTP response. Pure: no I/O, no SDK import.

    Args:
        exc: any exception; only its ``details`` and ``response`` attributes are read.

    Returns:
        The delay in seconds, or ``None`` when the error carries none (or it is malformed).
    """
    body = getattr(exc, "details", None)
    if isinstance(body, Mapping):
        envelope = body.get("error", body)
        entries = envelope.get("details") if isinstance(envelope, Mapping) else None
        if isinstance(entries, Sequence) and not isinstance(entries, str):
            for entry in entries:
                if not isinstance(entry, Mapping) or entry.get("@type") != _RETRY_INFO_TYPE:
                    continue
                delay = _seconds(entry.get("retryDelay", entry.get("retry_delay")))
                if delay is not None:
                    return delay
    return _retry_after_header(exc)


def _rate_limit(exc: Exception) -> ErrorInfo:
    wait = retry_delay_from_gemini_error(exc)
    return ErrorInfo(
        is_retryable=False,
        is_rate_limit=True,
        is_timeout=False,
        error_category="rate_limit",
        suggested_wait=DEFAULT_RATE_LIMIT_WAIT if wait is None else wait,
    )


def _info(category: str, *, retryable: bool, timeout: bool = False) -> ErrorInfo:
    return ErrorInfo(
        is_retryable=retryable,
        is_rate_limit=False,
        is_timeout=timeout,
        error_category=category,
    )


def _is_unexpected_model_behavior(exc: Exception) -> bool:
    # Like the SDK errors: an instance exists only if pydantic-ai is loaded, and importing it
    # here would stall the event loop for a second or more.
    module = sys.modules.get("pydantic_ai.exceptions")
    kind = getattr(module, "UnexpectedModelBehavior", None)
    return isinstance(kind, type) and isinstance(exc, kind)


class GeminiErrorClassifier(ErrorClassifier):
    """Classification rules for the Gemini API (spec §7.4).

    With patterns matched case-insensitively against ``str(exception)``, the first matching
    rule wins:

    1. :class:`~async_batch_llm.strategies.errors.FrameworkTimeoutError` → retryable
       (``framework_timeout``);
    2. google-genai not installed → retryable (``unknown``) for every other exception;
    3. ``google.genai.errors.ClientError`` matching :data:`RATE_LIMIT_PATTERNS` → **not**
       retryable rate limit (``rate_limit``); any other ``ClientError`` → retryable
       (``client_error``);
    4. ``google.genai.errors.ServerError`` matching :data:`TIMEOUT_PATTERNS` → retryable
       (``server_timeout``); any other ``ServerError`` (500, 503) → **not** retryable
       (``server_error``);
    5. ``pydantic_ai.exceptions.UnexpectedModelBehavior`` → retryable (``validation_error``);
    6. a rate-limit pattern in the message → not retryable (``rate_limit``);
    7. a timeout pattern in the message → retryable (``timeout``);
    8. a pydantic ``ValidationError`` → retryable (``validation_error``);
    9. ``ValueError``, ``TypeError``, ``AttributeError``, ``KeyError``, ``IndexError``,
       ``NameError``, ``ZeroDivisionError``, ``AssertionError`` → not retryable
       (``logic_error``);
    10. anything else → retryable (``unknown``).

    Rate limits report ``suggested_wait``: the API's ``RetryInfo`` delay when the error carries
    one (see :func:`retry_delay_from_gemini_error`), else :data:`DEFAULT_RATE_LIMIT_WAIT`.
    Because they are not retryable, a rate-limited item fails after the shared cooldown.
    """

    def classify(self, exception: Exception) -> ErrorInfo:
        """Classify ``exception`` by the rules in the class docstring.

        Args:
            exception: the exception an attempt raised.

        Returns:
            A new :class:`~async_batch_llm.strategies.errors.ErrorInfo`.
        """
        if isinstance(exception, FrameworkTimeoutError):
            return _info("framework_timeout", retryable=True, timeout=True)

        sdk_errors = _gemini.loaded_genai_errors()
        if not sdk_errors and not _gemini.genai_installed():
            return _info("unknown", retryable=True)

        msg = str(exception).lower()
        is_rate_limit = any(pattern in msg for pattern in RATE_LIMIT_PATTERNS)
        is_timeout = any(pattern in msg for pattern in TIMEOUT_PATTERNS)
        if sdk_errors:
            client_error, server_error = sdk_errors
            if isinstance(exception, client_error):
                if is_rate_limit:
                    return _rate_limit(exception)
                return _info("client_error", retryable=True)
            if isinstance(exception, server_error):
                if is_timeout:
                    return _info("server_timeout", retryable=True, timeout=True)
                return _info("server_error", retryable=False)

        if _is_unexpected_model_behavior(exception):
            return _info("validation_error", retryable=True)
        if is_rate_limit:
            return _rate_limit(exception)
        if is_timeout:
            return _info("timeout", retryable=True, timeout=True)
        if isinstance(exception, ValidationError):
            return _info("validation_error", retryable=True)
        if isinstance(exception, _LOGIC_ERROR_TYPES):
            return _info("logic_error", retryable=False)
        return _info("unknown", retryable=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
