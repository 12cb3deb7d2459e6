"""Read rate-limit snapshots out of OpenAI and Anthropic response headers (pure parsing).

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go-style
durations (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1m30.5s"``). Anthropic sends
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``;
resets are RFC 3339 timestamps, turned into seconds from the caller's wall-clock ``now``.
Header names are matched case-insensitively; a value that does not parse is ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["HeaderSnapshot", "parse_duration", "parse_rate_limit_headers", "parse_timestamp"]

_OPENAI_DIMENSIONS = {"requests": "requests", "tokens": "tokens"}
_ANTHROPIC_DIMENSIONS = {
    "requests": "requests",
    "tokens": "tokens",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
}
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


@dataclass(frozen=True, slots=True)
class HeaderSnapshot:
    """What one answer said about one dimension of the provider's limits.

    Attributes:
        dimension: ``"requests"``, ``"tokens"``, ``"input_tokens"`` or ``"output_tokens"``.
        limit: the limit (taken to be per minute), or ``None`` if not sent.
        remaining: units left now, or ``None`` if not sent.
        reset_seconds: seconds until fully replenished, or ``None`` if not sent.
    """

    dimension: str
    limit: int | None
    remaining: int | None
    reset_seconds: float | None


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``"6m0s"``, ``"20ms"``, ``"1m30.5s"``) or a bare number.

    Returns ``None`` when ``text`` is neither.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        return None
    return total


def parse_timestamp(text: str, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) until the RFC 3339 timestamp ``text``, at least 0.

    A timestamp without a zone is taken as UTC. Returns ``None`` when ``text`` does not parse.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def _parse_count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float) -> list[HeaderSnapshot]:
    """Every dimension the headers say something about, OpenAI's first, then Anthropic's.

    Args:
        headers: one answer's headers, names in any case.
        now: the wall-clock time (Unix seconds) that RFC 3339 resets are measured from.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    snapshots: list[HeaderSnapshot] = []
    for suffix, dimension in _OPENAI_DIMENSIONS.items():
        reset = lowered.get(f"x-ratelimit-reset-{suffix}")
        snapshot = HeaderSnapshot(
            dimension,
            _parse_count(lowered.get(f"x-ratelimit-limit-{suffix}")),
            _parse_count(lowered.get(f"x-ratelimit-remaining-{suffix}")),
            None if reset is None else parse_duration(reset),
        )
        if snapshot.limit is not None or snapshot.remaining is not None:
            snapshots.append(snapshot)
    for infix, dimension in _ANTHROPIC_DIMENSIONS.items():
        reset = lowered.get(f"anthropic-ratelimit-{infix}-reset")
        snapshot = HeaderSnapshot(
            dimension,
            _parse_count(lowered.get(f"anthropic-ratelimit-{infix}-limit")),
            _parse_count(lowered.get(f"anthropic-ratelimit-{infix}-remaining")),
            None if reset is None else parse_timestamp(reset, now),
        )
        if snapshot.limit is not None or snapshot.remaining is not None:
            snapshots.append(snapshot)
    return snapshots
