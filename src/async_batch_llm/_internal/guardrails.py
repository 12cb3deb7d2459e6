"""The guardrails of one run: error categories, the stop of a batch, budgets and deadlines.

The processor builds one :class:`Guard` per run from ``ProcessorConfig.guardrails``
(:class:`~async_batch_llm.core.GuardrailConfig`) and asks it four things:

- **What category is this failure?** :func:`item_category` turns an exception and its
  classifier's :class:`~async_batch_llm.strategies.errors.ErrorInfo` into the category a
  :class:`~async_batch_llm.base.WorkItemResult` reports (spec BEYOND §N3). The built-in
  classifiers keep their 0.6.0 labels (``client_error``, ``api_timeout``, ...); the category is
  refined from the exception itself (HTTP status, error code, error type), so any classifier,
  a custom one included, gets the same categories.
- **Should the batch stop?** :meth:`Guard.stop` records the :class:`BatchTermination` once and
  interrupts the workers that are inside an item (their :class:`WorkerSlot`), except the caller.
  An interrupted item fails with the stop's category; items never taken fail the same way.
- **May this attempt start?** :class:`Ledger` reserves each attempt's estimated tokens and cost
  against the caps before the call and reconciles them with the real usage after it
  (:class:`Budget` is the pure arithmetic).
- **Is the item or the batch out of time?** :meth:`Guard.watch_item` and
  :meth:`Guard.run_batch_timer` sleep on the injected clock and interrupt when time is up.

Interrupting a worker is ``task.cancel()`` plus a note in its slot saying why; the worker's loop
catches that cancellation, withdraws it (``Task.uncancel``) and records the item's failure. A
cancellation with no note (the batch itself was cancelled) propagates untouched.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from async_batch_llm._internal.clock import Clock
from async_batch_llm._internal.estimators import LearningEstimator, prompt_characters, scope_of
from async_batch_llm._internal.pricing import PriceTable, UnknownModelPriceError
from async_batch_llm._internal.quota_runtime import TokenEstimatorError
from async_batch_llm._internal.quota_types import TokenEstimate
from async_batch_llm._types import BatchTermination, TokenUsage, WorkItemResult

if TYPE_CHECKING:
    from async_batch_llm._types import LLMWorkItem, RetryState
    from async_batch_llm.core.guardrails import GuardrailConfig
    from async_batch_llm.strategies.errors import ErrorInfo

__all__ = [
    "ITEM_CATEGORIES",
    "Budget",
    "BudgetExceededError",
    "CostFunctionError",
    "Guard",
    "Ledger",
    "WorkerSlot",
    "item_category",
    "model_name",
]

ITEM_CATEGORIES = frozenset(
    {
        "rate_limit",
        "timeout",
        "validation",
        "authentication",
        "insufficient_quota",
        "model_not_found",
        "bad_request",
        "server_error",
        "connection",
        "logic_error",
        "budget_exceeded",
        "batch_timeout",
        "item_timeout",
        "fail_fast",
        "cancelled",
        "unknown",
    }
)
"""Every category the library itself puts on a result."""

_FROM_LABEL = {
    "rate_limit": "rate_limit",
    "framework_timeout": "timeout",
    "api_timeout": "timeout",
    "timeout": "timeout",
    "server_timeout": "timeout",
    "connection_error": "connection",
    "validation_error": "validation",
    "server_error": "server_error",
    "client_error": "bad_request",
    "logic_error": "logic_error",
    "quota": "bad_request",  # quota admission refused the attempt (estimate too large)
    "unknown": "unknown",
}
"""The categories of the 0.6.0 classifier labels (spec §7.1), before the exception is read."""

_OUT_OF_CREDIT_MARKERS = ("insufficient_quota", "credit balance is too low")
_AUTH_MARKERS = ("api key not valid", "api_key_invalid", "invalid api key", "incorrect api key")
_MAX_CHAIN = 5


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from (``__cause__``), at most a few deep."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < _MAX_CHAIN and current not in found:
        found.append(current)
        current = current.__cause__
    return found


def _status(error: BaseException) -> int | None:
    """The HTTP status an SDK error carries (``status_code``, google-genai's ``code``)."""
    for value in (
        getattr(error, "status_code", None),
        getattr(error, "code", None),
        getattr(getattr(error, "response", None), "status_code", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _error_fields(error: BaseException) -> str:
    """The error code/type/status/reason strings an SDK error carries, lower-cased, joined."""
    parts: list[str] = []
    for name in ("code", "type", "status"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            parts.append(value)
    body = getattr(error, "body", None)
    if body is None:
        body = getattr(error, "details", None)  # google-genai keeps the JSON error here
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            for name in ("code", "type", "status"):
                value = inner.get(name)
                if isinstance(value, str):
                    parts.append(value)
            details = inner.get("details")
            if isinstance(details, list):
                parts.extend(
                    str(entry["reason"])
                    for entry in details
                    if isinstance(entry, Mapping) and isinstance(entry.get("reason"), str)
                )
    return " ".join(parts).lower()


_OWN_CATEGORIES = {"conflict": "server_error", "invalid_response": "validation"}
"""Categories the built-in strategies' errors carry that results name differently."""


def _own_category(exc: BaseException) -> str | None:
    """The category the built-in strategies' errors carry (``ProviderAPIError.category``)."""
    for error in _chain(exc):
        own = getattr(error, "category", None)
        if isinstance(own, str) and own != "unknown":
            own = _OWN_CATEGORIES.get(own, own)
            if own in ITEM_CATEGORIES:
                return own
    return None


def _from_exception(exc: BaseException) -> str | None:
    """The category an exception names by itself (status, code, type, text), or ``None``.

    Looks through the chain of causes: an out-of-credit answer anywhere wins; then a category
    our strategies' errors carry (``ProviderAPIError.category``); then an invalid key; then the
    first HTTP status found.
    """
    chain = _chain(exc)
    texts = [f"{_error_fields(error)} {str(error).lower()}" for error in chain]
    if any(
        "billing_error" in text or any(marker in text for marker in _OUT_OF_CREDIT_MARKERS)
        for text in texts
    ):
        return "insufficient_quota"
    own = _own_category(exc)
    if own is not None:
        return own
    if any(marker in text for text in texts for marker in _AUTH_MARKERS):
        return "authentication"
    for error, text in zip(chain, texts, strict=True):
        status = _status(error)
        if status is None:
            if "authentication_error" in text or "permission_error" in text:
                return "authentication"
            if "not_found_error" in text or "model_not_found" in text:
                return "model_not_found"
            continue
        if status == 401:
            return "authentication"
        if status == 403:
            # Permission denied is the key's (a project without access, a revoked key), except
            # Gemini's answer for a cached content that no longer exists, which heals itself.
            return "bad_request" if "not found" in text else "authentication"
        if status == 402:
            return "insufficient_quota"
        if status == 404:
            return "model_not_found"
        if status == 429:
            return "rate_limit"
        if status in (408, 504):
            return "timeout"
        if status >= 500:
            return "server_error"
        return "bad_request"
    return None


def item_category(exc: BaseException, info: ErrorInfo | None) -> str:
    """The category a failed item's result reports (spec BEYOND §N3).

    A classifier label that already is one of :data:`ITEM_CATEGORIES` (a custom classifier may
    return ``"authentication"``) is kept, except that a generic ``rate_limit``, ``bad_request``
    or ``unknown`` gives way to what the exception itself says: an out-of-credit answer
    (OpenAI ``429 insufficient_quota``, Anthropic's credit and billing errors) is
    ``insufficient_quota``, a 401/403 or an invalid key ``authentication``, a 404
    ``model_not_found``. A ``logic_error`` label (the default classifier's for any
    ``ValueError``) gives way to the category the built-in strategies' errors carry. The 0.6.0
    labels map as ``client_error`` → read the exception, else ``bad_request``; the timeouts →
    ``timeout``; ``connection_error`` → ``connection``; ``validation_error`` → ``validation``.
    Anything else is ``unknown``.
    """
    label = info.error_category if info is not None else "unknown"
    mapped = _FROM_LABEL.get(label, label if label in ITEM_CATEGORIES else None)
    if mapped == "logic_error":
        # The default classifier calls every ValueError a logic error, also the built-in
        # strategies' ProviderRequestError (a wrong key, an empty account): their own category.
        own = _own_category(exc)
        if own is not None:
            return own
    if mapped in (None, "rate_limit", "bad_request", "unknown"):
        found = _from_exception(exc)
        if found is not None and not (mapped == "rate_limit" and found == "bad_request"):
            return found
    if mapped is None:
        return label if isinstance(label, str) and label else "unknown"
    return mapped


def model_name(strategy: object) -> str:
    """The model a strategy calls, for ``cost_function``: its ``model`` (or the ``model_name``
    / ``model`` of its model object or agent's model), else the strategy's class name."""
    for owner in (strategy, getattr(strategy, "agent", None)):
        model = getattr(owner, "model", None)
        if isinstance(model, str) and model:
            return model
        for name in ("model_name", "model"):
            inner = getattr(model, name, None)
            if isinstance(inner, str) and inner:
                return inner
    return type(strategy).__name__


# --------------------------------------------------------------------------------- budgets


class BudgetExceededError(Exception):
    """An attempt's reservation would pass ``max_total_tokens`` or ``max_total_cost``."""


class CostFunctionError(Exception):
    """``GuardrailConfig.cost_function`` raised or returned something other than a number."""


class Budget:
    """Reserve-then-reconcile arithmetic against a token cap and a cost cap (pure, no I/O).

    ``spent`` is what settled attempts really used; ``held`` is what admitted attempts still in
    flight reserved. An attempt is admitted only if ``spent + held + its estimate`` stays
    within every cap, so the final spend exceeds a cap by at most the sum, over the attempts in
    flight at the last admission, of what each really used above its estimate.

    Args:
        max_tokens: the token cap, or ``None``.
        max_cost: the cost cap in dollars, or ``None``.
    """

    __slots__ = ("held_cost", "held_tokens", "max_cost", "max_tokens", "spent_cost", "spent_tokens")

    def __init__(self, max_tokens: int | None, max_cost: float | None) -> None:
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.spent_tokens = 0
        self.spent_cost = 0.0
        self.held_tokens = 0
        self.held_cost = 0.0

    def try_reserve(self, tokens: int, cost: float) -> str | None:
        """Hold ``tokens`` and ``cost``; return ``None``, or the name of the cap they'd pass."""
        if (
            self.max_tokens is not None
            and self.spent_tokens + self.held_tokens + tokens > self.max_tokens
        ):
            return "max_total_tokens"
        if self.max_cost is not None and self.spent_cost + self.held_cost + cost > self.max_cost:
            return "max_total_cost"
        self.held_tokens += tokens
        self.held_cost += cost
        return None

    def settle(self, held_tokens: int, held_cost: float, tokens: int, cost: float) -> None:
        """Release a reservation and count what the attempt really used."""
        self.held_tokens -= held_tokens
        self.held_cost -= held_cost
        self.spent_tokens += tokens
        self.spent_cost += cost

    def __repr__(self) -> str:
        return (
            f"<Budget tokens={self.spent_tokens}+{self.held_tokens}/{self.max_tokens} "
            f"cost={self.spent_cost:.6g}+{self.held_cost:.6g}/{self.max_cost}>"
        )


class Charge:
    """One admitted attempt's reservation in the :class:`Ledger`."""

    __slots__ = ("chars", "cost", "model", "scope", "tokens")

    def __init__(self, model: str, scope: str, chars: int, tokens: int, cost: float) -> None:
        self.model = model
        self.scope = scope
        self.chars = chars
        self.tokens = tokens
        self.cost = cost


def _usage_tokens(usage: Mapping[str, Any]) -> int:
    total = usage.get("total_tokens")
    if isinstance(total, int) and total > 0:
        return total
    parts = (usage.get("input_tokens"), usage.get("output_tokens"))
    return sum(part for part in parts if isinstance(part, int) and part > 0)


def _takes_batch(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "batch" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


class Ledger:
    """Prices attempts and, with caps, reserves each one before it starts.

    Estimates come from ``ProcessorConfig.token_estimator``, else the strategy's
    ``estimate_tokens(prompt)``, else a :class:`LearningEstimator` taught by every settled
    attempt: the same choice quota admission makes.

    Args:
        config: the guardrails (caps and ``cost_function``).
        estimator: ``ProcessorConfig.token_estimator``, or ``None``.
    """

    def __init__(self, config: GuardrailConfig, estimator: Any) -> None:
        self.budget = (
            Budget(config.max_total_tokens, config.max_total_cost) if config.has_caps else None
        )
        function = config.cost_function
        if function is None and config.max_total_cost is not None:
            function = PriceTable.default().cost  # a cost cap needs prices: the list prices
        self.cost_function = function
        # Batch mode prices at the batch rate when the function can say so (PriceTable.cost).
        self.batch_aware = function is not None and _takes_batch(function)
        self.estimator = estimator
        self.learner = LearningEstimator()

    def price(self, model: str, usage: Mapping[str, Any], *, batch: bool = False) -> float:
        """``cost_function(model, usage)``, checked; 0.0 without a cost function.

        With ``batch`` (a line of a provider batch job) a function that takes a ``batch``
        keyword (``PriceTable.cost``) is called with ``batch=True``; others price it as usual.

        Raises:
            CostFunctionError: it raised, or returned a negative, NaN or non-numeric value.
        """
        function = self.cost_function
        if function is None:
            return 0.0
        priced: TokenUsage = {
            "input_tokens": int(usage.get("input_tokens", 0) or 0),
            "output_tokens": int(usage.get("output_tokens", 0) or 0),
            "total_tokens": int(usage.get("total_tokens", 0) or 0),
        }
        cached = usage.get("cached_input_tokens")
        if cached:
            priced["cached_input_tokens"] = int(cached)
        try:
            if batch and self.batch_aware:
                cost = function(model, priced, batch=True)  # type: ignore[call-arg]  # checked
            else:
                cost = function(model, priced)
        except UnknownModelPriceError as exc:  # its message says how to add the price
            raise CostFunctionError(f"cannot price model {model!r}: {exc}") from exc
        except Exception as exc:
            raise CostFunctionError(
                f"cost_function raised {type(exc).__name__} for model {model!r}: {exc}"
            ) from exc
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0:
            raise CostFunctionError(
                f"cost_function must return a number of dollars >= 0 for model {model!r}, got "
                f"{type(cost).__name__} {cost!r:.80}"
            )
        return float(cost)

    async def _estimate(
        self, prompt: Any, strategy: object, attempt: int, state: RetryState | None
    ) -> tuple[TokenEstimate, int]:
        user = self.estimator
        own = getattr(strategy, "estimate_tokens", None)
        if user is None and not callable(own):
            chars = prompt_characters(prompt)
            return self.learner.estimate(scope_of(strategy), prompt), chars
        try:
            if user is not None:
                estimate = user(prompt, strategy=strategy, attempt=attempt, state=state)
            else:
                assert own is not None
                estimate = own(prompt)
            if inspect.isawaitable(estimate):
                estimate = await estimate
        except Exception as exc:
            raise TokenEstimatorError(
                f"the token estimator raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(estimate, TokenEstimate):
            raise TokenEstimatorError(
                "the token estimator must return a TokenEstimate, got "
                f"{type(estimate).__name__}: {estimate!r:.100}"
            )
        return estimate, -1  # a user estimate: the learner does not learn from it

    async def reserve(
        self, prompt: Any, strategy: object, attempt: int, state: RetryState | None
    ) -> Charge:
        """Estimate one attempt and hold it against the caps.

        Raises:
            BudgetExceededError: the reservation would pass a cap (the attempt must not start).
            TokenEstimatorError / CostFunctionError: estimating or pricing failed.
        """
        model = model_name(strategy)
        budget = self.budget
        if budget is None:  # pricing only: nothing to reserve
            return Charge(model, "", -1, 0, 0.0)
        estimate, chars = await self._estimate(prompt, strategy, attempt, state)
        tokens = estimate.total_tokens
        cost = (
            self.price(
                model,
                {
                    "input_tokens": estimate.input_tokens,
                    "output_tokens": estimate.output_tokens,
                    "total_tokens": tokens,
                },
            )
            if self.cost_function is not None
            else 0.0
        )
        passed = budget.try_reserve(tokens, cost)
        if passed is not None:
            limit = budget.max_tokens if passed == "max_total_tokens" else budget.max_cost
            raise BudgetExceededError(
                f"{passed}={limit!r} would be passed: spent {budget.spent_tokens} tokens / "
                f"${budget.spent_cost:.6g}, {budget.held_tokens} tokens / "
                f"${budget.held_cost:.6g} reserved by calls in flight, and this attempt needs "
                f"about {tokens} tokens / ${cost:.6g}"
            )
        return Charge(model, scope_of(strategy), chars, tokens, cost)

    def settle(
        self, charge: Charge, usage: Mapping[str, Any] | None, *, ran: bool, batch: bool = False
    ) -> float:
        """The attempt ended: count its real usage (the estimate if it ran but reported none).

        Args:
            charge: the attempt's reservation.
            usage: what the provider reported, or ``None``/empty.
            ran: whether the call may have been billed without reporting (a timeout).

        Returns:
            The attempt's cost in dollars (0.0 without a cost function).

        Raises:
            CostFunctionError: pricing the real usage failed (the reservation is released).
        """
        budget = self.budget
        try:
            if usage:
                cost = self.price(charge.model, usage, batch=batch)
                tokens = _usage_tokens(usage)
                if charge.chars >= 0:
                    self.learner.observe(charge.scope, charge.chars, usage)
            elif ran:
                cost, tokens = charge.cost, charge.tokens
            else:
                cost, tokens = 0.0, 0
        except CostFunctionError:
            if budget is not None:
                budget.settle(charge.tokens, charge.cost, charge.tokens, charge.cost)
            raise
        if budget is not None:
            budget.settle(charge.tokens, charge.cost, tokens, cost)
        return cost

    def release(self, charge: Charge) -> None:
        """The attempt never started: give its reservation back."""
        if self.budget is not None:
            self.budget.settle(charge.tokens, charge.cost, 0, 0.0)


# --------------------------------------------------------------------------------- the stop


class WorkerSlot:
    """What one worker is doing, so a stop or a deadline can interrupt it.

    Attributes:
        task: the worker's task.
        item: the item the worker is inside of (``None`` between items).
        interrupt: why the worker was cancelled by us (``None``: it was not).
        calling: whether the worker is inside a provider call (a budget stop spares those).
        spent: tokens of the current item's finished attempts (kept when it is interrupted).
        cost: dollars of the current item's finished attempts.
    """

    __slots__ = ("calling", "cost", "interrupt", "item", "spent", "spent_for", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.item: Any = None
        self.interrupt: BatchTermination | None = None
        self.calling = False
        self.spent: dict[str, int] | None = None
        self.spent_for: object = None  # the item ``spent`` and ``cost`` belong to
        self.cost = 0.0

    def cancel(self, why: BatchTermination) -> None:
        """Cancel the worker's task, once, noting why."""
        if self.interrupt is None:
            self.interrupt = why
            self.task.cancel()

    def withdraw(self) -> BatchTermination | None:
        """After the item: take back a cancellation the item swallowed; return its reason."""
        why = self.interrupt
        if why is not None:
            self.interrupt = None
            self.task.uncancel()
        return why


_ERROR_NAMES = {
    "batch_timeout": "BatchTimeout",
    "budget_exceeded": "BudgetExceeded",
    "fail_fast": "FailFast",
    "cancelled": "Cancelled",
    "item_timeout": "ItemTimeout",
}


class Guard:
    """The guardrails of one run (see the module docstring).

    Args:
        config: ``ProcessorConfig.guardrails``.
        clock: the processor's clock (deadlines are measured on it).
        estimator: ``ProcessorConfig.token_estimator``.
    """

    def __init__(self, config: GuardrailConfig, clock: Clock, estimator: Any = None) -> None:
        self.config = config
        self.clock = clock
        self.abort_on = config.abort_on_error_categories
        self.termination: BatchTermination | None = None
        self.slots: dict[int, WorkerSlot] = {}
        self.item_timeout = config.total_timeout_per_item
        self.ledger = (
            Ledger(config, estimator)
            if config.has_caps or config.cost_function is not None
            else None
        )
        self.priced = self.ledger is not None and self.ledger.cost_function is not None
        # Items then leave the worker's fast path (an attempt must be reserved or watched).
        self.slow = self.ledger is not None or self.item_timeout is not None

    def slot(self, worker_id: int) -> WorkerSlot:
        """The calling worker's slot (made on first use)."""
        task = asyncio.current_task()
        assert task is not None
        slot = self.slots.get(worker_id)
        if slot is None or slot.task is not task:
            slot = self.slots[worker_id] = WorkerSlot(task)
        return slot

    def stop(
        self,
        kind: str,
        reason: str,
        category: str | None = None,
        item_id: str | None = None,
    ) -> bool:
        """Stop the batch (the first call wins): no item starts any more.

        Workers inside an item are interrupted (their item fails with ``kind`` as its category),
        except the caller, and except, for ``"budget_exceeded"``, workers inside a provider
        call: what those calls cost is already reserved, so they may finish.

        Returns:
            Whether this call stopped the batch.
        """
        if self.termination is not None:
            return False
        termination = BatchTermination(
            kind,  # type: ignore[arg-type]  # one of the TerminationKind values
            reason,
            category if category is not None else kind,
            item_id,
        )
        self.termination = termination
        current = asyncio.current_task()
        spare_calls = kind == "budget_exceeded"
        for slot in self.slots.values():
            if slot.item is None or slot.task is current or (spare_calls and slot.calling):
                continue
            slot.cancel(termination)
        return True

    def fail_fast(self, category: str, item_id: str, exc: BaseException) -> None:
        """Stop the batch because ``item_id``'s answer is in ``abort_on_error_categories``."""
        self.stop(
            "fail_fast",
            f"item {item_id!r} got a {category!r} answer, one of abort_on_error_categories "
            f"({', '.join(sorted(self.abort_on))}): {type(exc).__name__}: {str(exc)[:200]}",
            category,
            item_id,
        )

    def settle(
        self, charge: Charge, usage: Mapping[str, Any] | None, worker_id: int, ran: bool
    ) -> CostFunctionError | None:
        """Reconcile an attempt's reservation and add its cost to the worker's current item.

        Returns the error when ``cost_function`` could not price the attempt (the attempt's
        usage is attached to it, so the item keeps its tokens), else ``None``.
        """
        assert self.ledger is not None
        try:
            cost = self.ledger.settle(charge, usage, ran=ran)
        except CostFunctionError as failed:
            failed.__dict__["_failed_token_usage"] = dict(usage or {})
            return failed
        slot = self.slots.get(worker_id)
        if slot is not None:
            slot.cost += cost
        return None

    async def run_batch_timer(self, seconds: float) -> None:
        """Stop the batch with ``"batch_timeout"`` after ``seconds`` on the clock."""
        await self.clock.sleep(seconds)
        self.stop(
            "batch_timeout",
            f"the batch ran past batch_timeout={seconds!r} s",
        )

    async def watch_item(self, slot: WorkerSlot, item: object, seconds: float) -> None:
        """Interrupt ``slot``'s worker if it is still on ``item`` ``seconds`` from now."""
        await self.clock.sleep(seconds)
        if slot.item is item:
            slot.cancel(
                BatchTermination(
                    "cancelled",
                    f"the item ran past total_timeout_per_item={seconds!r} s (attempts, "
                    "backoff, cooldown and admission waits included)",
                    "item_timeout",
                )
            )

    def interrupted_result(
        self, item: LLMWorkItem[Any, Any, Any], slot: WorkerSlot, why: BatchTermination
    ) -> WorkItemResult[Any, Any]:
        """The failure of the item ``slot``'s worker was on when ``why`` interrupted it, with
        the tokens (and cost) of the attempts it had finished."""
        result = self.stopped_result(item, why)
        mine = slot.spent_for is item
        if mine and slot.spent:
            spent = slot.spent
            result.token_usage = {
                "input_tokens": spent.get("input_tokens", 0),
                "output_tokens": spent.get("output_tokens", 0),
                "total_tokens": spent.get("total_tokens", 0),
            }
            if spent.get("cached_input_tokens"):
                result.token_usage["cached_input_tokens"] = spent["cached_input_tokens"]
        if self.priced:
            result.cost = slot.cost if mine else 0.0
        return result

    @staticmethod
    def failure(why: BatchTermination) -> tuple[str, str]:
        """``(error, category)`` of an item that ``why`` kept from finishing or starting."""
        category = "item_timeout" if why.error_category == "item_timeout" else why.kind
        return f"{_ERROR_NAMES.get(category, 'Stopped')}: {why.reason}"[:500], category

    def stopped_result(
        self, item: LLMWorkItem[Any, Any, Any], why: BatchTermination
    ) -> WorkItemResult[Any, Any]:
        """The failure of an item the stop (or its own deadline) kept from finishing."""
        error, category = self.failure(why)
        return WorkItemResult(
            item_id=item.item_id,
            success=False,
            error=error,
            context=item.context,
            token_usage={},
            error_category=category,
        )
