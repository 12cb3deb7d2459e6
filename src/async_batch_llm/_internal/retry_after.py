"""Read a provider's requested retry delay off a rate-limit exception, whatever the SDK.

Looked at, first match wins: an explicit ``retry_after`` attribute (seconds) on the exception or
its cause; HTTP response headers ``retry-after-ms`` / ``retry-after`` (openai, anthropic, httpx
errors expose ``exc.response.headers``); a Google ``RetryInfo`` detail (``retryDelay: "2s"``) in
the error body (google-genai's ``APIError.details``).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["parse_duration", "retry_after_seconds"]

_MAX_RETRY_AFTER = 3600.0


def parse_duration(value: str) -> float | None:
    """Parse a protobuf JSON duration such as ``"2s"`` or ``"0.5s"`` into seconds."""
    text = value.strip()
    if not text.endswith("s"):
        return None
    try:
        seconds = float(text[:-1])
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _from_headers(headers: Any) -> float | None:
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    raw_ms = getter("retry-after-ms")
    if raw_ms is not None:
        try:
            return float(raw_ms) / 1000.0
        except (TypeError, ValueError):
            pass
    raw = getter("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(raw))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _from_google_details(details: Any) -> float | None:
    stack: list[Any] = [details]
    seen = 0
    while stack and seen < 200:
        node = stack.pop()
        seen += 1
        if isinstance(node, Mapping):
            type_url = node.get("@type")
            delay = node.get("retryDelay")
            if isinstance(delay, str) and (type_url is None or "RetryInfo" in str(type_url)):
                parsed = parse_duration(delay)
                if parsed is not None:
                    return parsed
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return None


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """The exception and what it was raised from or during, nearest first, without cycles."""
    found: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(found) < limit:
        current = pending.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return found


def retry_after_seconds(exc: BaseException) -> float | None:
    """The delay in seconds the provider asked for, or ``None`` when it named none.

    The exception's whole chain is searched (``__cause__`` and ``__context__``, nearest first), so
    a strategy may wrap or re-raise the SDK's error.
    """
    for candidate in _chain(exc):
        explicit = getattr(candidate, "retry_after", None)
        if isinstance(explicit, int | float) and not isinstance(explicit, bool) and explicit >= 0:
            return min(float(explicit), _MAX_RETRY_AFTER)
        response = getattr(candidate, "response", None)
        if response is not None:
            found = _from_headers(getattr(response, "headers", None))
            if found is not None:
                return min(found, _MAX_RETRY_AFTER)
        details = getattr(candidate, "details", None)
        if details:
            found = _from_google_details(details)
            if found is not None:
                return min(found, _MAX_RETRY_AFTER)
    return None
