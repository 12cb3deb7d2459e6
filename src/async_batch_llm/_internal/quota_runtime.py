"""Quota admission as the processor uses it: estimate an attempt, reserve it, settle it.

The processor builds one :class:`QuotaRuntime` per run when admission is on (a request or token
limit or ``quotas`` is declared, or a strategy's rate-limit headers revealed a limit). For each
physical attempt it calls :meth:`QuotaRuntime.admit`, points
:data:`~async_batch_llm._internal.rate_limit_headers.HEADER_SINK` at the admission's gate around
the call, and settles the :class:`Admission` afterwards: :meth:`Admission.settle` with the usage
the provider reported (or ``None`` to keep the estimate), :meth:`Admission.cancel` when the call
never started.

Which estimate an attempt reserves, first match wins:

1. ``ProcessorConfig.token_estimator``;
2. the strategy's ``estimate_tokens(prompt)``, if it defines one;
3. the shared :class:`LearningEstimator`, when a token limit (declared or learned) is in force;
4. requests only: ``TokenEstimate(0, 0)``.

What observers learn: every ``ITEM_COMPLETED`` / ``ITEM_FAILED`` of an item that went through
admission carries :meth:`QuotaRuntime.item_event_fields` (the item's admission wait, summed over
its attempts, and a snapshot of its scope's gate: limits in force, last minute's usage).

When no limit is declared, :class:`HeaderDiscovery` sits in each worker's context instead, so a
strategy that reports headers still teaches the gates; until it does, the processor keeps its
zero-configuration fast path.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from async_batch_llm._internal.admission import (
    AdmissionGate,
    GateRegistry,
    GateStatistics,
    Reservation,
)
from async_batch_llm._internal.clock import Clock
from async_batch_llm._internal.estimators import LearningEstimator, prompt_characters, scope_of
from async_batch_llm._internal.quota_backend import is_shared_backend
from async_batch_llm._internal.quota_headers import parse_rate_limit_headers
from async_batch_llm._internal.quota_types import (
    EstimateTooLargeError,
    TokenEstimate,
    TokenEstimator,
)

if TYPE_CHECKING:
    from async_batch_llm._types import RetryState
    from async_batch_llm.core.config import ProcessorConfig

__all__ = [
    "Admission",
    "HeaderDiscovery",
    "QuotaRuntime",
    "TokenEstimatorError",
    "admission_declared",
    "quota_event_fields",
]

_NO_TOKENS = TokenEstimate(0, 0)


class TokenEstimatorError(Exception):
    """A token estimator raised or returned something other than a :class:`TokenEstimate`.

    Fails the attempt's item at once (not retried): the estimate is needed before the call.
    """


def admission_declared(config: ProcessorConfig) -> bool:
    """Whether ``config`` declares any request or token limit (or per-scope ``quotas``), or
    shares its quota through a backend (whose cooldown every attempt must respect)."""
    return (
        config.max_requests_per_minute is not None
        or config.max_tokens_per_minute is not None
        or config.max_input_tokens_per_minute is not None
        or config.max_output_tokens_per_minute is not None
        or bool(config.quotas)
        or is_shared_backend(config.quota_backend)
    )


def _describe(estimator: object) -> str:
    name = getattr(estimator, "__qualname__", None)
    if isinstance(name, str):
        return name
    return f"{type(estimator).__qualname__} object"


class Admission(Reservation):
    """One attempt's reservation, with what the learning estimator needs afterwards.

    Made by the gate (``kind=Admission``); the runtime then sets the learner and the prompt's
    characters.

    Attributes:
        waited: seconds the attempt waited for admission.
    """

    __slots__ = ("_learn_chars", "_learner")

    _learner: LearningEstimator | None
    _learn_chars: int

    @property
    def reservation(self) -> Reservation:
        """The reservation to settle: the admission itself."""
        return self

    def settle(self, usage: Mapping[str, Any] | None) -> None:
        """The call ran: reconcile with ``usage`` (``None`` keeps the estimate), learn from it."""
        self.reconcile(usage)
        learner = self._learner
        if usage and learner is not None:
            learner.observe(self.gate.scope, self._learn_chars, usage)


def quota_event_fields(stats: GateStatistics, admission_wait: float) -> dict[str, Any]:
    """The event payload keys describing one item's admission and its scope's gate.

    Keys: ``admission_wait`` (seconds), ``quota_scope``, ``quota_limits`` (per-minute limits in
    force, declared or learned, by dimension), ``quota_used`` (units of each dimension used in
    the last ``quota_window`` seconds) and ``quota_window`` (seconds, at most 60). Dimensions
    are ``requests``, ``tokens``, ``input_tokens`` and ``output_tokens``.
    """
    return {
        "admission_wait": admission_wait,
        "quota_scope": stats.scope,
        "quota_limits": dict(stats.limits),
        "quota_used": dict(stats.used_last_minute),
        "quota_window": stats.window_seconds,
    }


class _ItemWait:
    """The admission wait of the item a worker is on, summed over its attempts."""

    __slots__ = ("item", "scope", "waited")

    def __init__(self, item: object, scope: str, waited: float) -> None:
        self.item = item
        self.scope = scope
        self.waited = waited


class QuotaRuntime:
    """The gates of one processor run, its token estimator and the learning fallback.

    Args:
        registry: the gates by quota scope.
        estimator: ``ProcessorConfig.token_estimator``, or ``None``.
    """

    def __init__(self, registry: GateRegistry, estimator: TokenEstimator | None) -> None:
        self.registry = registry
        self.estimator = estimator
        self.learner = LearningEstimator()
        # admit_now()'s decision per strategy object: (the strategy, its gate or None).
        self._fast: dict[int, tuple[object, AdmissionGate | None]] = {}
        self._item_waits: dict[int, _ItemWait] = {}  # by worker id: one item at a time each

    def note_admission(self, worker_id: int, item: object, admission: Admission) -> None:
        """Add an admitted attempt of ``item`` (run by ``worker_id``) to the item's wait.

        A worker handles one item at a time, so the worker keeps one record, restarted when a
        different item object comes: nothing accumulates across items, nothing grows.
        """
        record = self._item_waits.get(worker_id)
        if record is None or record.item is not item:
            self._item_waits[worker_id] = _ItemWait(item, admission.gate.scope, admission.waited)
        else:
            record.scope = admission.gate.scope
            record.waited += admission.waited

    def item_event_fields(self, worker_id: int, item: object) -> dict[str, Any]:
        """The quota keys of ``item``'s ``ITEM_COMPLETED``/``ITEM_FAILED`` payload.

        Empty if no attempt of ``item`` was admitted (admission refused it, or turned on only
        after its attempts). See :func:`quota_event_fields` for the keys.
        """
        record = self._item_waits.get(worker_id)
        if record is None or record.item is not item:
            return {}
        stats = self.registry.snapshot(record.scope)
        if stats is None:  # pragma: no cover  # a noted admission's gate always exists
            return {"admission_wait": record.waited, "quota_scope": record.scope}
        return quota_event_fields(stats, record.waited)

    @classmethod
    def from_config(cls, config: ProcessorConfig, clock: Clock) -> QuotaRuntime:
        """The runtime for ``config`` (see :meth:`GateRegistry.from_config`)."""
        return cls(GateRegistry.from_config(config, clock), config.token_estimator)

    async def start(self) -> None:
        """Before a run: check that a shared quota backend answers (fails the run if not)."""
        backend = self.registry.backend
        if backend is not None:
            await backend.ping()

    async def aclose(self) -> None:
        """After a run: apply pending settlements to a shared backend, release connections."""
        backend = self.registry.backend
        if backend is not None:
            await self.registry.drain()
            await backend.aclose()

    async def _call_estimator(
        self, estimator: Callable[..., Any], name: str, *args: Any, **kwargs: Any
    ) -> TokenEstimate:
        try:
            estimate = estimator(*args, **kwargs)
            if inspect.isawaitable(estimate):
                estimate = await estimate
        except Exception as exc:
            raise TokenEstimatorError(
                f"the token estimator {name} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(estimate, TokenEstimate):
            raise TokenEstimatorError(
                f"the token estimator {name} must return a TokenEstimate, got "
                f"{type(estimate).__name__}: {estimate!r:.100}"
            )
        return estimate

    def admit_now(self, prompt: Any, strategy: object) -> Admission | None:
        """:meth:`admit` when it can be done without waiting, else ``None`` (nothing taken).

        The processor's fast path: ``None`` when a token estimator is configured or the
        strategy has its own ``estimate_tokens`` (either may be a coroutine), when the
        reservation has to wait, and when it would fail; :meth:`admit` then does it all.
        Whether a strategy object qualifies, and its quota scope, are decided on its first
        attempt of the run.
        """
        known = self._fast.get(id(strategy))
        gate = known[1] if known is not None and known[0] is strategy else self._fast_gate(strategy)
        if gate is None:
            return None
        chars = len(prompt) if type(prompt) is str else prompt_characters(prompt)
        learner = self.learner
        if gate.token_limited:
            input_tokens, output_tokens = learner.estimate_counts(gate.scope, chars)
        else:
            input_tokens = output_tokens = 0
        try:
            admission: Any = gate.try_reserve_tokens(input_tokens, output_tokens, Admission)
        except EstimateTooLargeError:
            return None
        if admission is not None:
            admission._learner = learner
            admission._learn_chars = chars
        return cast("Admission | None", admission)

    def _fast_gate(self, strategy: object) -> AdmissionGate | None:
        """The gate :meth:`admit_now` uses for ``strategy`` (``None``: never the fast path)."""
        own = self.estimator is not None or callable(getattr(strategy, "estimate_tokens", None))
        gate = None if own else self.registry.gate(scope_of(strategy))
        # The strategy itself is kept (a run's strategies outlive it anyway), so its id()
        # cannot be reused by another object while the entry exists.
        self._fast[id(strategy)] = (strategy, gate)
        return gate

    async def admit(
        self, prompt: Any, strategy: object, attempt: int, state: RetryState | None
    ) -> Admission:
        """Estimate one attempt and wait for its reservation in the strategy's scope.

        Raises:
            TokenEstimatorError: the estimator raised or returned something else than a
                :class:`TokenEstimate`.
            EstimateTooLargeError: the estimate exceeds a whole per-minute limit.
        """
        gate = self.registry.gate(scope_of(strategy))
        learner: LearningEstimator | None = None
        chars = 0
        user = self.estimator
        if user is not None:
            estimate = await self._call_estimator(
                user,
                f"{_describe(user)} (ProcessorConfig.token_estimator)",
                prompt,
                strategy=strategy,
                attempt=attempt,
                state=state,
            )
        elif callable(own := getattr(strategy, "estimate_tokens", None)):
            estimate = await self._call_estimator(
                own, f"{type(strategy).__qualname__}.estimate_tokens", prompt
            )
        else:
            learner = self.learner
            chars = prompt_characters(prompt)
            if gate.token_limited:
                estimate = learner.estimate_characters(gate.scope, chars)
            else:
                estimate = _NO_TOKENS
        admission = cast(Admission, await gate.reserve(estimate, Admission))
        admission._learner = learner
        admission._learn_chars = chars
        return admission


class HeaderDiscovery:
    """A worker's header sink: to the admitted attempt's gate, else it discovers limits.

    During an attempt the worker admitted itself, :attr:`gate` is that attempt's gate and the
    headers go there (cheaper than setting the context's sink for every attempt). Otherwise,
    while no limit is known, the worker sets :attr:`strategy` before each call: headers that
    carry a rate limit make the processor's :class:`QuotaRuntime` (through ``enable``) and go to
    the gate of the strategy's scope; from then on every attempt goes through admission.

    Args:
        enable: returns the processor's runtime, making it on first use.
    """

    __slots__ = ("_enable", "gate", "strategy")

    def __init__(self, enable: Callable[[], QuotaRuntime]) -> None:
        self._enable = enable
        self.strategy: object = None
        self.gate: AdmissionGate | None = None

    def __call__(self, headers: Mapping[str, str]) -> None:
        gate = self.gate
        if gate is not None:
            gate.observe_headers(headers)
            return
        snapshots = parse_rate_limit_headers(headers, now=time.time())
        if not any(snapshot.limit is not None for snapshot in snapshots):
            return  # nothing to learn a limit from: stay on the fast path
        self._enable().registry.gate(scope_of(self.strategy)).observe_headers(headers)
