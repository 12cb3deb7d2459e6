"""The public face async_batch_llm.quota: value types and their validation."""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import pytest

import async_batch_llm.quota as quota
from async_batch_llm._internal import rate_limit_headers
from async_batch_llm.quota import (
    CharacterTokenEstimator,
    EstimateTooLargeError,
    QuotaLimits,
    TokenEstimate,
    TokenEstimator,
)


def test_all_lists_the_public_names() -> None:
    assert sorted(quota.__all__) == [
        "CharacterTokenEstimator",
        "EstimateTooLargeError",
        "QuotaLimits",
        "TokenEstimate",
        "TokenEstimator",
        "report_rate_limit_headers",
    ]
    for name in quota.__all__:
        assert getattr(quota, name) is not None
    assert quota.report_rate_limit_headers is rate_limit_headers.report_rate_limit_headers


def test_token_estimate_total_and_immutability() -> None:
    estimate = TokenEstimate(120, 30)
    assert estimate.total_tokens == 150
    assert TokenEstimate(5).output_tokens == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.input_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_tokens": -1}, ValueError, "TokenEstimate.input_tokens must be >= 0, got -1"),
        (
            {"input_tokens": 1, "output_tokens": -5},
            ValueError,
            "TokenEstimate.output_tokens must be >= 0, got -5",
        ),
        (
            {"input_tokens": True},
            TypeError,
            "TokenEstimate.input_tokens must be an int, got bool True",
        ),
        (
            {"input_tokens": 2.0},
            TypeError,
            "TokenEstimate.input_tokens must be an int, got float 2.0",
        ),
        (
            {"input_tokens": 1, "output_tokens": math.nan},
            TypeError,
            "TokenEstimate.output_tokens must be an int, got float nan",
        ),
    ],
    ids=["negative-input", "negative-output", "bool", "float", "nan"],
)
def test_token_estimate_validation(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as excinfo:
        TokenEstimate(**kwargs)
    assert str(excinfo.value) == message


def test_quota_limits_defaults_and_dimensions() -> None:
    assert QuotaLimits().as_dimensions() == {
        "requests": None,
        "tokens": None,
        "input_tokens": None,
        "output_tokens": None,
    }
    limits = QuotaLimits(500, 90_000, 60_000, 30_000)
    assert limits.as_dimensions() == {
        "requests": 500,
        "tokens": 90_000,
        "input_tokens": 60_000,
        "output_tokens": 30_000,
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"requests_per_minute": 0},
            ValueError,
            "QuotaLimits.requests_per_minute must be >= 1, got 0",
        ),
        (
            {"tokens_per_minute": True},
            TypeError,
            "QuotaLimits.tokens_per_minute must be an int, got bool True",
        ),
        (
            {"output_tokens_per_minute": 1.5},
            TypeError,
            "QuotaLimits.output_tokens_per_minute must be an int, got float 1.5",
        ),
        (
            {"tokens_per_minute": 1000, "input_tokens_per_minute": 1001},
            ValueError,
            "QuotaLimits.input_tokens_per_minute must be <= tokens_per_minute, got "
            "input_tokens_per_minute=1001 and tokens_per_minute=1000 (contradictory limits)",
        ),
        (
            {"tokens_per_minute": 1000, "output_tokens_per_minute": 2000},
            ValueError,
            "QuotaLimits.output_tokens_per_minute must be <= tokens_per_minute, got "
            "output_tokens_per_minute=2000 and tokens_per_minute=1000 (contradictory limits)",
        ),
    ],
    ids=["zero", "bool", "float", "input-above-total", "output-above-total"],
)
def test_quota_limits_validation(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as excinfo:
        QuotaLimits(**kwargs)
    assert str(excinfo.value) == message


def test_estimate_too_large_error_is_a_value_error_and_pickles() -> None:
    error = EstimateTooLargeError("anthropic:m", "input_tokens", 50_000, 40_000)
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.scope, copy.dimension, copy.amount, copy.limit) == (
        "anthropic:m",
        "input_tokens",
        50_000,
        40_000,
    )
    assert str(copy) == str(error)


def test_the_character_estimator_satisfies_the_estimator_protocol() -> None:
    estimator: TokenEstimator = CharacterTokenEstimator()
    assert estimator("abcd", strategy=None, attempt=1, state=None) == TokenEstimate(1, 256)  # type: ignore[arg-type]
