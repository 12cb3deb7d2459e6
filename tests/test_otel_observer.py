"""OpenTelemetryObserver against the real OpenTelemetry SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from async_batch_llm import BaseMiddleware, LLMWorkItem, ProcessingEvent, TokenUsage
from async_batch_llm.observers import OpenTelemetryObserver
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked
from tests.conftest import (
    USAGE,
    EventRecorder,
    RateLimitError,
    ScriptedStrategy,
    add_all,
    items,
    make_config,
    make_processor,
    run_batch,
)

E = ProcessingEvent


class OpenSpans(SpanProcessor):
    """Counts spans started and ended: equal when nothing was left open."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


class Telemetry:
    """An observer wired to an in-memory span exporter and metric reader."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.open = OpenSpans()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer_provider.add_span_processor(self.open)
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.observer = OpenTelemetryObserver(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def item(self, item_id: str) -> ReadableSpan:
        (span,) = [
            span
            for span in self.spans("async_batch_llm.item")
            if attrs(span)["async_batch_llm.item.id"] == item_id
        ]
        return span

    def attempts(self, item_id: str) -> list[ReadableSpan]:
        item = self.item(item_id)
        children = [
            span
            for span in self.spans("async_batch_llm.attempt")
            if span.parent is not None and span.parent.span_id == _context(item).span_id
        ]
        return sorted(children, key=lambda span: attrs(span)["async_batch_llm.attempt"])

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        found: list[Any] = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str, **attributes: Any) -> float:
        """The sum of a counter's points whose attributes include ``attributes``."""
        points: Sequence[NumberDataPoint] = self.points(name)
        return sum(
            point.value
            for point in points
            if all(dict(point.attributes or {}).get(k) == v for k, v in attributes.items())
        )


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _context(span: ReadableSpan) -> Any:
    context = span.context
    assert context is not None
    return context


def with_failed_usage(exc: Exception, usage: TokenUsage) -> Exception:
    exc.__dict__["_failed_token_usage"] = usage
    return exc


class ModelStrategy(ScriptedStrategy):
    model = "gpt-test"


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


async def test_one_span_per_item_and_one_child_per_attempt(
    telemetry: Telemetry, fake_clock: FakeClock
) -> None:
    strategy = ScriptedStrategy({"retried": [ConnectionError("reset")]})
    processor = make_processor(fake_clock, observers=[telemetry.observer])
    result = await run_batch(processor, items(strategy, "once", "retried"), fake_clock)
    assert result.succeeded == 2
    assert len(telemetry.spans("async_batch_llm.item")) == 2
    assert len(telemetry.spans("async_batch_llm.attempt")) == 3

    (only,) = telemetry.attempts("once")
    first, second = telemetry.attempts("retried")
    item = telemetry.item("retried")
    assert _context(first).trace_id == _context(item).trace_id
    assert item.kind is SpanKind.INTERNAL
    assert first.kind is SpanKind.CLIENT
    assert attrs(item)["async_batch_llm.item.attempts"] == 2
    assert attrs(item)["async_batch_llm.item.outcome"] == "success"
    assert item.status.status_code is StatusCode.UNSET
    assert only.status.status_code is StatusCode.UNSET
    assert first.status.status_code is StatusCode.ERROR
    assert attrs(first)["error.type"] == "ConnectionError"
    assert attrs(first)["async_batch_llm.attempt.retryable"] is True
    assert second.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(second)
    # The attempts lie inside their item, one after the other.
    times = [(span.start_time or 0, span.end_time or 0) for span in (item, first, second)]
    (item_start, item_end), (first_start, first_end), (second_start, second_end) = times
    assert 0 < item_start <= first_start <= first_end <= second_start <= second_end <= item_end
    assert telemetry.open.started == telemetry.open.ended == 5


