"""Parsing OpenAI and Anthropic rate-limit headers."""

from __future__ import annotations

import pytest

from async_batch_llm._internal.quota_headers import (
    HeaderSnapshot,
    parse_duration,
    parse_rate_limit_headers,
    parse_timestamp,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1m30.5s", 90.5),
        ("2h3m4s", 7384.0),
        ("0s", 0.0),
        ("150us", 150e-6),
        ("7", 7.0),
        ("0.25", 0.25),
        (" 1s ", 1.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1s2", "abc", "-1", "nan", "1s junk", "m1s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2023-11-14T22:13:50Z", 30.0),
        ("2023-11-14T22:13:20.5Z", 0.5),
        ("2023-11-14T23:14:20+01:00", 60.0),
        ("2023-11-14T22:14:20", 60.0),
        ("2023-11-14T22:00:00Z", 0.0),
    ],
    ids=["z", "fraction", "offset", "naive-is-utc", "past-is-zero"],
)
def test_parse_timestamp(text: str, seconds: float) -> None:
    assert parse_timestamp(text, NOW) == pytest.approx(seconds)


def test_parse_timestamp_rejects_garbage() -> None:
    assert parse_timestamp("soon", NOW) is None


def test_openai_headers() -> None:
    snapshots = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "500",
            "X-RATELIMIT-REMAINING-REQUESTS": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
            "retry-after": "3",
        },
        now=NOW,
    )
    assert snapshots == [
        HeaderSnapshot("requests", 500, 499, pytest.approx(0.12)),  # type: ignore[arg-type]
        HeaderSnapshot("tokens", 30000, 29000, 2.0),
    ]


def test_anthropic_headers() -> None:
    snapshots = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21Z",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-limit": "30000",
            "anthropic-ratelimit-output-tokens-remaining": "100",
            "anthropic-ratelimit-output-tokens-reset": "not a time",
        },
        now=NOW,
    )
    assert snapshots == [
        HeaderSnapshot("requests", 50, 49, 1.0),
        HeaderSnapshot("tokens", 40000, 39000, None),
        HeaderSnapshot("input_tokens", 30000, None, None),
        HeaderSnapshot("output_tokens", None, 100, None),
    ]


def test_only_a_reset_says_nothing() -> None:
    assert parse_rate_limit_headers({"x-ratelimit-reset-tokens": "1s"}, now=NOW) == []
