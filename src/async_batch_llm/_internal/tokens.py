"""Token arithmetic for one item: what a failed attempt cost, and the sum over attempts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from async_batch_llm._types import TokenUsage

__all__ = ["FAILED_USAGE_ATTR", "add_usage", "usage_from_exception"]

FAILED_USAGE_ATTR = "_failed_token_usage"
"""Documented convention: ``exc.__dict__["_failed_token_usage"] = usage`` before re-raising."""

_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens")


def _int_attr(obj: object, *names: str) -> int:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def usage_from_exception(exc: BaseException) -> TokenUsage | None:
    """Usage a failed attempt reported through its exception, or ``None`` when none is found.

    First match wins: a pydantic-ai style wrapped result on ``exc.__cause__``, a ``usage``
    attribute on the exception (called if callable), then the ``_failed_token_usage`` attachment.
    """
    cause = exc.__cause__
    result = getattr(cause, "result", None) if cause is not None else None
    if result is not None:
        usage_fn = getattr(result, "usage", None)
        if callable(usage_fn):
            usage = usage_fn()
            if usage:
                return {
                    "input_tokens": _int_attr(usage, "request_tokens"),
                    "output_tokens": _int_attr(usage, "response_tokens"),
                    "total_tokens": _int_attr(usage, "total_tokens"),
                }
    usage_attr: Any = getattr(exc, "usage", None)
    if usage_attr is not None:
        if callable(usage_attr):
            usage_attr = usage_attr()
        if usage_attr:
            return {
                "input_tokens": _int_attr(usage_attr, "request_tokens", "input_tokens"),
                "output_tokens": _int_attr(usage_attr, "response_tokens", "output_tokens"),
                "total_tokens": _int_attr(usage_attr, "total_tokens"),
            }
    attached = getattr(exc, "__dict__", {}).get(FAILED_USAGE_ATTR)
    if isinstance(attached, dict):
        return attached  # type: ignore[return-value]  # a user-supplied TokenUsage-like dict
    return None


def add_usage(total: dict[str, int], usage: Mapping[str, Any] | None) -> None:
    """Add the four counted keys of ``usage`` into ``total`` in place (missing keys count 0)."""
    if not usage:
        return
    for key in _KEYS:
        value = usage.get(key, 0)
        if value:
            total[key] = total.get(key, 0) + int(value)