async def test_token_attributes_equal_the_results_token_usage(
    telemetry: Telemetry, fake_clock: FakeClock
) -> None:
    failed_usage: TokenUsage = {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
    strategy = ModelStrategy(
        {"a": [with_failed_usage(ConnectionError("cut"), failed_usage)]},
        usage={"input_tokens": 30, "output_tokens": 12, "total_tokens": 42},
    )
    processor = make_processor(fake_clock, observers=[telemetry.observer])
    result = await run_batch(processor, items(strategy, "a", "b"), fake_clock)
    for item_result in result.results:
        span = telemetry.item(item_result.item_id)
        usage = item_result.token_usage
        assert attrs(span)["gen_ai.usage.input_tokens"] == usage["input_tokens"]
        assert attrs(span)["gen_ai.usage.output_tokens"] == usage["output_tokens"]
        assert attrs(span)["gen_ai.request.model"] == "gpt-test"
    assert result.results[0].token_usage["input_tokens"] == 37  # both attempts counted
    first, second = telemetry.attempts("a")
    assert (
        attrs(first)["gen_ai.usage.input_tokens"],
        attrs(first)["gen_ai.usage.output_tokens"],
    ) == (
        7,
        2,
    )
    assert (
        attrs(second)["gen_ai.usage.input_tokens"],
        attrs(second)["gen_ai.usage.output_tokens"],
    ) == (30, 12)
    assert attrs(second)["gen_ai.request.model"] == "gpt-test"


async def test_model_attribute_is_omitted_when_the_strategy_names_none(
    telemetry: Telemetry,
) -> None:
    await run_batch(make_processor(observers=[telemetry.observer]), items(ScriptedStrategy(), "a"))
    assert "gen_ai.request.model" not in attrs(telemetry.item("a"))
    assert "gen_ai.request.model" not in attrs(telemetry.attempts("a")[0])


@pytest.mark.parametrize(
    ("script", "attempts", "error_type"),
    [
        ([ValueError("bad input")], 1, "ValueError"),
        ([ConnectionError("reset")] * 3, 3, "ConnectionError"),
    ],
    ids=["non-retryable", "retries-exhausted"],
)
async def test_a_failed_item_has_error_status_and_type(
    telemetry: Telemetry,
    fake_clock: FakeClock,
    script: list[BaseException],
    attempts: int,
    error_type: str,
) -> None:
    strategy = ScriptedStrategy({"a": script})
    processor = make_processor(fake_clock, observers=[telemetry.observer])
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.failed == 1
    item = telemetry.item("a")
    assert item.status.status_code is StatusCode.ERROR
    assert item.status.description == error_type
    assert attrs(item)["error.type"] == error_type
    assert attrs(item)["async_batch_llm.item.outcome"] == "failure"
    children = telemetry.attempts("a")
    assert len(children) == attempts
    assert all(child.status.status_code is StatusCode.ERROR for child in children)
    assert [attrs(child)["error.type"] for child in children] == [error_type] * attempts
    assert telemetry.total("async_batch_llm.items", **{"async_batch_llm.outcome": "failure"}) == 1
    assert (
        telemetry.total("async_batch_llm.attempts", **{"async_batch_llm.outcome": "failure"})
        == attempts
    )


async def test_a_failure_before_any_attempt_still_gets_its_item_span(
    telemetry: Telemetry,
) -> None:
    class BrokenPrepare(ScriptedStrategy):
        async def prepare(self) -> None:
            raise RuntimeError("no credentials")

    result = await run_batch(
        make_processor(observers=[telemetry.observer]), items(BrokenPrepare(), "a")
    )
    assert result.failed == 1
    item = telemetry.item("a")
    assert attrs(item)["error.type"] == "RuntimeError"
    assert attrs(item)["async_batch_llm.item.attempts"] == 0
    assert telemetry.attempts("a") == []


async def test_metrics_count_items_attempts_tokens_rate_limits_and_cooldowns(
    telemetry: Telemetry, fake_clock: FakeClock
) -> None:
    strategy = ModelStrategy({"limited": [RateLimitError()], "bad": [ValueError("no")]})
    config = make_config(rate_cooldown_seconds=8.0)
    processor = make_processor(fake_clock, config=config, observers=[telemetry.observer])
    result = await run_batch(processor, items(strategy, "ok", "limited", "bad"), fake_clock)
    assert (result.succeeded, result.failed) == (2, 1)
    outcome = "async_batch_llm.outcome"
    assert telemetry.total("async_batch_llm.items", **{outcome: "success"}) == 2
    assert telemetry.total("async_batch_llm.items", **{outcome: "failure"}) == 1
    assert telemetry.total("async_batch_llm.attempts", **{outcome: "success"}) == 2
    assert telemetry.total("async_batch_llm.attempts", **{outcome: "failure"}) == 2
    assert telemetry.total("async_batch_llm.attempts", **{"error.type": "RateLimitError"}) == 1
    model = {"gen_ai.request.model": "gpt-test"}
    assert telemetry.total("async_batch_llm.tokens", **model, **{"gen_ai.token.type": "input"}) == (
        sum(r.token_usage.get("input_tokens", 0) for r in result.results)
    )
    assert telemetry.total("async_batch_llm.tokens", **{"gen_ai.token.type": "output"}) == (
        2 * USAGE["output_tokens"]
    )
    assert telemetry.total("async_batch_llm.rate_limits") == 1
    assert telemetry.total("async_batch_llm.cooldown.time") == 8.0
    durations: list[HistogramDataPoint] = telemetry.points("gen_ai.client.operation.duration")
    assert sum(point.count for point in durations) == 4  # one per attempt
    usage_points: list[HistogramDataPoint] = telemetry.points("gen_ai.client.token.usage")
    assert sum(point.count for point in usage_points) == 8  # input and output per attempt


async def test_admission_wait_is_recorded_per_item(
    telemetry: Telemetry, fake_clock: FakeClock
) -> None:
    recorder = EventRecorder()
    config = make_config(max_requests_per_minute=60)
    processor = make_processor(fake_clock, config=config, observers=[telemetry.observer, recorder])
    await run_batch(processor, items(ScriptedStrategy(), "a", "b", "c"), fake_clock)
    waits = {d["item_id"]: d["admission_wait"] for d in recorder.of(E.ITEM_COMPLETED)}
    assert sum(waits.values()) > 0  # the limit made some item wait
    for item_id, wait in waits.items():
        assert attrs(telemetry.item(item_id))["async_batch_llm.admission.wait"] == wait
    (point,) = telemetry.points("async_batch_llm.admission.wait")
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 3
    assert point.sum == pytest.approx(sum(waits.values()))


async def test_cost_in_the_event_data_is_recorded(telemetry: Telemetry) -> None:
    observer = telemetry.observer
    await observer.on_event(E.ITEM_STARTED, {"item_id": "a", "worker_id": 0})
    await observer.on_event(
        E.ITEM_COMPLETED,
        {
            "item_id": "a",
            "duration": 0.0,
            "tokens": 3,
            "input_tokens": 2,
            "output_tokens": 1,
            "cost": 0.25,
        },
    )
    await observer.on_event(E.ITEM_STARTED, {"item_id": "b", "worker_id": 0})
    await observer.on_event(E.ITEM_FAILED, {"item_id": "b", "error_type": "X", "cost": 0.5})
    assert attrs(telemetry.item("a"))["async_batch_llm.cost"] == 0.25
    assert telemetry.total("async_batch_llm.cost") == 0.75


async def test_cost_metric_is_absent_when_events_carry_no_cost(telemetry: Telemetry) -> None:
    await run_batch(make_processor(observers=[telemetry.observer]), items(ScriptedStrategy(), "a"))
    assert "async_batch_llm.cost" not in attrs(telemetry.item("a"))
    assert telemetry.points("async_batch_llm.cost") == []


async def test_item_spans_are_children_of_the_callers_span(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    processor = make_processor(observers=[telemetry.observer])
    await add_all(processor, items(ScriptedStrategy(), "a", "b"))
    with tracer.start_as_current_span("nightly job") as job:
        await processor.process_all()
    for item_id in ("a", "b"):
        parent = telemetry.item(item_id).parent
        assert parent is not None
        assert parent.span_id == job.get_span_context().span_id


async def test_two_batches_sharing_the_observer_keep_their_items_apart(
    telemetry: Telemetry,
) -> None:
    class ParseError(Exception):
        """Validation-like: retried at once, without a backoff wait."""

    gate = asyncio.Event()  # both batches' first calls are in flight at once
    first = ScriptedStrategy({"a": [ParseError("x")]}, gate=gate)
    second = ScriptedStrategy(gate=gate)

    async def run(strategy: ScriptedStrategy) -> None:
        processor = make_processor(observers=[telemetry.observer])
        await run_batch(processor, items(strategy, "a"))

    runs = asyncio.gather(run(first), run(second))
    await wait_all_tasks_blocked()
    assert (len(first.calls), len(second.calls)) == (1, 1)
    gate.set()
    await runs
    both = telemetry.spans("async_batch_llm.item")
    assert sorted(attrs(span)["async_batch_llm.item.attempts"] for span in both) == [1, 2]
    assert all(attrs(span)["async_batch_llm.item.outcome"] == "success" for span in both)
    assert telemetry.open.started == telemetry.open.ended == 5


async def test_a_middleware_skip_ends_its_item_as_skipped(telemetry: Telemetry) -> None:
    class SkipAll(BaseMiddleware[str, str, Any]):
        async def before_process(
            self, work_item: LLMWorkItem[str, str, Any]
        ) -> LLMWorkItem[str, str, Any] | None:
            return None

    processor = make_processor(observers=[telemetry.observer], middlewares=[SkipAll()])
    result = await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert result.results[0].error == "Skipped by middleware"
    item = telemetry.item("a")
    assert attrs(item)["async_batch_llm.item.outcome"] == "skipped"
    assert item.status.status_code is StatusCode.UNSET
    (attempt,) = telemetry.attempts("a")
    assert attrs(attempt)["error.type"] == "SkippedByMiddleware"
    assert telemetry.open.started == telemetry.open.ended


async def test_no_span_is_left_open_after_a_cancelled_batch(telemetry: Telemetry) -> None:
    gate = asyncio.Event()  # never set: every call hangs until cancelled
    strategy = ScriptedStrategy(gate=gate)
    processor = make_processor(config=make_config(max_workers=3), observers=[telemetry.observer])
    await add_all(processor, items(strategy, "a", "b", "c", "d"))
    task = asyncio.create_task(processor.process_all())
    await wait_all_tasks_blocked()
    assert len(strategy.calls) == 3
    assert (telemetry.open.started, telemetry.open.ended) == (6, 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert telemetry.open.started == telemetry.open.ended == 6
    for item_id in ("a", "b", "c"):
        item = telemetry.item(item_id)
        assert attrs(item)["async_batch_llm.item.outcome"] == "aborted"
        assert attrs(item)["error.type"] == "CancelledError"
        assert item.status.status_code is StatusCode.ERROR
        (attempt,) = telemetry.attempts(item_id)
        assert attempt.status.status_code is StatusCode.ERROR
    assert telemetry.total("async_batch_llm.items", **{"async_batch_llm.outcome": "aborted"}) == 3


async def test_replayed_items_get_a_span_without_attempts(
    telemetry: Telemetry, tmp_path: Any
) -> None:
    from async_batch_llm.artifacts import ResumePolicy, SqliteArtifactStore

    path = tmp_path / "run.db"
    with SqliteArtifactStore(path) as store:
        processor = make_processor(artifact_store=store)
        await run_batch(processor, items(ScriptedStrategy(), "a"))
    with SqliteArtifactStore(path) as store:
        processor = make_processor(
            artifact_store=store,
            resume=ResumePolicy.REUSE_SUCCESSES,
            observers=[telemetry.observer],
        )
        result = await run_batch(processor, items(ScriptedStrategy(), "a"))
    assert result.results[0].replayed_from_artifact
    item = telemetry.item("a")
    assert attrs(item)["async_batch_llm.item.replayed"] is True
    assert attrs(item)["async_batch_llm.item.attempts"] == 0
    assert telemetry.attempts("a") == []


class BrokenTracerProvider(TracerProvider):
    """A provider whose spans cannot even start."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        tracer = super().get_tracer(*args, **kwargs)

        def start_span(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter exploded")

        tracer.start_span = start_span  # type: ignore[method-assign]
        return tracer


async def test_an_observer_fault_never_breaks_the_batch(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    observer = OpenTelemetryObserver(tracer_provider=BrokenTracerProvider())
    recorder = EventRecorder()
    strategy = ScriptedStrategy({"b": [ConnectionError("reset")], "c": [ValueError("bad")]})
    processor = make_processor(fake_clock, observers=[observer, recorder])
    with caplog.at_level(logging.ERROR, logger="async_batch_llm.parallel"):
        result = await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert [(r.item_id, r.success) for r in result.results] == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]
    assert len(recorder.of(E.BATCH_COMPLETED)) == 1  # later observers got every event
    assert "exporter exploded" in caplog.text


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_the_library_does_not_import_opentelemetry() -> None:
    done = _run_python(
        """
        import sys
        import async_batch_llm
        from async_batch_llm.observers import OpenTelemetryObserver
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print(loaded)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_extra_the_observer_says_what_to_install() -> None:
    done = _run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        from async_batch_llm.observers import OpenTelemetryObserver
        try:
            OpenTelemetryObserver()
        except ImportError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'async-batch-llm[otel]'" in done.stdout


async def test_hot_path_is_untouched_without_observers(fake_clock: FakeClock) -> None:
    # No observer: nothing is built for ATTEMPT_FAILED (the strategy's model is never read).
    class CountingModel(ScriptedStrategy):
        reads = 0

        @property
        def model(self) -> str:
            CountingModel.reads += 1
            return "m"

    strategy = CountingModel({"a": [ConnectionError("x")]})
    await run_batch(make_processor(fake_clock), items(strategy, "a", "b"), fake_clock)
    assert CountingModel.reads == 0


async def test_leaving_a_stream_early_leaves_no_span_open(telemetry: Telemetry) -> None:
    from async_batch_llm import process_stream

    class Slow(ScriptedStrategy):
        """Every call after the first three waits until cancelled."""

        def __init__(self) -> None:
            super().__init__()
            self.never = asyncio.Event()

        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> tuple[str, TokenUsage]:
            if len(self.calls) >= 3:
                await self.never.wait()
            return await super().execute(prompt, attempt, timeout, state)

    prompts = [f"p{i}" for i in range(20)]
    done = 0
    stream = process_stream(
        Slow(), prompts, config=make_config(max_workers=4), observers=[telemetry.observer]
    )
    async with stream:
        async for result in stream:
            done += result.success
            if done == 2:
                break
    assert telemetry.open.started == telemetry.open.ended > 0
    outcomes = {
        attrs(s)["async_batch_llm.item.outcome"] for s in telemetry.spans("async_batch_llm.item")
    }
    assert "aborted" in outcomes


async def test_item_cost_from_the_guardrails_cost_function(
    telemetry: Telemetry, fake_clock: FakeClock
) -> None:
    from async_batch_llm import GuardrailConfig

    def price(model: str, usage: TokenUsage) -> float:
        return usage.get("total_tokens", 0) / 1000  # $1 per 1,000 tokens

    failed_usage: TokenUsage = {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}
    strategy = ScriptedStrategy(
        {
            "retried": [with_failed_usage(ConnectionError("cut"), failed_usage)],
            "bad": [ValueError("no")],
        }
    )
    config = make_config(guardrails=GuardrailConfig(cost_function=price))
    processor = make_processor(fake_clock, config=config, observers=[telemetry.observer])
    result = await run_batch(processor, items(strategy, "ok", "retried", "bad"), fake_clock)
    assert result.total_cost is not None
    assert result.total_cost > 0
    for item_result in result.results:
        assert attrs(telemetry.item(item_result.item_id))["async_batch_llm.cost"] == pytest.approx(
            item_result.cost
        )
    assert telemetry.total("async_batch_llm.cost") == pytest.approx(result.total_cost)


async def test_an_attempt_cut_by_the_item_deadline_is_closed_with_its_item(
    telemetry: Telemetry, fake_clock: FakeClock
) -> None:
    from async_batch_llm import GuardrailConfig

    strategy = ScriptedStrategy(clock=fake_clock, latency=10.0)
    config = make_config(guardrails=GuardrailConfig(total_timeout_per_item=5.0))
    processor = make_processor(fake_clock, config=config, observers=[telemetry.observer])
    result = await run_batch(processor, items(strategy, "slow"), fake_clock)
    assert result.failed == 1
    assert result.results[0].error is not None
    error_type = result.results[0].error.split(":", 1)[0]
    item = telemetry.item("slow")
    assert attrs(item)["error.type"] == error_type
    (attempt,) = telemetry.attempts("slow")
    assert attempt.status.status_code is StatusCode.ERROR
    assert attrs(attempt)["error.type"] == error_type
    assert telemetry.open.started == telemetry.open.ended == 2
