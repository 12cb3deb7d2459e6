"""The quota fields of ProcessorConfig (BEYOND §N2)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from async_batch_llm.core.config import ProcessorConfig
from async_batch_llm.quota import CharacterTokenEstimator, QuotaLimits

NEW_FIELDS = {
    "max_tokens_per_minute": None,
    "max_input_tokens_per_minute": None,
    "max_output_tokens_per_minute": None,
    "token_estimator": None,
    "quota_burst_seconds": None,
    "quotas": None,
}


def test_quota_fields_default_to_none() -> None:
    config = ProcessorConfig()
    assert {name: getattr(config, name) for name in NEW_FIELDS} == NEW_FIELDS


def test_a_full_quota_configuration_is_valid() -> None:
    estimator = CharacterTokenEstimator(3.5, 512)
    quotas = {"openai:gpt-4o": QuotaLimits(requests_per_minute=500, tokens_per_minute=30_000)}
    config = ProcessorConfig(
        max_requests_per_minute=100,
        max_tokens_per_minute=90_000,
        max_input_tokens_per_minute=90_000,
        max_output_tokens_per_minute=10_000,
        token_estimator=estimator,
        quota_burst_seconds=0.5,
        quotas=quotas,
    )
    config.validate()
    assert config.token_estimator is estimator
    assert config.quotas is quotas


def test_the_quota_types_config_imports_need_nothing_else_from_the_package() -> None:
    """config imports quota_types; quota_types must not import the package back at run time."""
    import ast
    from pathlib import Path

    import async_batch_llm._internal.quota_types as quota_types

    tree = ast.parse(Path(quota_types.__file__).read_text())
    runtime_imports = [
        node.module
        for node in tree.body  # top level only: imports under `if TYPE_CHECKING:` are skipped
        if isinstance(node, ast.ImportFrom) and node.module
    ]
    assert runtime_imports
    assert not [name for name in runtime_imports if name.startswith("async_batch_llm")]


RANGE_ERRORS: list[tuple[dict[str, Any], str]] = [
    (
        {"max_tokens_per_minute": 0},
        "max_tokens_per_minute must be > 0 or None, got 0 (None leaves it unlimited)",
    ),
    (
        {"max_input_tokens_per_minute": -5},
        "max_input_tokens_per_minute must be > 0 or None, got -5 (None leaves it unlimited)",
    ),
    (
        {"max_output_tokens_per_minute": 0},
        "max_output_tokens_per_minute must be > 0 or None, got 0 (None leaves it unlimited)",
    ),
    (
        {"max_tokens_per_minute": 1000, "max_input_tokens_per_minute": 1001},
        "max_input_tokens_per_minute must be <= max_tokens_per_minute, got "
        "max_input_tokens_per_minute=1001 and max_tokens_per_minute=1000 (contradictory limits)",
    ),
    (
        {"max_tokens_per_minute": 1000, "max_output_tokens_per_minute": 5000},
        "max_output_tokens_per_minute must be <= max_tokens_per_minute, got "
        "max_output_tokens_per_minute=5000 and max_tokens_per_minute=1000 "
        "(contradictory limits)",
    ),
    (
        {"quota_burst_seconds": 0},
        "quota_burst_seconds must be > 0 and finite, got 0 (None means about one second)",
    ),
    (
        {"quota_burst_seconds": -1.0},
        "quota_burst_seconds must be > 0 and finite, got -1.0 (None means about one second)",
    ),
    (
        {"quota_burst_seconds": math.inf},
        "quota_burst_seconds must be > 0 and finite, got inf (None means about one second)",
    ),
    ({"quota_burst_seconds": math.nan}, "quota_burst_seconds must not be NaN, got nan"),
    ({"quotas": {"": QuotaLimits()}}, "quotas keys must be non-empty quota scopes, got ''"),
]
RANGE_IDS = [
    "tpm-0",
    "itpm-negative",
    "otpm-0",
    "input-above-total",
    "output-above-total",
    "burst-0",
    "burst-negative",
    "burst-inf",
    "burst-nan",
    "quotas-empty-key",
]


@pytest.mark.parametrize(("kwargs", "message"), RANGE_ERRORS, ids=RANGE_IDS)
def test_out_of_range_quota_value_is_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as excinfo:
        ProcessorConfig(**kwargs)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(("kwargs", "message"), RANGE_ERRORS, ids=RANGE_IDS)
def test_out_of_range_quota_value_is_rejected_by_validate_after_mutation(
    kwargs: dict[str, Any], message: str
) -> None:
    config = ProcessorConfig()
    for name, value in kwargs.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as excinfo:
        config.validate()
    assert str(excinfo.value) == message


TYPE_ERRORS: list[tuple[dict[str, Any], str]] = [
    (
        {"max_tokens_per_minute": True},
        "max_tokens_per_minute must be an int or None, got bool True",
    ),
    (
        {"max_input_tokens_per_minute": 1000.0},
        "max_input_tokens_per_minute must be an int or None, got float 1000.0",
    ),
    (
        {"max_output_tokens_per_minute": "10"},
        "max_output_tokens_per_minute must be an int or None, got str '10'",
    ),
    ({"token_estimator": 4.0}, "token_estimator must be callable or None, got float 4.0"),
    (
        {"quota_burst_seconds": "1"},
        "quota_burst_seconds must be an int, a float or None, got str '1'",
    ),
    (
        {"quotas": [("a", QuotaLimits())]},
        "quotas must be a Mapping or None, got list [('a', QuotaLimits(requests_per_minute=None, "
        "tokens_per_minute=None, input_to...",
    ),
    ({"quotas": {1: QuotaLimits()}}, "quotas keys must be str (quota scopes), got int 1"),
    (
        {"quotas": {"a": {"tokens_per_minute": 5}}},
        "quotas['a'] must be a QuotaLimits, got dict {'tokens_per_minute': 5}",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    TYPE_ERRORS,
    ids=[
        "tpm-bool",
        "itpm-float",
        "otpm-str",
        "estimator-not-callable",
        "burst-str",
        "quotas-not-mapping",
        "quotas-key-not-str",
        "quotas-value-not-limits",
    ],
)
def test_wrong_quota_type_is_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError) as excinfo:
        ProcessorConfig(**kwargs)
    assert str(excinfo.value) == message


def test_quota_checks_run_after_the_rpm_check_and_before_nested_configs() -> None:
    config = ProcessorConfig()
    config.max_requests_per_minute = 0
    config.max_tokens_per_minute = 0
    with pytest.raises(ValueError, match=r"^max_requests_per_minute must be > 0 or None"):
        config.validate()
    config.max_requests_per_minute = None
    config.retry.max_attempts = 0
    with pytest.raises(ValueError, match=r"^max_tokens_per_minute must be > 0 or None"):
        config.validate()
