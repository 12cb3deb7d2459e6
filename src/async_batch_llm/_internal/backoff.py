"""Pure retry-wait arithmetic (spec §4.5, §4.8.2).

Nothing here sleeps, reads a clock or touches the event loop: the worker asks "how long before
the next attempt?" and does the waiting itself. Randomness is injected so that tests can pin
the jitter factor exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from async_batch_llm.core.config import RetryConfig
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["capped_exponential", "is_validation_like", "retry_wait"]

_VALIDATION_NAME_MARKERS = ("validation", "parse", "unexpectedmodelbehavior")
_VALIDATION_MESSAGE_MARKER = "result validation"
_VALIDATION_CATEGORY = "validation_error"

# The largest float below 1.0. `0.5 + 0.5 * r` rounds up to exactly 1.0 for the largest values
# `random.random()` can return, so the factor is clamped to keep the documented [0.5, 1.0).
_JITTER_FACTOR_MAX = math.nextafter(1.0, 0.0)


def capped_exponential(initial: float, base: float, exponent: int, cap: float) -> float:
    """Return ``min(initial * base ** exponent, cap)`` without raising ``OverflowError``.

    For large exponents ``base ** exponent`` leaves the float range. Its magnitude is then
    larger than any float, so only the signs matter: the product is treated as ``±inf`` (or
    ``0.0`` when ``initial`` is zero) before the cap is applied.

    Args:
        initial: the value at exponent 0.
        base: the growth factor per step.
        exponent: the number of growth steps (may be 0 or negative).
        cap: the upper bound of the result.

    Returns:
        The capped value.
    """
    try:
        value = initial * base**exponent
    except OverflowError:
        if initial == 0:
            value = 0.0
        else:
            power_is_negative = base < 0 and exponent % 2 == 1
            value = math.copysign(math.inf, initial) * (-1.0 if power_is_negative else 1.0)
    return min(value, cap)


def retry_wait(
    attempt: int,
    retry: RetryConfig,
    *,
    validation_like: bool,
    rand: Callable[[], float],
) -> float:
    """Seconds to wait after failed attempt ``attempt`` before the next one (spec §4.5).

    Validation-like failures retry immediately. Otherwise the wait is
    ``min(initial_wait * exponential_base ** (attempt - 1), max_wait)``; with
    ``retry.jitter`` it is multiplied by a factor ``0.5 + 0.5 * rand()`` in ``[0.5, 1.0)``, so
    jitter only ever shortens the wait.

    Args:
        attempt: the 1-based number of the attempt that just failed.
        retry: the retry settings in use.
        validation_like: whether the failure is validation-like (see :func:`is_validation_like`).
        rand: a source of uniform floats in ``[0.0, 1.0)`` (``random.random`` in production);
            called at most once, and only when jitter applies.

    Returns:
        The wait in seconds, ``>= 0.0`` and ``<= retry.max_wait``.

    Raises:
        ValueError: if ``attempt < 1``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if validation_like:
        return 0.0
    wait = capped_exponential(
        retry.initial_wait, retry.exponential_base, attempt - 1, retry.max_wait
    )
    if retry.jitter:
        wait *= min(0.5 + 0.5 * rand(), _JITTER_FACTOR_MAX)
    return float(wait)


def is_validation_like(exc: BaseException, info: ErrorInfo) -> bool:
    """Whether a failed attempt should be retried without waiting (spec §4.5, first bullet).

    True when the exception's class name, lower-cased, contains ``validation``, ``parse`` or
    ``unexpectedmodelbehavior``; or ``str(exc)``, lower-cased, contains ``result validation``;
    or the classifier put the error in the ``validation_error`` category.

    Args:
        exc: the exception the attempt raised.
        info: what the error classifier said about ``exc``.

    Returns:
        True if the retry should happen immediately.
    """
    class_name = type(exc).__name__.lower()
    if any(marker in class_name for marker in _VALIDATION_NAME_MARKERS):
        return True
    if _VALIDATION_MESSAGE_MARKER in str(exc).lower():
        return True
    return info.error_category == _VALIDATION_CATEGORY
