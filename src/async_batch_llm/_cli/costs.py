"""What a CLI run costs: the price of ``--model``, ``--max-cost``, ``--dry-run`` and the stop.

The CLI prices every call of a model the default :class:`PriceTable` knows (so the panel shows
the spend, results and the store carry ``cost``); a model it does not know runs unpriced,
unless ``--max-cost`` needs its price (then the run is refused). ``--dry-run`` estimates the
whole input from the request text and its output allowance, and calls nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from async_batch_llm._cli.inputs import Request
from async_batch_llm._internal.estimators import prompt_characters
from async_batch_llm._internal.pricing import PriceTable, UnknownModelPriceError
from async_batch_llm._internal.progress import format_cost
from async_batch_llm._types import BatchTermination, TokenUsage

__all__ = [
    "CHARACTERS_PER_TOKEN",
    "DEFAULT_OUTPUT_TOKENS",
    "DryRunEstimate",
    "ModelPriceError",
    "dry_run_report",
    "estimate_requests",
    "format_dollars",
    "model_cost_function",
    "price_table",
    "stop_message",
]

CHARACTERS_PER_TOKEN = 4.0
"""The dry run's input estimate: characters of the messages per token (English text)."""

DEFAULT_OUTPUT_TOKENS = 256
"""Output tokens a dry run allows a line that sets no ``max_tokens``/``max_completion_tokens``."""


class ModelPriceError(Exception):
    """The price table has no price for ``--model`` (the message says how to add one)."""


def price_table() -> PriceTable:
    """The prices the CLI uses: the library's dated list prices."""
    return PriceTable.default()


def model_cost_function(
    model: str, *, required: bool, table: PriceTable | None = None
) -> Callable[..., float] | None:
    """A ``cost_function`` that prices every call at ``model``'s list price.

    Bound to ``model`` (the ``--model`` every line is sent to), whatever name the strategy
    reports. It takes the ``batch`` keyword, so lines of a provider batch job (``--mode
    batch``) are priced at the batch price. ``None`` when the table has no price for it and
    ``required`` is false.

    Raises:
        ModelPriceError: no price for ``model`` and ``required`` (``--max-cost`` was given).
    """
    table = price_table() if table is None else table
    try:
        price = table.prices(model)
    except UnknownModelPriceError as exc:
        if required:
            raise ModelPriceError(str(exc)) from None
        return None

    def cost(_called: str, usage: TokenUsage, *, batch: bool = False) -> float:
        return price.cost(usage, batch=batch)

    return cost


def format_dollars(dollars: float) -> str:
    """``$0.000045``, ``$0.0123`` or ``$1,234.56`` (the progress panel's format)."""
    return format_cost(dollars)


def _token_limit(params: Mapping[str, Any]) -> int | None:
    """The line's own output limit: ``max_completion_tokens``, else ``max_tokens``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass
class DryRunEstimate:
    """The estimate of a whole input.

    Attributes:
        items: requests priced.
        input_tokens: estimated input tokens (characters of the messages / 4, per line).
        output_tokens: output allowance: each line's ``max_completion_tokens`` or
            ``max_tokens``, else :data:`DEFAULT_OUTPUT_TOKENS`.
        capped_lines: lines whose allowance came from their own token limit.
        cost: dollars of the estimated tokens at the model's list price.
    """

    items: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    capped_lines: int = 0
    cost: float = 0.0


def estimate_requests(
    requests: Iterable[Request], model: str, table: PriceTable, *, batch: bool = False
) -> DryRunEstimate:
    """Estimate the tokens and the cost of sending every request to ``model``.

    With ``batch`` (``--mode batch``) the tokens are priced at the model's batch price.

    Raises:
        ModelPriceError: the table has no price for ``model``.
    """
    try:
        price = table.prices(model)
    except UnknownModelPriceError as exc:
        raise ModelPriceError(str(exc)) from None
    estimate = DryRunEstimate()
    for request in requests:
        characters = prompt_characters(list(request.messages))
        input_tokens = max(1, math.ceil(characters / CHARACTERS_PER_TOKEN))
        limit = _token_limit(request.params)
        output_tokens = DEFAULT_OUTPUT_TOKENS if limit is None else limit
        estimate.items += 1
        estimate.input_tokens += input_tokens
        estimate.output_tokens += output_tokens
        estimate.capped_lines += limit is not None
        estimate.cost += price.cost(
            {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
            batch=batch,
        )
    return estimate


def dry_run_report(
    estimate: DryRunEstimate,
    model: str,
    table: PriceTable,
    max_cost: float | None,
    *,
    batch: bool = False,
) -> list[str]:
    """The lines ``run --dry-run`` prints (``batch``: the estimate is at the batch price)."""
    dated = table.as_of.isoformat() if table.as_of is not None else "undated"
    prices = "batch prices" if batch else "list prices"
    default = estimate.items - estimate.capped_lines
    lines = [
        f"dry run: {estimate.items} request(s) priced, nothing was called",
        f"input tokens:   ~{estimate.input_tokens:,} (estimated: "
        f"{CHARACTERS_PER_TOKEN:g} characters of the messages per token)",
        f"output tokens:  <={estimate.output_tokens:,} ({estimate.capped_lines} line(s) at their "
        f"max_tokens, {default} at {DEFAULT_OUTPUT_TOKENS})",
        f"estimated cost: {format_dollars(estimate.cost)} for {model} ({prices} as of {dated})",
    ]
    if max_cost is not None:
        verdict = (
            "the estimate fits"
            if estimate.cost <= max_cost
            else "below the estimate: the run may stop before every line is answered"
        )
        lines.append(f"--max-cost:     {format_dollars(max_cost)} ({verdict})")
    return lines


def stop_message(termination: BatchTermination, max_cost: float | None, not_run: int) -> str:
    """What the CLI says when the batch stopped before every line ran."""
    if termination.kind == "budget_exceeded" and max_cost is not None:
        return (
            f"stopped: the --max-cost budget of {format_dollars(max_cost)} was reached; "
            f"{not_run} line(s) were not run (error code budget_exceeded)"
        )
    return f"stopped ({termination.kind}): {termination.reason}; {not_run} line(s) were not run"
