"""An observer exporting a batch to OpenTelemetry: a span per item, a child per attempt, metrics.

Needs the ``otel`` extra (``pip install 'async-batch-llm[otel]'``, which installs
``opentelemetry-api``); this module imports OpenTelemetry only when the observer is created, so
``import async_batch_llm`` never does.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING, Any

from async_batch_llm.observers.base import BaseObserver, ExtendedEvent, ProcessingEvent

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OpenTelemetryObserver"]

INSTALL_HINT = (
    "OpenTelemetryObserver needs opentelemetry-api; install it with: "
    "pip install 'async-batch-llm[otel]'"
)

SCOPE = "async_batch_llm"
"""The instrumentation scope name of every span and instrument."""

ITEM_SPAN = "async_batch_llm.item"
ATTEMPT_SPAN = "async_batch_llm.attempt"

# GenAI semantic-convention names, and the general error attribute.
MODEL = "gen_ai.request.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"

# This library's own attributes.
ITEM_ID = "async_batch_llm.item.id"
ITEM_ATTEMPTS = "async_batch_llm.item.attempts"
ITEM_OUTCOME = "async_batch_llm.item.outcome"
ITEM_REPLAYED = "async_batch_llm.item.replayed"
ADMISSION_WAIT = "async_batch_llm.admission.wait"
COST = "async_batch_llm.cost"
ATTEMPT_NUMBER = "async_batch_llm.attempt"
WORKER_ID = "async_batch_llm.worker.id"
RETRYABLE = "async_batch_llm.attempt.retryable"
RATE_LIMITED = "async_batch_llm.attempt.rate_limited"
OUTCOME = "async_batch_llm.outcome"


def _import_otel() -> tuple[Any, Any, Any]:
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.trace import StatusCode
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return trace, metrics, StatusCode


def _number(value: object) -> float | None:
    """``value`` if it is a real number (not a bool), else ``None``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _Item:
    """The open spans and running sums of one item."""

    __slots__ = ("attempt_span", "attempt_start", "attempts", "input", "model", "output", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.attempt_span: Span | None = None
        self.attempt_start = 0  # ns since the epoch
        self.attempts = 0
        self.input = 0
        self.output = 0
        self.model: str | None = None


class _Run:
    """The open items of one batch run (item ids are unique within a run, not across runs)."""

    __slots__ = ("items", "token")

    def __init__(self) -> None:
        self.items: dict[str, _Item] = {}
        self.token: contextvars.Token[_Run | None] | None = None


# The run whose events are being handled. Set on BATCH_STARTED in the task running the batch,
# so the workers it starts (and their events) inherit it; two batches sharing one observer keep
# apart, even with the same item ids.
_current_run: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "async_batch_llm_otel_run", default=None
)


