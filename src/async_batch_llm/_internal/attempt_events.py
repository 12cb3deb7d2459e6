"""Payload pieces of the attempt events added after 0.6.0; built only when observers listen.

``ATTEMPT_FAILED`` closes every attempt that did not end in ``ITEM_COMPLETED``, so an observer can
time each attempt (the OpenTelemetry observer makes one span of each). ``ITEM_COMPLETED`` gains
the attempt's input and output tokens and the model, for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from async_batch_llm._internal.tokens import usage_from_exception
from async_batch_llm.strategies.errors import ErrorInfo

__all__ = ["SKIPPED_ERROR_TYPE", "attempt_failed_data", "strategy_model"]

SKIPPED_ERROR_TYPE = "SkippedByMiddleware"
"""The ``error_type`` of the ``ATTEMPT_FAILED`` a middleware skip emits (no exception exists)."""


def strategy_model(strategy: object) -> str | None:
    """The model a strategy calls, when it says: a ``str`` ``model`` attribute (the built-in
    OpenAI and Anthropic strategies), or that object's ``model_name`` (pydantic-ai models)."""
    try:
        model = getattr(strategy, "model", None)
        if type(model) is str:
            return model
        name = getattr(model, "model_name", None) if model is not None else None
    except Exception:  # a property that raises must not cost the item its result
        return None
    return name if type(name) is str else None


def attempt_failed_data(
    item_id: str,
    worker_id: int,
    attempt: int,
    strategy: object,
    exc: BaseException | None,
    info: ErrorInfo | None,
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``ATTEMPT_FAILED`` payload; ``exc`` and ``info`` are ``None`` for a middleware skip.

    ``usage``: what the call reported, when it is not on the exception (a call that succeeded
    but could not be priced); by default read from ``exc``.
    """
    if usage is None and exc is not None:
        usage = usage_from_exception(exc)
    data: dict[str, Any] = {
        "item_id": item_id,
        "worker_id": worker_id,
        "attempt": attempt,
        "error_type": type(exc).__name__ if exc is not None else SKIPPED_ERROR_TYPE,
        "retryable": info.is_retryable if info is not None else False,
        "rate_limit": info.is_rate_limit if info is not None else False,
        "input_tokens": int(usage.get("input_tokens", 0)) if usage else 0,
        "output_tokens": int(usage.get("output_tokens", 0)) if usage else 0,
        "tokens": int(usage.get("total_tokens", 0)) if usage else 0,
        "skipped": exc is None,
    }
    model = strategy_model(strategy)
    if model is not None:
        data["model"] = model
    return data
