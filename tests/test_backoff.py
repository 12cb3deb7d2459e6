"""The pure retry-wait functions of ``_internal.backoff`` (spec §4.5)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from pydantic import BaseModel, ValidationError

from async_batch_llm._internal.backoff import capped_exponential, is_validation_like, retry_wait
from async_batch_llm.core.config import RetryConfig
from async_batch_llm.strategies.errors import DefaultErrorClassifier, ErrorInfo

UNKNOWN = ErrorInfo(True, False, False, "unknown")
VALIDATION = ErrorInfo(True, False, False, "validation_error")

LARGEST_RAND = 1.0 - 2.0**-53  # the largest value random.random() can return


def _constant(value: float) -> Callable[[], float]:
    return lambda: value


def _never_called() -> float:
    raise AssertionError("rand must not be called")


# --------------------------------------------------------------------------------------------
# retry_wait
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "attempt", "expected"),
    [
        (RetryConfig(jitter=False), 1, 1.0),
        (RetryConfig(jitter=False), 2, 2.0),
        (RetryConfig(jitter=False), 3, 4.0),
        (RetryConfig(jitter=False), 6, 32.0),
        (RetryConfig(jitter=False), 7, 60.0),
        (RetryConfig(jitter=False), 10_000, 60.0),
        (RetryConfig(max_attempts=10**6, jitter=False), 10**6, 60.0),
        (RetryConfig(initial_wait=0.5, exponential_base=3.0, max_wait=10.0, jitter=False), 3, 4.5),
        (RetryConfig(initial_wait=0.5, exponential_base=3.0, max_wait=10.0, jitter=False), 4, 10.0),
        (RetryConfig(initial_wait=2.0, exponential_base=1.0, jitter=False), 50, 2.0),
        (RetryConfig(initial_wait=5.0, max_wait=5.0, jitter=False), 1, 5.0),
        (RetryConfig(max_wait=math.inf, jitter=False), 11, 1024.0),
        (RetryConfig(max_wait=math.inf, jitter=False), 5000, math.inf),
    ],
    ids=[
        "default-a1",
        "default-a2",
        "default-a3",
        "default-a6",
        "default-a7-capped",
        "default-huge-attempt-capped",
        "default-million-attempts-capped",
        "base3-a3",
        "base3-a4-capped",
        "base1-constant",
        "max-equals-initial",
        "uncapped-a11",
        "uncapped-overflow-is-inf",
    ],
)  # fmt: skip
def test_retry_wait_without_jitter_is_exact(
    retry: RetryConfig, attempt: int, expected: float
) -> None:
    assert retry_wait(attempt, retry, validation_like=False, rand=_never_called) == expected


@pytest.mark.parametrize(
    ("attempt", "rand_value", "expected"),
    [
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (2, 0.0, 1.0),
        (2, 0.5, 1.5),
        (3, 0.25, 2.5),
        (7, 0.0, 30.0),
        (7, 0.5, 45.0),
        (1, LARGEST_RAND, math.nextafter(1.0, 0.0)),
        (7, LARGEST_RAND, 60.0 * math.nextafter(1.0, 0.0)),
    ],
    ids=[
        "a1-rand0",
        "a1-rand-half",
        "a2-rand0",
        "a2-rand-half",
        "a3-rand-quarter",
        "a7-capped-rand0",
        "a7-capped-rand-half",
        "a1-largest-rand-stays-below-1",
        "a7-largest-rand-stays-below-cap",
    ],
)
def test_retry_wait_with_jitter_uses_the_injected_rand(
    attempt: int, rand_value: float, expected: float
) -> None:
    wait = retry_wait(attempt, RetryConfig(), validation_like=False, rand=_constant(rand_value))
    assert wait == expected


def test_jitter_only_shortens_the_wait() -> None:
    retry = RetryConfig()
    assert retry_wait(1, retry, validation_like=False, rand=_constant(LARGEST_RAND)) < 1.0
    assert retry_wait(7, retry, validation_like=False, rand=_constant(LARGEST_RAND)) < 60.0


def test_jitter_calls_rand_once_per_wait() -> None:
    calls: list[None] = []

    def rand() -> float:
        calls.append(None)
        return 0.0

    retry_wait(2, RetryConfig(), validation_like=False, rand=rand)
    assert len(calls) == 1


@pytest.mark.parametrize("jitter", [True, False], ids=["jitter", "no-jitter"])
@pytest.mark.parametrize("attempt", [1, 2, 50], ids=lambda a: f"a{a}")
def test_validation_like_failures_retry_immediately(jitter: bool, attempt: int) -> None:
    retry = RetryConfig(jitter=jitter)
    assert retry_wait(attempt, retry, validation_like=True, rand=_never_called) == 0.0


def test_retry_wait_returns_a_float_for_int_settings() -> None:
    retry = RetryConfig(initial_wait=1, max_wait=60, exponential_base=2, jitter=False)
    wait = retry_wait(3, retry, validation_like=False, rand=_never_called)
    assert type(wait) is float
    assert wait == 4.0
    capped = retry_wait(5000, retry, validation_like=False, rand=_never_called)
    assert type(capped) is float
    assert capped == 60.0


@pytest.mark.parametrize("attempt", [0, -1], ids=["zero", "negative"])
def test_retry_wait_rejects_attempt_below_one(attempt: int) -> None:
    with pytest.raises(ValueError, match=r"^attempt must be >= 1, got -?\d+$"):
        retry_wait(attempt, RetryConfig(), validation_like=False, rand=_never_called)


# --------------------------------------------------------------------------------------------
# capped_exponential
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial", "base", "exponent", "cap", "expected"),
    [
        (60.0, 2.0, 0, 600.0, 60.0),
        (60.0, 2.0, 3, 600.0, 480.0),
        (60.0, 2.0, 4, 600.0, 600.0),
        (60.0, 2.0, 5000, 600.0, 600.0),
        (60, 2, 5000, 600, 600),
        (0.0, 2.0, 5000, 600.0, 0.0),
        (0, 2, 5000, 600.0, 0),
        (-1.0, 2.0, 5000, 600.0, -math.inf),
        (-1.0, -2.0, 5001, 600.0, 600.0),
        (1.0, -2.0, 5001, 600.0, -math.inf),
        (1.0, 0.5, -5000, 600.0, 600.0),
        (1.0, 2.0, 5000, math.inf, math.inf),
        (60.0, 2.0, -1, 600.0, 30.0),
    ],
    ids=[
        "exponent-0",
        "below-cap",
        "at-cap",
        "float-overflow",
        "int-overflow",
        "zero-initial-overflow",
        "zero-int-initial-overflow",
        "negative-initial-overflow",
        "negative-base-negative-power",
        "negative-base-odd-exponent",
        "negative-exponent-overflow",
        "infinite-cap",
        "negative-exponent",
    ],
)
def test_capped_exponential(
    initial: float, base: float, exponent: int, cap: float, expected: float
) -> None:
    assert capped_exponential(initial, base, exponent, cap) == expected


# --------------------------------------------------------------------------------------------
# is_validation_like
# --------------------------------------------------------------------------------------------


class ValidationFailure(Exception):
    pass


class OutputParserException(Exception):
    pass


class JSONParseError(Exception):
    pass


class UnexpectedModelBehavior(RuntimeError):
    pass


class _Model(BaseModel):
    count: int


def _pydantic_validation_error() -> ValidationError:
    try:
        _Model.model_validate({"count": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validation unexpectedly passed")


@pytest.mark.parametrize(
    ("exc", "info", "expected"),
    [
        (ValidationFailure("x"), UNKNOWN, True),
        (OutputParserException("x"), UNKNOWN, True),
        (JSONParseError("x"), UNKNOWN, True),
        (UnexpectedModelBehavior("x"), UNKNOWN, True),
        (_pydantic_validation_error(), UNKNOWN, True),
        (RuntimeError("Result validation failed after 3 tries"), UNKNOWN, True),
        (RuntimeError("RESULT VALIDATION"), UNKNOWN, True),
        (RuntimeError("boom"), VALIDATION, True),
        (RuntimeError("boom"), UNKNOWN, False),
        (RuntimeError("validation failed"), UNKNOWN, False),
        (RuntimeError("could not parse"), UNKNOWN, False),
        (ValueError("bad"), ErrorInfo(False, False, False, "logic_error"), False),
        (TimeoutError(), ErrorInfo(True, False, True, "api_timeout"), False),
    ],
    ids=[
        "class-name-validation",
        "class-name-parser",
        "class-name-parse-error",
        "class-name-unexpected-model-behavior",
        "pydantic-validation-error",
        "message-result-validation",
        "message-result-validation-uppercase",
        "classifier-category",
        "plain-runtime-error",
        "message-validation-alone-is-not-enough",
        "message-parse-alone-is-not-enough",
        "logic-error",
        "timeout",
    ],
)
def test_is_validation_like(exc: Exception, info: ErrorInfo, expected: bool) -> None:
    assert is_validation_like(exc, info) is expected


def test_pydantic_validation_error_retries_immediately_with_default_classifier() -> None:
    exc = _pydantic_validation_error()
    info = DefaultErrorClassifier().classify(exc)
    assert info.is_retryable
    validation_like = is_validation_like(exc, info)
    assert retry_wait(1, RetryConfig(), validation_like=validation_like, rand=_never_called) == 0.0