class OpenTelemetryObserver(BaseObserver):
    """Turns a batch's events into OpenTelemetry spans and metrics.

    Each item becomes one span (``async_batch_llm.item``), child of the span that was current
    when ``process_all()`` was called, with one child span per attempt
    (``async_batch_llm.attempt``, kind ``CLIENT``). Attributes follow the GenAI semantic
    conventions where one applies: ``gen_ai.request.model`` (when the strategy has a ``model``
    attribute, as the built-in OpenAI and Anthropic strategies do), ``gen_ai.usage.input_tokens``
    and ``gen_ai.usage.output_tokens`` (per attempt; on the item, the sum over its attempts, which
    is its result's ``token_usage``), ``error.type`` (the exception's class name) with an
    ``ERROR`` status on failed attempts and items. The library's own attributes are
    ``async_batch_llm.item.id``, ``.item.attempts``, ``.item.outcome`` (``success``,
    ``failure``, ``skipped``, ``aborted`` or ``unreported``), ``.item.replayed``, ``.attempt``,
    ``.worker.id``, ``.attempt.retryable``, ``.attempt.rate_limited``, ``.admission.wait``
    (seconds) and ``.cost`` (dollars) when the events carry them.

    Metrics (meter ``async_batch_llm``): counters ``async_batch_llm.items`` (by
    ``async_batch_llm.outcome`` and ``async_batch_llm.item.replayed``), ``async_batch_llm.attempts``
    (by outcome, ``error.type``, model), ``async_batch_llm.tokens`` (by ``gen_ai.token.type``
    and model), ``async_batch_llm.cost`` (dollars), ``async_batch_llm.rate_limits`` and
    ``async_batch_llm.cooldown.time`` (seconds); histograms ``async_batch_llm.admission.wait``
    (seconds per item), ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration``
    (per attempt).

    A span still open when the batch ends is closed then: with outcome ``aborted`` and an
    ``ERROR`` status when the batch was cancelled, ``unreported`` otherwise (an item whose
    result middleware supplied after a failed attempt has no event of its own).

    Args:
        tracer_provider: where spans go; ``None`` uses the global provider.
        meter_provider: where metrics go; ``None`` uses the global provider.

    Raises:
        ImportError: when ``opentelemetry-api`` is not installed (the ``otel`` extra).
    """

    extended_events = True  # ATTEMPT_FAILED ends a retried attempt's span, BATCH_ABORTED the rest

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        trace, metrics, status_code = _import_otel()
        from async_batch_llm import __version__

        self._trace = trace
        self._error = status_code.ERROR
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self._items_counter = meter.create_counter(
            "async_batch_llm.items", unit="{item}", description="Items that got their result"
        )
        self._attempts_counter = meter.create_counter(
            "async_batch_llm.attempts", unit="{attempt}", description="Calls made, by outcome"
        )
        self._tokens_counter = meter.create_counter(
            "async_batch_llm.tokens", unit="{token}", description="Tokens the calls reported"
        )
        self._cost_counter = meter.create_counter(
            "async_batch_llm.cost", unit="USD", description="Cost of the items, in dollars"
        )
        self._rate_limits_counter = meter.create_counter(
            "async_batch_llm.rate_limits", unit="{attempt}", description="Rate-limited attempts"
        )
        self._cooldown_counter = meter.create_counter(
            "async_batch_llm.cooldown.time",
            unit="s",
            description="Time spent in shared rate-limit cooldowns",
        )
        self._admission_histogram = meter.create_histogram(
            "async_batch_llm.admission.wait",
            unit="s",
            description="Time an item waited for quota admission",
        )
        self._token_usage_histogram = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens per call"
        )
        self._duration_histogram = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of each call"
        )
        self._default_run = _Run()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(open_items={len(self._run().items)})"

    def _run(self) -> _Run:
        run = _current_run.get()
        return run if run is not None else self._default_run

    async def on_event(self, event: ProcessingEvent | ExtendedEvent, data: dict[str, Any]) -> None:
        """Open, annotate or close spans and record metrics for ``event``.

        Args:
            event: the lifecycle event.
            data: its payload (see :class:`~async_batch_llm.observers.ProcessingEvent`).
        """
        if event is ProcessingEvent.ITEM_STARTED:
            self._attempt_started(data)
        elif event is ProcessingEvent.ITEM_COMPLETED:
            self._item_completed(data)
        elif event is ExtendedEvent.ATTEMPT_FAILED:
            self._attempt_failed(data)
        elif event is ProcessingEvent.ITEM_FAILED:
            self._item_failed(data)
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            self._rate_limits_counter.add(1)
        elif event is ProcessingEvent.COOLDOWN_ENDED:
            duration = _number(data.get("duration"))
            if duration is not None and duration > 0:
                self._cooldown_counter.add(duration)
        elif event is ProcessingEvent.BATCH_STARTED:
            run = _Run()
            run.token = _current_run.set(run)
        elif event is ProcessingEvent.BATCH_COMPLETED:
            self._end_run(None)
        elif event is ExtendedEvent.BATCH_ABORTED:
            self._end_run(str(data.get("error_type") or "aborted"))

    # ------------------------------------------------------------------------- attempts

    def _start_item(self, item_id: str, start: int | None = None) -> _Item:
        span = self._tracer.start_span(ITEM_SPAN, attributes={ITEM_ID: item_id}, start_time=start)
        return _Item(span)

    def _attempt_started(self, data: dict[str, Any]) -> None:
        item_id = str(data.get("item_id"))
        items = self._run().items
        item = items.get(item_id)
        now = time.time_ns()
        if item is None:
            item = items[item_id] = self._start_item(item_id, now)
        elif item.attempt_span is not None:  # its end was not reported: close it here
            item.attempt_span.end(now)
        item.attempts += 1
        attributes: dict[str, Any] = {ITEM_ID: item_id, ATTEMPT_NUMBER: item.attempts}
        if "worker_id" in data:
            attributes[WORKER_ID] = data["worker_id"]
        item.attempt_start = now
        item.attempt_span = self._tracer.start_span(
            ATTEMPT_SPAN,
            context=self._trace.set_span_in_context(item.span),
            kind=self._trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=now,
        )

    def _close_attempt(
        self, item: _Item, data: dict[str, Any], outcome: str, error_type: str | None, end: int
    ) -> None:
        """Add the attempt's tokens to its item; annotate, end and count its open span."""
        input_tokens = int(data.get("input_tokens") or 0)
        output_tokens = int(data.get("output_tokens") or 0)
        item.input += input_tokens
        item.output += output_tokens
        model = data.get("model")
        if type(model) is str:
            item.model = model
        attributes: dict[str, Any] = {}
        if item.model is not None:
            attributes[MODEL] = item.model
        span = item.attempt_span
        if span is None:
            return
        item.attempt_span = None
        if error_type is not None:
            span.set_status(self._error, error_type)
            attributes[ERROR_TYPE] = error_type
        span.set_attributes(
            {**attributes, INPUT_TOKENS: input_tokens, OUTPUT_TOKENS: output_tokens}
        )
        end = max(end, item.attempt_start)
        span.end(end)
        self._duration_histogram.record((end - item.attempt_start) / 1e9, attributes)
        self._attempts_counter.add(1, {**attributes, OUTCOME: outcome})
        for token_type, count in (("input", input_tokens), ("output", output_tokens)):
            typed = {**attributes, TOKEN_TYPE: token_type}
            self._token_usage_histogram.record(count, typed)
            if count:
                self._tokens_counter.add(count, typed)

    def _attempt_failed(self, data: dict[str, Any]) -> None:
        item_id = str(data.get("item_id"))
        items = self._run().items
        item = items.get(item_id)
        if item is None:
            return  # its ITEM_STARTED was not seen (observer attached mid-run)
        span = item.attempt_span
        if span is not None:
            span.set_attributes(
                {
                    RETRYABLE: bool(data.get("retryable")),
                    RATE_LIMITED: bool(data.get("rate_limit")),
                }
            )
        error_type = str(data.get("error_type") or "Exception")
        self._close_attempt(item, data, "failure", error_type, time.time_ns())
        if data.get("skipped"):  # a middleware skip ends the item; no ITEM_FAILED follows
            del items[item_id]
            self._end_item(item, data, "skipped", None)

    # ------------------------------------------------------------------------- items

    def _take_item(self, data: dict[str, Any]) -> _Item:
        """The item's state, removed from the run; a span of its own for a replayed item."""
        item_id = str(data.get("item_id"))
        item = self._run().items.pop(item_id, None)
        if item is None:  # replayed from an artifact store: no attempt ran this run
            item = self._start_item(item_id)
        return item

    def _item_completed(self, data: dict[str, Any]) -> None:
        item = self._take_item(data)
        if item.attempt_span is not None:
            now = time.time_ns()
            end = now
            duration = _number(data.get("duration"))
            if duration is not None:
                # The event may come later than the attempt ended (after the artifact store
                # committed the result): the attempt ended `duration` after it started.
                end = min(now, item.attempt_start + int(duration * 1e9))
            self._close_attempt(item, data, "success", None, end)
        self._end_item(item, data, "success", None)

    def _item_failed(self, data: dict[str, Any]) -> None:
        item = self._take_item(data)
        error_type = str(data.get("error_type") or "Exception")
        if item.attempt_span is not None:
            self._close_attempt(item, {}, "failure", error_type, time.time_ns())
        self._end_item(item, data, "failure", error_type)

    def _end_item(
        self, item: _Item, data: dict[str, Any], outcome: str, error_type: str | None
    ) -> None:
        span = item.span
        replayed = bool(data.get("replayed"))
        attributes: dict[str, Any] = {
            ITEM_ATTEMPTS: item.attempts,
            ITEM_OUTCOME: outcome,
            ITEM_REPLAYED: replayed,
            INPUT_TOKENS: item.input,
            OUTPUT_TOKENS: item.output,
        }
        if item.model is not None:
            attributes[MODEL] = item.model
        wait = _number(data.get("admission_wait"))
        if wait is not None:
            attributes[ADMISSION_WAIT] = wait
            self._admission_histogram.record(wait)
        cost = _number(data.get("cost"))
        if cost is not None:
            attributes[COST] = cost
            if cost > 0:
                self._cost_counter.add(cost)
        if error_type is not None:
            attributes[ERROR_TYPE] = error_type
            span.set_status(self._error, error_type)
        span.set_attributes(attributes)
        span.end()
        self._items_counter.add(1, {OUTCOME: outcome, ITEM_REPLAYED: replayed})

    def _end_run(self, error_type: str | None) -> None:
        """Close what the run left open; forget the run."""
        run = self._run()
        items, run.items = run.items, {}
        outcome = "unreported" if error_type is None else "aborted"
        now = time.time_ns()
        for item in items.values():
            if item.attempt_span is not None:
                self._close_attempt(item, {}, outcome, error_type, now)
            self._end_item(item, {}, outcome, error_type)
        token = run.token
        if token is not None:
            run.token = None
            try:
                _current_run.reset(token)
            except ValueError:  # ended from another context than it started in
                _current_run.set(None)
