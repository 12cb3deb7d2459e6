"""Processor configuration: retries, rate limits and everything else (spec §12).

The three dataclasses check themselves when constructed and again whenever :meth:`validate`
is called (after mutating a field, for example). Nothing is coerced: a value of the wrong type
raises ``TypeError`` naming the field, and a value out of range raises ``ValueError`` whose
message begins with the fragment the spec fixes (``max_workers must be >= 1``) and goes on
with the value given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from async_batch_llm._internal.backoff import capped_exponential
from async_batch_llm._internal.quota_backend import QuotaBackend
from async_batch_llm._internal.quota_types import QuotaLimits, TokenEstimator
from async_batch_llm.core.guardrails import GuardrailConfig

__all__ = ["ProcessorConfig", "RateLimitConfig", "RetryConfig"]

logger = logging.getLogger(__name__)

_MAX_REPR = 80
_EXACT_SUM_TERMS = 10_000


def _describe(value: object) -> str:
    """``"<type name> <repr>"``, the repr shortened if it is long."""
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return f"{type(value).__name__} {text}"


def _check_int(name: str, value: object) -> None:
    # bool subclasses int, but `max_workers=True` is a mistake, not a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")


def _check_number(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        allowed = "an int, a float or None" if optional else "an int or a float"
        raise TypeError(f"{name} must be {allowed}, got {_describe(value)}")
    # NaN compares false with everything, so it would slip through every range check below.
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        kind = ValueError if isinstance(value, str) else TypeError
        raise kind(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_optional_int(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int or None, got {_describe(value)}")


def _check_quotas(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise TypeError(f"quotas must be a Mapping or None, got {_describe(value)}")
    for scope, limits in value.items():
        if not isinstance(scope, str):
            raise TypeError(f"quotas keys must be str (quota scopes), got {_describe(scope)}")
        if not scope:
            raise ValueError("quotas keys must be non-empty quota scopes, got ''")
        if not isinstance(limits, QuotaLimits):
            raise TypeError(f"quotas[{scope!r}] must be a QuotaLimits, got {_describe(limits)}")


def _check_instance(name: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {_describe(value)}")


@dataclass
class RetryConfig:
    """How many attempts an item gets and how long to wait between them (spec §4.5).

    The wait after failed attempt ``a`` is
    ``min(initial_wait * exponential_base ** (a - 1), max_wait)`` seconds, shortened by a random
    factor in ``[0.5, 1.0)`` when ``jitter`` is true. Validation-like failures retry at once.

    Args:
        max_attempts: total attempts per item, the first included (``1`` = no retries).
        initial_wait: seconds to wait after the first failed attempt (> 0).
        max_wait: upper bound of any wait, in seconds (>= ``initial_wait``).
        exponential_base: growth factor between consecutive waits (>= 1).
        jitter: multiply each wait by a random factor in ``[0.5, 1.0)``.

    Raises:
        TypeError: if a field has the wrong type (``bool`` is not an int; ints are accepted
            where a float is expected).
        ValueError: if a number is NaN or out of range; checks run in the order
            ``max_attempts``, ``initial_wait``, ``max_wait``, ``exponential_base``.
    """

    max_attempts: int = 3
    initial_wait: float = 1.0
    max_wait: float = 60.0
    exponential_base: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again, for use after mutating the config.

        Raises:
            TypeError: if a field has the wrong type.
            ValueError: if a value is NaN or out of range.
        """
        _check_int("max_attempts", self.max_attempts)
        _check_number("initial_wait", self.initial_wait)
        _check_number("max_wait", self.max_wait)
        _check_number("exponential_base", self.exponential_base)
        _check_bool("jitter", self.jitter)

        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be >= 1, got {self.max_attempts!r} "
                "(it counts every attempt, the first included; 1 means no retries)"
            )
        if self.initial_wait <= 0:
            raise ValueError(
                f"initial_wait must be > 0, got {self.initial_wait!r} "
                "(seconds to wait before the first retry)"
            )
        if self.max_wait < self.initial_wait:
            raise ValueError(
                f"max_wait must be >= initial_wait, got max_wait={self.max_wait!r} "
                f"and initial_wait={self.initial_wait!r}"
            )
        if self.exponential_base < 1:
            raise ValueError(
                f"exponential_base must be >= 1, got {self.exponential_base!r} "
                "(1 keeps every wait at initial_wait)"
            )


