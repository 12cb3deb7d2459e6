"""The value types of quota admission: estimates, limits, the estimator protocol, the error.

They live here, apart from the gate, so that :mod:`async_batch_llm.core.config` can name them
without importing any machinery (no import cycle); :mod:`async_batch_llm.quota` re-exports them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from async_batch_llm._strategies.base import LLMCallStrategy
    from async_batch_llm._types import RetryState

__all__ = [
    "DIMENSIONS",
    "EstimateTooLargeError",
    "QuotaLimits",
    "TokenEstimate",
    "TokenEstimator",
]

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")
"""The quantities a gate can limit, in the order they are reported."""


def _check_count(owner: str, name: str, value: object, *, minimum: int) -> None:
    # bool subclasses int, but `input_tokens=True` is a mistake, not a count; floats (NaN
    # included) are rejected as a type, not coerced.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """The tokens one attempt is expected to use, reserved before it starts.

    Args:
        input_tokens: expected prompt tokens (int >= 0).
        output_tokens: expected completion tokens (int >= 0); reserved against the output and
            total limits, so an allowance that is too low lets the gate overshoot until usage
            reconciles it.

    Raises:
        TypeError: if a count is not an ``int`` (``bool`` and ``float`` are rejected).
        ValueError: if a count is negative.
    """

    input_tokens: int
    output_tokens: int = 0

    def __post_init__(self) -> None:
        _check_count("TokenEstimate", "input_tokens", self.input_tokens, minimum=0)
        _check_count("TokenEstimate", "output_tokens", self.output_tokens, minimum=0)

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``."""
        return self.input_tokens + self.output_tokens


class TokenEstimator(Protocol):
    """Anything that estimates the tokens of one attempt before it starts.

    Called as ``estimator(prompt, strategy=..., attempt=..., state=...)`` with the item's prompt,
    its strategy, the 1-based attempt number and the item's :class:`RetryState`. It returns a
    :class:`TokenEstimate` or an awaitable of one.
    """

    def __call__(
        self,
        prompt: Any,
        *,
        strategy: LLMCallStrategy[Any],
        attempt: int,
        state: RetryState | None,
    ) -> TokenEstimate | Awaitable[TokenEstimate]: ...


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Per-minute limits of one quota scope; ``None`` leaves a dimension undeclared.

    An undeclared dimension is not enforced until the provider's rate-limit headers reveal its
    limit (a learned limit); a declared one always wins over headers.

    Args:
        requests_per_minute: attempts started per minute.
        tokens_per_minute: input plus output tokens per minute.
        input_tokens_per_minute: input tokens per minute (<= ``tokens_per_minute`` if both set).
        output_tokens_per_minute: output tokens per minute (<= ``tokens_per_minute`` if both set).

    Raises:
        TypeError: if a limit is neither ``None`` nor an ``int`` (``bool`` is rejected).
        ValueError: if a limit is < 1, or an input/output limit exceeds the total limit
            (contradictory limits).
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    input_tokens_per_minute: int | None = None
    output_tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
        ):
            value = getattr(self, name)
            if value is not None:
                _check_count("QuotaLimits", name, value, minimum=1)
        total = self.tokens_per_minute
        for name in ("input_tokens_per_minute", "output_tokens_per_minute"):
            part = getattr(self, name)
            if total is not None and part is not None and part > total:
                raise ValueError(
                    f"QuotaLimits.{name} must be <= tokens_per_minute, got {name}={part!r} "
                    f"and tokens_per_minute={total!r} (contradictory limits)"
                )

    def as_dimensions(self) -> dict[str, float | None]:
        """The limits keyed by dimension name (``"requests"``, ``"tokens"``, ...)."""
        return {
            "requests": self.requests_per_minute,
            "tokens": self.tokens_per_minute,
            "input_tokens": self.input_tokens_per_minute,
            "output_tokens": self.output_tokens_per_minute,
        }


class EstimateTooLargeError(ValueError):
    """An attempt's estimate exceeds a whole per-minute limit, so it could never be admitted.

    Raised at once by the gate (no waiting); the processor fails only that item.

    Attributes:
        scope: the quota scope.
        dimension: ``"requests"``, ``"tokens"``, ``"input_tokens"`` or ``"output_tokens"``.
        amount: the estimated amount.
        limit: the per-minute limit it exceeds.
    """

    def __init__(self, scope: str, dimension: str, amount: float, limit: float) -> None:
        self.scope = scope
        self.dimension = dimension
        self.amount = amount
        self.limit = limit
        super().__init__(
            f"estimated {dimension} of one attempt ({amount:g}) exceed the whole per-minute "
            f"{dimension} limit ({limit:g}) of quota scope {scope!r}; the attempt can never "
            "be admitted"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.scope, self.dimension, self.amount, self.limit))
