"""How the processor calls a strategy and checks what comes back.

The calling conventions of ``execute``/``on_error`` (whether and how they take ``state``), the
shape of a call's return value, and the errors an attempt ends with when its deadline or a stray
cancellation cuts it (spec D2, D10). Kept apart from the processor so that its module reads as
the path of one item.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import ResumePolicy
from async_batch_llm._internal.deadline import TaskDeadline
from async_batch_llm.strategies.errors import FrameworkTimeoutError

__all__ = [
    "BY_KEYWORD",
    "EXECUTE_TAKES_STATE",
    "StrayCancellationError",
    "accepts_state",
    "check_call_result",
    "format_error",
    "framework_timeout",
    "method_accepts_state",
    "require_methods",
    "resume_policy",
    "stray_cancellation",
]


BY_KEYWORD = "keyword"
"""``state`` is a keyword-only parameter: pass it as ``state=...``."""


def accepts_state(method: Callable[..., Any]) -> bool | str:
    """How a bound ``execute``/``on_error`` takes ``state`` (spec D2).

    ``True``: as its last positional argument; :data:`BY_KEYWORD`: only by keyword
    (``*, state=None``); ``False``: not at all.
    """
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = 0
    for param in params:
        if param.name == "state" and param.kind is inspect.Parameter.KEYWORD_ONLY:
            return BY_KEYWORD
        if param.kind is inspect.Parameter.VAR_POSITIONAL or param.name == "state":
            return True
        if param.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional += 1
    return positional >= 4


_STATE_CACHE: dict[tuple[type, str], bool | str] = {}


def method_accepts_state(strategy: object, name: str, method: Callable[..., Any]) -> bool | str:
    """Decide once per strategy class; instance-level overrides are inspected each time."""
    if name in getattr(strategy, "__dict__", ()):
        return accepts_state(method)
    key = (type(strategy), name)
    cached = _STATE_CACHE.get(key)
    if cached is None:
        cached = _STATE_CACHE[key] = accepts_state(method)
        if name == "execute":
            EXECUTE_TAKES_STATE[type(strategy)] = cached
    return cached


EXECUTE_TAKES_STATE: dict[type, bool | str] = {}
"""Class-level answers for ``execute``, read inline once per attempt."""


def require_methods(name: str, value: object, methods: tuple[str, ...]) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` has every method in ``methods``."""
    missing = [method for method in methods if not callable(getattr(value, method, None))]
    if missing:
        wanted = ", ".join(f"{method}()" for method in methods)
        raise TypeError(
            f"{name} must be an object with the methods {wanted}; got "
            f"{type(value).__name__} {value!r:.100}, which lacks {', '.join(missing)}"
        )


def format_error(exc: BaseException, limit: int) -> str:
    return f"{type(exc).__name__}: {str(exc)[:limit]}"


def framework_timeout(
    item_id: str, deadline: TaskDeadline, timeout: float, cancelled: BaseException
) -> FrameworkTimeoutError:
    """The error of an attempt its deadline cancelled, chained as under ``asyncio.timeout``.

    ``FrameworkTimeoutError`` from a ``TimeoutError`` from the ``CancelledError``.
    """
    timeout_error = TimeoutError()
    timeout_error.__cause__ = timeout_error.__context__ = cancelled
    # The limit runs on the event loop's clock, so elapsed is measured on it too (the injected
    # clock may be virtual).
    elapsed = asyncio.get_running_loop().time() - (deadline.deadline - timeout)
    error = FrameworkTimeoutError(
        f"Framework timeout after {elapsed:.1f}s (limit: {timeout}s)",
        item_id=item_id,
        elapsed=elapsed,
        timeout_limit=timeout,
    )
    error.__cause__ = error.__context__ = timeout_error
    return error


class StrayCancellationError(RuntimeError):
    """A strategy raised ``CancelledError`` while nothing was cancelling the batch.

    That happens when a strategy awaits a task or future that something else cancelled. It fails
    the attempt like any other error (and is retried as the classifier decides) instead of
    silently killing the worker and losing the item's result.
    """


def stray_cancellation(item_id: str, cancelled: BaseException) -> StrayCancellationError:
    error = StrayCancellationError(
        f"the strategy raised CancelledError for item {item_id!r} although neither the batch "
        f"nor the attempt's timeout cancelled it: {cancelled!r}"
    )
    error.__cause__ = cancelled
    return error


def check_call_result(strategy: object, value: object) -> tuple[Any, Mapping[str, Any]]:
    """Reject an ``execute``/``dry_run`` return value that is not ``(output, usage mapping)``."""
    if type(value) is tuple and len(value) == 2:
        usage = value[1]
        if type(usage) is dict or isinstance(usage, Mapping):
            return value[0], usage
    raise TypeError(
        f"{type(strategy).__name__}.execute() must return a tuple (output, token_usage) whose "
        f"token_usage is a mapping such as {{'input_tokens': 1, 'output_tokens': 1, "
        f"'total_tokens': 2}}, got {type(value).__name__}: {value!r:.200}"
    )


def resume_policy(resume: object, store: object) -> ResumePolicy:
    """Validate ``resume`` (a :class:`ResumePolicy` or its value) against ``artifact_store``."""
    if store is not None and not isinstance(store, ArtifactStore):
        raise TypeError(
            "artifact_store must be an ArtifactStore (SqliteArtifactStore, JsonlArtifactStore or "
            f"a subclass), got {type(store).__name__}: {store!r:.100}"
        )
    try:
        policy = ResumePolicy(resume)
    except ValueError:
        allowed = ", ".join(repr(p.value) for p in ResumePolicy)
        raise ValueError(f"resume must be one of {allowed}, got {resume!r:.100}") from None
    if policy is not ResumePolicy.NONE and store is None:
        raise ValueError(
            f"resume={policy.value!r} reuses stored results, so it needs an artifact_store"
        )
    return policy
