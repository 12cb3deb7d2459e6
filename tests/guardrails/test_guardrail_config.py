"""``GuardrailConfig`` refuses bad values at construction, naming the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from async_batch_llm import GuardrailConfig, ProcessorConfig
from async_batch_llm.core import GuardrailConfig as CoreGuardrailConfig


def price(model: str, usage: Any) -> float:
    return 0.0


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"total_timeout_per_item": 0}, ValueError, "total_timeout_per_item must be > 0"),
    ({"total_timeout_per_item": -1.5}, ValueError, "total_timeout_per_item must be > 0"),
    ({"total_timeout_per_item": math.nan}, ValueError, "total_timeout_per_item must not be NaN"),
    ({"total_timeout_per_item": "5"}, TypeError, "total_timeout_per_item must be an int, a float"),
    ({"batch_timeout": 0.0}, ValueError, "batch_timeout must be > 0"),
    ({"batch_timeout": True}, TypeError, "batch_timeout must be an int, a float or None"),
    ({"batch_timeout": math.nan}, ValueError, "batch_timeout must not be NaN"),
    ({"max_total_tokens": 0}, ValueError, "max_total_tokens must be > 0"),
    ({"max_total_tokens": -10}, ValueError, "max_total_tokens must be > 0"),
    ({"max_total_tokens": 10.5}, TypeError, "max_total_tokens must be an int or None"),
    ({"max_total_cost": 0, "cost_function": price}, ValueError, "max_total_cost must be > 0"),
    (
        {"max_total_cost": math.nan, "cost_function": price},
        ValueError,
        "max_total_cost must not be NaN",
    ),
    ({"max_total_cost": "1", "cost_function": price}, TypeError, "max_total_cost must be"),
    ({"cost_function": 3}, TypeError, "cost_function must be callable"),
    ({"abort_on_error_categories": "authentication"}, TypeError, "abort_on_error_categories"),
    ({"abort_on_error_categories": ["authentication"]}, TypeError, "abort_on_error_categories"),
    ({"abort_on_error_categories": {""}}, ValueError, "non-empty category names"),
    ({"abort_on_error_categories": {3}}, ValueError, "non-empty category names"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_values_are_refused_naming_the_field(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        GuardrailConfig(**kwargs)


def test_a_config_mutated_after_construction_is_refused_by_the_processor_config() -> None:
    guardrails = GuardrailConfig()
    guardrails.batch_timeout = -1
    with pytest.raises(ValueError, match="batch_timeout must be > 0"):
        ProcessorConfig(guardrails=guardrails)


def test_good_values_are_kept() -> None:
    config = GuardrailConfig(
        total_timeout_per_item=30,
        batch_timeout=3600.0,
        max_total_tokens=1_000_000,
        max_total_cost=25.0,
        cost_function=price,
        abort_on_error_categories={"authentication"},  # type: ignore[arg-type]  # a set is kept
    )
    assert config.abort_on_error_categories == frozenset({"authentication"})
    assert config.has_caps
    assert GuardrailConfig is CoreGuardrailConfig
    assert ProcessorConfig().guardrails == GuardrailConfig()