@dataclass
class RateLimitConfig:
    """Settings of the default rate-limit strategy (spec §4.8).

    The n-th consecutive cooldown lasts
    ``min(cooldown_seconds * backoff_multiplier ** (n - 1), 600.0)`` seconds; after each
    cooldown the next ``slow_start_items`` new items are delayed by a linear ramp from
    ``slow_start_initial_delay`` down to ``slow_start_final_delay`` seconds.

    Args:
        cooldown_seconds: length of the first cooldown, in seconds (>= 0).
        slow_start_items: number of new items delayed after each cooldown (>= 0; 0 disables).
        slow_start_initial_delay: delay of the first item after a cooldown, in seconds.
        slow_start_final_delay: smallest slow-start delay, in seconds (<= initial delay).
        backoff_multiplier: growth factor between consecutive cooldowns (>= 1.0).

    Raises:
        TypeError: if a field has the wrong type.
        ValueError: if a number is NaN or out of range; checks run in the order
            ``cooldown_seconds``, ``slow_start_items``, the two delays, ``backoff_multiplier``.
    """

    cooldown_seconds: float = 300.0
    slow_start_items: int = 50
    slow_start_initial_delay: float = 2.0
    slow_start_final_delay: float = 0.1
    backoff_multiplier: float = 1.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again, for use after mutating the config.

        Raises:
            TypeError: if a field has the wrong type.
            ValueError: if a value is NaN or out of range.
        """
        _check_number("cooldown_seconds", self.cooldown_seconds)
        _check_int("slow_start_items", self.slow_start_items)
        _check_number("slow_start_initial_delay", self.slow_start_initial_delay)
        _check_number("slow_start_final_delay", self.slow_start_final_delay)
        _check_number("backoff_multiplier", self.backoff_multiplier)

        if self.cooldown_seconds < 0:
            raise ValueError(f"cooldown_seconds must be >= 0, got {self.cooldown_seconds!r}")
        if self.slow_start_items < 0:
            raise ValueError(
                f"slow_start_items must be >= 0, got {self.slow_start_items!r} "
                "(0 disables slow start)"
            )
        if self.slow_start_initial_delay < self.slow_start_final_delay:
            raise ValueError(
                "slow_start_initial_delay must be >= slow_start_final_delay, got "
                f"slow_start_initial_delay={self.slow_start_initial_delay!r} "
                f"and slow_start_final_delay={self.slow_start_final_delay!r}"
            )
        if self.backoff_multiplier < 1.0:
            raise ValueError(
                f"backoff_multiplier must be >= 1.0, got {self.backoff_multiplier!r} "
                "(1.0 keeps every cooldown at cooldown_seconds)"
            )


@dataclass
class ProcessorConfig:
    """Everything a :class:`ParallelBatchProcessor` needs to know (spec §12.3).

    Args:
        max_workers: number of worker tasks (>= 1).
        timeout_per_item: seconds allowed for each attempt's ``execute()`` call (> 0); not a
            budget for the whole item (spec §4.4.1).
        retry: attempts and waits between them.
        rate_limit: cooldown and slow-start settings of the default rate-limit strategy.
        max_requests_per_minute: proactive limit on attempts started per minute (> 0), or
            ``None`` for no limit.
        progress_interval: every this many processed items, log progress and call the
            progress callback (>= 1).
        progress_callback_timeout: seconds after which a running progress callback is
            abandoned (> 0), or ``None`` for no limit.
        enable_detailed_logging: stored, currently without effect.
        max_queue_size: bound of the work queue, ``0`` for unbounded (>= 0).
        dry_run: call ``strategy.dry_run()`` instead of ``execute()``.
        max_tokens_per_minute: input plus output tokens per minute (> 0), or ``None``.
        max_input_tokens_per_minute: input tokens per minute (> 0, at most
            ``max_tokens_per_minute``), or ``None``.
        max_output_tokens_per_minute: output tokens per minute (> 0, at most
            ``max_tokens_per_minute``), or ``None``.
        token_estimator: estimates each attempt's tokens before it is admitted (a
            :class:`~async_batch_llm.quota.TokenEstimator`); ``None`` means a learning
            estimator when a token limit is in force.
        quota_burst_seconds: seconds of refill the quota buckets hold, i.e. the largest burst
            (> 0, finite); ``None`` means about one second.
        quotas: limits per quota scope (``LLMCallStrategy.quota_scope``); a listed scope uses
            its :class:`~async_batch_llm.quota.QuotaLimits` instead of the ``max_*`` fields,
            which apply to every other scope, each scope separately.
        guardrails: budgets, deadlines and the error categories that stop the batch
            (:class:`~async_batch_llm.core.GuardrailConfig`; by default no budget or deadline,
            and the batch stops at the first ``authentication`` or ``insufficient_quota``
            answer).
        mode: ``"online"`` (one API call per attempt) or ``"batch"``: items go through their
            provider's batch API at the batch price (built-in OpenAI strategy; see
            docs/batch-mode.md). Every item's strategy must support batch mode.
        batch_fallback: in batch mode, where lines that failed (retryably) or expired go
            next: ``"batch"`` (another job) or ``"online"`` (ordinary calls).
        quota_backend: where the quota buckets and the rate-limit cooldown live (a
            :class:`~async_batch_llm.backends.QuotaBackend`); ``None`` or an
            :class:`~async_batch_llm.backends.InMemoryQuotaBackend` keeps them in this
            processor, a :class:`~async_batch_llm.backends.redis.RedisQuotaBackend` shares
            them with every process using the same Redis and namespace.

    Raises:
        TypeError: if a field has the wrong type (``retry`` must be a :class:`RetryConfig`,
            ``rate_limit`` a :class:`RateLimitConfig`).
        ValueError: if a number is NaN or out of range; own fields are checked first (in the
            order ``max_workers``, ``timeout_per_item``, ``progress_interval``,
            ``progress_callback_timeout``, ``max_queue_size``, ``max_requests_per_minute``,
            the three token limits, ``quota_burst_seconds``, ``quotas``), then ``retry`` and
            ``rate_limit``. An input or output limit above the total limit is contradictory
            and raises ``ValueError``.

    Settings that are valid but probably unintended are logged as warnings on the
    ``async_batch_llm.core.config`` logger, never raised.
    """

    max_workers: int = 5
    timeout_per_item: float = 120.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    max_requests_per_minute: float | None = None
    progress_interval: int = 10
    progress_callback_timeout: float | None = 5.0
    enable_detailed_logging: bool = False
    max_queue_size: int = 0
    dry_run: bool = False
    max_tokens_per_minute: int | None = None
    max_input_tokens_per_minute: int | None = None
    max_output_tokens_per_minute: int | None = None
    token_estimator: TokenEstimator | None = None
    quota_burst_seconds: float | None = None
    quotas: Mapping[str, QuotaLimits] | None = None
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)
    mode: Literal["online", "batch"] = "online"
    batch_fallback: Literal["batch", "online"] = "batch"
    quota_backend: QuotaBackend | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and the nested configs) again, then log advisory warnings.

        Raises:
            TypeError: if a field has the wrong type.
            ValueError: if a value is NaN or out of range.
        """
        _check_int("max_workers", self.max_workers)
        _check_number("timeout_per_item", self.timeout_per_item)
        _check_instance("retry", self.retry, RetryConfig)
        _check_instance("rate_limit", self.rate_limit, RateLimitConfig)
        _check_number("max_requests_per_minute", self.max_requests_per_minute, optional=True)
        _check_int("progress_interval", self.progress_interval)
        _check_number("progress_callback_timeout", self.progress_callback_timeout, optional=True)
        _check_bool("enable_detailed_logging", self.enable_detailed_logging)
        _check_int("max_queue_size", self.max_queue_size)
        _check_bool("dry_run", self.dry_run)
        _check_optional_int("max_tokens_per_minute", self.max_tokens_per_minute)
        _check_optional_int("max_input_tokens_per_minute", self.max_input_tokens_per_minute)
        _check_optional_int("max_output_tokens_per_minute", self.max_output_tokens_per_minute)
        if self.token_estimator is not None and not callable(self.token_estimator):
            raise TypeError(
                f"token_estimator must be callable or None, got {_describe(self.token_estimator)}"
            )
        _check_number("quota_burst_seconds", self.quota_burst_seconds, optional=True)
        _check_quotas(self.quotas)
        _check_instance("guardrails", self.guardrails, GuardrailConfig)
        _check_choice("mode", self.mode, ("online", "batch"))
        _check_choice("batch_fallback", self.batch_fallback, ("batch", "online"))
        if self.quota_backend is not None and not isinstance(self.quota_backend, QuotaBackend):
            raise TypeError(
                "quota_backend must be a QuotaBackend (InMemoryQuotaBackend, "
                "RedisQuotaBackend, or an object with its methods: ping, acquire, settle, "
                "begin_cooldown, extend_cooldown, reset_consecutive, aclose) or None, got "
                f"{_describe(self.quota_backend)}"
            )

        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers!r}")
        if self.timeout_per_item <= 0:
            raise ValueError(
                f"timeout_per_item must be > 0, got {self.timeout_per_item!r} "
                "(seconds allowed for each attempt)"
            )
        if self.progress_interval < 1:
            raise ValueError(f"progress_interval must be >= 1, got {self.progress_interval!r}")
        if self.progress_callback_timeout is not None and self.progress_callback_timeout <= 0:
            raise ValueError(
                "progress_callback_timeout must be > 0, got "
                f"{self.progress_callback_timeout!r} (use None for no limit)"
            )
        if self.max_queue_size < 0:
            raise ValueError(
                f"max_queue_size must be >= 0, got {self.max_queue_size!r} (0 means unbounded)"
            )
        if self.max_requests_per_minute is not None and self.max_requests_per_minute <= 0:
            raise ValueError(
                "max_requests_per_minute must be > 0 or None, got "
                f"{self.max_requests_per_minute!r} (None disables proactive rate limiting)"
            )
        self._validate_quota_limits()
        self.retry.validate()
        self.rate_limit.validate()
        self.guardrails.validate()

        self._warn_about_unlikely_settings()

    def _validate_quota_limits(self) -> None:
        for name in (
            "max_tokens_per_minute",
            "max_input_tokens_per_minute",
            "max_output_tokens_per_minute",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(
                    f"{name} must be > 0 or None, got {value!r} (None leaves it unlimited)"
                )
        total = self.max_tokens_per_minute
        for name in ("max_input_tokens_per_minute", "max_output_tokens_per_minute"):
            part = getattr(self, name)
            if total is not None and part is not None and part > total:
                raise ValueError(
                    f"{name} must be <= max_tokens_per_minute, got {name}={part!r} "
                    f"and max_tokens_per_minute={total!r} (contradictory limits)"
                )
        burst = self.quota_burst_seconds
        if burst is not None and not (math.isfinite(burst) and burst > 0):
            raise ValueError(
                f"quota_burst_seconds must be > 0 and finite, got {burst!r} "
                "(None means about one second)"
            )

    def _warn_about_unlikely_settings(self) -> None:
        if 0 < self.max_queue_size < self.max_workers:
            logger.warning(
                "max_queue_size=%r is smaller than max_workers=%r; "
                "the queue bound limits how many workers can be busy",
                self.max_queue_size,
                self.max_workers,
            )
        if self.timeout_per_item < self.retry.initial_wait:
            logger.warning(
                "timeout_per_item=%r is shorter than retry.initial_wait=%r",
                self.timeout_per_item,
                self.retry.initial_wait,
            )
        worst_case = _worst_case_total_retry_wait(self.retry)
        if self.timeout_per_item < worst_case / 2:
            logger.warning(
                "timeout_per_item=%r is shorter than half of the worst-case total retry "
                "wait (%r s over %r attempts)",
                self.timeout_per_item,
                worst_case,
                self.retry.max_attempts,
            )
        if (
            self.max_requests_per_minute is not None
            and self.max_requests_per_minute / 60 < self.max_workers
        ):
            logger.warning(
                "max_requests_per_minute=%r allows fewer requests per second than "
                "max_workers=%r; workers will mostly wait for the rate limiter",
                self.max_requests_per_minute,
                self.max_workers,
            )


def _worst_case_total_retry_wait(retry: RetryConfig) -> float:
    """``sum(min(initial_wait * base ** i, max_wait) for i in range(max_attempts - 1))``.

    Summed term by term (exactly as written) until the terms reach ``max_wait``, after which
    they all equal it. Only when more than ``_EXACT_SUM_TERMS`` terms stay below the cap (a
    base barely above 1, or a huge cap) is a closed-form geometric series used instead, so a
    huge ``max_attempts`` is cheap and never overflows. Assumes a validated ``retry``.
    """
    retries = retry.max_attempts - 1
    initial, base, cap = retry.initial_wait, retry.exponential_base, retry.max_wait
    total = 0.0
    for i in range(min(retries, _EXACT_SUM_TERMS)):
        term = capped_exponential(initial, base, i, cap)
        if term >= cap:
            return total + (retries - i) * cap
        total += term
    if retries <= _EXACT_SUM_TERMS:
        return total
    growth = math.log1p(base - 1.0)
    if growth == 0.0:
        # base == 1: every term is initial_wait (below the cap, or the loop would have ended).
        return retries * initial
    # The geometric series sum_{i<k} initial * base**i = initial * (base**k - 1) / (base - 1),
    # written with expm1/log1p to stay accurate for a base close to 1.
    if math.isinf(cap):
        uncapped = retries
    else:
        uncapped = min(retries, math.ceil(math.log(cap / initial) / growth))
    try:
        geometric = initial * math.expm1(uncapped * growth) / (base - 1.0)
    except OverflowError:
        return math.inf
    return geometric + (retries - uncapped) * cap
