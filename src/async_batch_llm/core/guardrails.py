"""Guardrails of a batch: budgets, deadlines and the answers that stop it (spec BEYOND §N3).

:class:`GuardrailConfig` is the ``guardrails`` field of
:class:`~async_batch_llm.core.config.ProcessorConfig`. What it does at run time lives in
:mod:`async_batch_llm._internal.guardrails`; docs/guardrails.md explains the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Set
from dataclasses import dataclass, field

from async_batch_llm._types import TokenUsage

__all__ = ["DEFAULT_ABORT_CATEGORIES", "GuardrailConfig"]

DEFAULT_ABORT_CATEGORIES: frozenset[str] = frozenset({"authentication", "insufficient_quota"})
"""The error categories that stop a batch at the first such answer, by default."""

_MAX_REPR = 80


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return f"{type(value).__name__} {text}"


def _check_positive(name: str, value: object, *, integer: bool = False) -> None:
    """``None`` or a number > 0 (an ``int`` when ``integer``); NaN and ``bool`` refused."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        allowed = "an int or None" if integer else "an int, a float or None"
        raise TypeError(f"{name} must be {allowed}, got {_describe(value)}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} must not be NaN, got {value!r} (use None for no limit)")
    if value <= 0:
        raise ValueError(f"{name} must be > 0 or None, got {value!r} (None means no limit)")


@dataclass
class GuardrailConfig:
    """Hard limits on one batch's time and spend, and the answers that stop it at once.

    Args:
        total_timeout_per_item: seconds one item may take from the moment a worker takes it,
            across every attempt, backoff wait, cooldown and quota admission wait (> 0), or
            ``None``. An item past it fails with category ``"item_timeout"``.
            ``ProcessorConfig.timeout_per_item`` still bounds each attempt.
        batch_timeout: seconds the whole batch may run (> 0), or ``None``. When it passes, no
            call starts any more, the calls in flight are cancelled and every item without a
            result fails with category ``"batch_timeout"``.
        max_total_tokens: the most tokens (input plus output, every attempt) the batch may
            spend (> 0), or ``None``.
        max_total_cost: the most dollars the batch may spend (> 0), or ``None``. Without a
            ``cost_function`` attempts are priced by ``PriceTable.default().cost``; a model
            missing from it fails its item with an error naming the model and how to add its
            price.
        cost_function: ``cost_function(model, usage) -> dollars`` prices one attempt (for
            example ``PriceTable.default().with_prices(...).cost``); with it (or a cost cap)
            every result carries ``cost`` and ``BatchResult.total_cost`` is set.
        abort_on_error_categories: error categories that stop the batch at the first such
            answer (``"fail_fast"``); defaults to ``{"authentication", "insufficient_quota"}``.
            Pass ``frozenset()`` to never stop early.

    Before each attempt its estimated tokens and cost are reserved against the two caps; an
    attempt whose reservation would pass a cap never starts, and the batch stops with
    ``termination.kind == "budget_exceeded"``. Only attempts whose real usage exceeded their
    estimate can spend past a cap (docs/guardrails.md states the bound).

    Raises:
        TypeError: a field has the wrong type (``bool`` is not a number).
        ValueError: a number is NaN, zero or negative, or a category is empty.
    """

    total_timeout_per_item: float | None = None
    batch_timeout: float | None = None
    max_total_tokens: int | None = None
    max_total_cost: float | None = None
    cost_function: Callable[[str, TokenUsage], float] | None = None
    abort_on_error_categories: frozenset[str] = field(
        default_factory=lambda: DEFAULT_ABORT_CATEGORIES
    )

    def __post_init__(self) -> None:
        categories: object = self.abort_on_error_categories
        # A set or frozenset is accepted and kept as a frozenset; a str (which is iterable)
        # or a list is a mistake worth naming.
        if isinstance(categories, Set) and not isinstance(categories, frozenset):
            self.abort_on_error_categories = frozenset(categories)
        self.validate()

    def validate(self) -> None:
        """Check every field again, for use after mutating the config.

        Raises:
            TypeError: a field has the wrong type.
            ValueError: a value is NaN or out of range.
        """
        _check_positive("total_timeout_per_item", self.total_timeout_per_item)
        _check_positive("batch_timeout", self.batch_timeout)
        _check_positive("max_total_tokens", self.max_total_tokens, integer=True)
        _check_positive("max_total_cost", self.max_total_cost)
        if self.cost_function is not None and not callable(self.cost_function):
            raise TypeError(
                "cost_function must be callable as cost_function(model, usage) -> dollars, or "
                f"None; got {_describe(self.cost_function)}"
            )
        categories: object = self.abort_on_error_categories
        if not isinstance(categories, frozenset):
            raise TypeError(
                "abort_on_error_categories must be a set or frozenset of category names, got "
                f"{_describe(categories)}"
            )
        for category in categories:
            if not isinstance(category, str) or not category:
                raise ValueError(
                    "abort_on_error_categories must hold non-empty category names such as "
                    f"'authentication', got {_describe(category)}"
                )

    @property
    def has_caps(self) -> bool:
        """Whether a token or cost cap is set."""
        return self.max_total_tokens is not None or self.max_total_cost is not None
