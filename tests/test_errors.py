"""ErrorInfo, ErrorClassifier, DefaultErrorClassifier and the two exceptions (spec §7)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from pydantic import BaseModel, ValidationError

import async_batch_llm.strategies as strategies_pkg
from async_batch_llm.strategies import errors as errors_module
from async_batch_llm.strategies import rate_limit as rate_limit_module
from async_batch_llm.strategies.errors import (
    DEFAULT_RATE_LIMIT_WAIT,
    RATE_LIMIT_PATTERNS,
    DefaultErrorClassifier,
    ErrorClassifier,
    ErrorInfo,
    FrameworkTimeoutError,
    TokenTrackingError,
)


class _Model(BaseModel):
    count: int


def _pydantic_validation_error() -> ValidationError:
    try:
        _Model.model_validate({"count": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validation unexpectedly passed")


class _CustomValueError(ValueError):
    pass


class _CustomError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Module surface
# --------------------------------------------------------------------------------------------


def test_strategies_package_reexports_exactly_the_spec_names() -> None:
    assert sorted(strategies_pkg.__all__) == sorted(
        [
            "ErrorClassifier",
            "ErrorInfo",
            "DefaultErrorClassifier",
            "FrameworkTimeoutError",
            "TokenTrackingError",
            "RateLimitStrategy",
            "ExponentialBackoffStrategy",
            "FixedDelayStrategy",
        ]
    )
    for name in strategies_pkg.__all__:
        source = errors_module if hasattr(errors_module, name) else rate_limit_module
        assert getattr(strategies_pkg, name) is getattr(source, name)


def test_errors_module_exports_the_error_names_and_constants() -> None:
    assert sorted(errors_module.__all__) == sorted(
        [
            "DEFAULT_RATE_LIMIT_WAIT",
            "RATE_LIMIT_PATTERNS",
            "DefaultErrorClassifier",
            "ErrorClassifier",
            "ErrorInfo",
            "FrameworkTimeoutError",
            "TokenTrackingError",
        ]
    )


def test_constants_have_the_spec_values() -> None:
    assert RATE_LIMIT_PATTERNS == ("429", "resource_exhausted", "quota", "rate limit")
    assert DEFAULT_RATE_LIMIT_WAIT == 300.0
    assert isinstance(DEFAULT_RATE_LIMIT_WAIT, float)


# --------------------------------------------------------------------------------------------
# ErrorInfo and ErrorClassifier
# --------------------------------------------------------------------------------------------


def test_error_info_fields_in_order_with_optional_suggested_wait() -> None:
    assert [f.name for f in dataclasses.fields(ErrorInfo)] == [
        "is_retryable",
        "is_rate_limit",
        "is_timeout",
        "error_category",
        "suggested_wait",
    ]
    info = ErrorInfo(True, False, True, "api_timeout")
    assert info.suggested_wait is None
    assert info == ErrorInfo(
        is_retryable=True, is_rate_limit=False, is_timeout=True, error_category="api_timeout"
    )


def test_error_info_requires_the_three_flags_and_the_category() -> None:
    with pytest.raises(TypeError):
        ErrorInfo(True, False, False)  # type: ignore[call-arg]


def test_error_classifier_is_abstract() -> None:
    with pytest.raises(TypeError):
        ErrorClassifier()  # type: ignore[abstract]


def test_error_classifier_subclass_only_needs_classify() -> None:
    class AlwaysFatal(ErrorClassifier):
        def classify(self, exception: Exception) -> ErrorInfo:
            return ErrorInfo(False, False, False, "fatal")

    assert AlwaysFatal().classify(RuntimeError()).error_category == "fatal"


def test_default_classifier_is_an_error_classifier() -> None:
    assert isinstance(DefaultErrorClassifier(), ErrorClassifier)
    assert repr(DefaultErrorClassifier()) == "DefaultErrorClassifier()"


# --------------------------------------------------------------------------------------------
# DefaultErrorClassifier rules (§7.3)
# --------------------------------------------------------------------------------------------

RATE_LIMIT = ErrorInfo(True, True, False, "rate_limit", 300.0)
FRAMEWORK_TIMEOUT = ErrorInfo(True, False, True, "framework_timeout")
API_TIMEOUT = ErrorInfo(True, False, True, "api_timeout")
CONNECTION = ErrorInfo(True, False, False, "connection_error")
VALIDATION = ErrorInfo(True, False, False, "validation_error")
LOGIC = ErrorInfo(False, False, False, "logic_error")
UNKNOWN = ErrorInfo(True, False, False, "unknown")

CLASSIFIER_TABLE: list[tuple[str, Exception, ErrorInfo]] = [
    # rule 1: message patterns, before any type check
    ("1-429", RuntimeError("HTTP 429 Too Many Requests"), RATE_LIMIT),
    ("1-resource_exhausted-uppercase", Exception("RESOURCE_EXHAUSTED: try later"), RATE_LIMIT),
    ("1-quota", Exception("Quota exceeded for project"), RATE_LIMIT),
    ("1-rate-limit", Exception("Rate Limit reached"), RATE_LIMIT),
    ("1-keyerror-quota", KeyError("quota"), RATE_LIMIT),
    ("1-valueerror-429", ValueError("status 429"), RATE_LIMIT),
    ("1-timeout-with-429", TimeoutError("429 after timeout"), RATE_LIMIT),
    ("1-framework-timeout-with-quota", FrameworkTimeoutError("quota hit"), RATE_LIMIT),
    ("1-connection-with-rate-limit", ConnectionError("rate limit on connection"), RATE_LIMIT),
    # rule 2: FrameworkTimeoutError (its message contains "timeout", rule 2 still wins)
    (
        "2-framework-timeout",
        FrameworkTimeoutError("Framework timeout after 1.0s (limit: 1.0s)"),
        FRAMEWORK_TIMEOUT,
    ),
    ("2-framework-timeout-empty", FrameworkTimeoutError(""), FRAMEWORK_TIMEOUT),
    # rule 3: TimeoutError instances or "timeout" in the message
    ("3-timeout-error", TimeoutError(), API_TIMEOUT),
    ("3-message-timeout", RuntimeError("Request Timeout"), API_TIMEOUT),
    ("3-valueerror-timeout", ValueError("read timeout"), API_TIMEOUT),
    ("3-timeout-with-connection", TimeoutError("connection timed out"), API_TIMEOUT),
    # rule 4: ConnectionError instances or "connection" in the message
    ("4-connection-error", ConnectionError(), CONNECTION),
    ("4-connection-reset-error", ConnectionResetError("peer reset"), CONNECTION),
    ("4-valueerror-connection-reset", ValueError("connection reset"), CONNECTION),
    ("4-message-connection", RuntimeError("Connection refused"), CONNECTION),
    # rule 5: pydantic ValidationError (a ValueError subclass) before rule 6
    ("5-pydantic-validation-error", _pydantic_validation_error(), VALIDATION),
    # rule 6: logic errors are not retried
    ("6-value-error", ValueError("bad value"), LOGIC),
    ("6-type-error", TypeError("unsupported operand"), LOGIC),
    ("6-attribute-error", AttributeError("no attribute x"), LOGIC),
    ("6-key-error", KeyError("missing"), LOGIC),
    ("6-index-error", IndexError("list index out of range"), LOGIC),
    ("6-name-error", NameError("name 'x' is not defined"), LOGIC),
    ("6-zero-division-error", ZeroDivisionError("division by zero"), LOGIC),
    ("6-assertion-error", AssertionError("invariant"), LOGIC),
    ("6-value-error-subclass", _CustomValueError("nope"), LOGIC),
    ("6-unicode-error-subclass", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), LOGIC),
    # rule 7: everything else retries
    ("7-runtime-error", RuntimeError("boom"), UNKNOWN),
    ("7-os-error", OSError("disk full"), UNKNOWN),
    ("7-custom-error", _CustomError("something odd"), UNKNOWN),
    ("7-bare-exception", Exception(), UNKNOWN),
    ("7-lookup-error-base", LookupError("not a KeyError"), UNKNOWN),
]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [(exc, expected) for _, exc, expected in CLASSIFIER_TABLE],
    ids=[row_id for row_id, _, _ in CLASSIFIER_TABLE],
)
def test_default_classifier_rules(exc: Exception, expected: ErrorInfo) -> None:
    assert DefaultErrorClassifier().classify(exc) == expected


def test_rate_limit_suggests_the_default_wait() -> None:
    info = DefaultErrorClassifier().classify(RuntimeError("429"))
    assert info.suggested_wait == DEFAULT_RATE_LIMIT_WAIT


def test_non_rate_limit_categories_suggest_no_wait() -> None:
    classifier = DefaultErrorClassifier()
    for _, exc, expected in CLASSIFIER_TABLE:
        if not expected.is_rate_limit:
            assert classifier.classify(exc).suggested_wait is None


def test_classify_returns_a_fresh_error_info_each_time() -> None:
    classifier = DefaultErrorClassifier()
    first = classifier.classify(RuntimeError("boom"))
    first.is_retryable = False
    assert classifier.classify(RuntimeError("boom")).is_retryable is True


# --------------------------------------------------------------------------------------------
# FrameworkTimeoutError
# --------------------------------------------------------------------------------------------


def test_framework_timeout_error_is_a_builtin_timeout_error() -> None:
    assert issubclass(FrameworkTimeoutError, TimeoutError)
    with pytest.raises(TimeoutError):
        raise FrameworkTimeoutError("late")


def test_framework_timeout_error_stores_message_and_keywords() -> None:
    error = FrameworkTimeoutError(
        "Framework timeout after 2.0s (limit: 1.5s)",
        item_id="item-1",
        elapsed=2.0,
        timeout_limit=1.5,
    )
    assert str(error) == "Framework timeout after 2.0s (limit: 1.5s)"
    assert (error.item_id, error.elapsed, error.timeout_limit) == ("item-1", 2.0, 1.5)


def test_framework_timeout_error_keywords_default_to_none() -> None:
    error = FrameworkTimeoutError("late")
    assert (error.item_id, error.elapsed, error.timeout_limit) == (None, None, None)


def test_framework_timeout_error_keywords_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        FrameworkTimeoutError("late", "item-1")  # type: ignore[call-arg]


def test_framework_timeout_error_survives_pickling() -> None:
    error = FrameworkTimeoutError("late", item_id="a", elapsed=1.0, timeout_limit=0.5)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "late"
    assert (copy.item_id, copy.elapsed, copy.timeout_limit) == ("a", 1.0, 0.5)


# --------------------------------------------------------------------------------------------
# TokenTrackingError
# --------------------------------------------------------------------------------------------


def test_token_tracking_error_stores_usage_under_the_attachment_key() -> None:
    usage = {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}
    error = TokenTrackingError("call failed", token_usage=usage)
    assert str(error) == "call failed"
    assert error.__dict__["_failed_token_usage"] == usage
    assert error._failed_token_usage == usage


@pytest.mark.parametrize("token_usage", [None, {}], ids=["none", "empty"])
def test_token_tracking_error_without_usage_stores_empty_dict(
    token_usage: dict[str, int] | None,
) -> None:
    error = TokenTrackingError("call failed", token_usage=token_usage)
    assert error.__dict__["_failed_token_usage"] == {}
    assert TokenTrackingError("call failed")._failed_token_usage == {}


def test_token_tracking_error_keeps_cached_tokens() -> None:
    error = TokenTrackingError(
        "x",
        token_usage={
            "input_tokens": 1,
            "output_tokens": 2,
            "total_tokens": 3,
            "cached_input_tokens": 4,
        },
    )
    assert error._failed_token_usage["cached_input_tokens"] == 4


def test_token_tracking_error_copies_the_callers_mapping() -> None:
    usage = {"input_tokens": 1}
    error = TokenTrackingError("x", token_usage=usage)
    usage["input_tokens"] = 999
    assert error._failed_token_usage == {"input_tokens": 1}


def _raise_tracked(original: Exception) -> None:
    try:
        raise original
    except Exception as exc:
        raise TokenTrackingError(str(exc), token_usage={"total_tokens": 5}) from exc


def test_token_tracking_error_chains_from_the_original_error() -> None:
    original = RuntimeError("provider exploded")
    with pytest.raises(TokenTrackingError) as excinfo:
        _raise_tracked(original)
    assert excinfo.value.__cause__ is original
    assert str(excinfo.value) == "provider exploded"
    assert not isinstance(excinfo.value, TimeoutError)


def test_token_tracking_error_survives_pickling() -> None:
    error = TokenTrackingError("x", token_usage={"total_tokens": 7})
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "x"
    assert copy._failed_token_usage == {"total_tokens": 7}


def test_token_tracking_error_is_classified_by_its_message() -> None:
    classifier = DefaultErrorClassifier()
    assert classifier.classify(TokenTrackingError("429 quota")) == RATE_LIMIT
    assert classifier.classify(TokenTrackingError("boom")) == UNKNOWN
