"""ProcessingEvent, the observer base classes and MetricsObserver's counters and exports."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import async_batch_llm.observers as observers_pkg
from async_batch_llm.observers import (
    BaseObserver,
    MetricsObserver,
    ProcessingEvent,
    ProcessorObserver,
)
from async_batch_llm.observers import base as observers_base
from async_batch_llm.observers import metrics as observers_metrics

E = ProcessingEvent

INITIAL_METRICS: dict[str, Any] = {
    "items_processed": 0,
    "items_succeeded": 0,
    "items_failed": 0,
    "rate_limits_hit": 0,
    "total_cooldown_time": 0.0,
    "processing_times": [],
    "error_counts": {},
    "processing_times_count": 0,
    "processing_times_sum": 0.0,
}

GET_METRICS_KEYS = [
    "items_processed",
    "items_succeeded",
    "items_failed",
    "rate_limits_hit",
    "total_cooldown_time",
    "error_counts",
    "processing_times_count",
    "processing_times_sum",
    "processing_times",
    "avg_processing_time",
    "success_rate",
]


async def feed(
    observer: ProcessorObserver, *events: tuple[ProcessingEvent, dict[str, Any]]
) -> None:
    for event, data in events:
        await observer.on_event(event, data)


def test_module_exports() -> None:
    assert observers_pkg.__all__ == [
        "BaseObserver",
        "ExtendedEvent",
        "MetricsObserver",
        "OpenTelemetryObserver",
        "ProcessingEvent",
        "ProcessorObserver",
        "RichProgressObserver",
    ]
    assert observers_base.__all__ == [
        "BaseObserver",
        "ExtendedEvent",
        "ProcessingEvent",
        "ProcessorObserver",
    ]
    assert observers_metrics.__all__ == ["MetricsObserver"]
    assert observers_base.ProcessingEvent is ProcessingEvent
    assert observers_metrics.MetricsObserver is MetricsObserver


def test_processing_event_members_values_and_order() -> None:
    assert [(e.name, e.value) for e in ProcessingEvent] == [
        ("ITEM_STARTED", "item_started"),
        ("ITEM_COMPLETED", "item_completed"),
        ("ITEM_FAILED", "item_failed"),
        ("RATE_LIMIT_HIT", "rate_limit_hit"),
        ("COOLDOWN_STARTED", "cooldown_started"),
        ("COOLDOWN_ENDED", "cooldown_ended"),
        ("WORKER_STARTED", "worker_started"),
        ("WORKER_STOPPED", "worker_stopped"),
        ("BATCH_STARTED", "batch_started"),
        ("BATCH_COMPLETED", "batch_completed"),
    ]


def test_events_added_after_0_6_0_are_a_separate_enum_only_observers_opt_into() -> None:
    from async_batch_llm.observers import BaseObserver, ExtendedEvent, OpenTelemetryObserver

    assert [(e.name, e.value) for e in ExtendedEvent] == [
        ("ATTEMPT_FAILED", "attempt_failed"),
        ("BATCH_ABORTED", "batch_aborted"),
        ("BATCH_JOB_SUBMITTED", "batch_job_submitted"),
        ("BATCH_JOB_PROGRESS", "batch_job_progress"),
        ("BATCH_JOB_COMPLETED", "batch_job_completed"),
    ]
    assert BaseObserver.extended_events is False
    assert OpenTelemetryObserver.extended_events is True


def test_processing_event_is_a_plain_enum_not_a_str() -> None:
    member: object = E.ITEM_STARTED
    assert not isinstance(member, str)
    assert member != "item_started"
    assert E("item_failed") is E.ITEM_FAILED


def test_processor_observer_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProcessorObserver()  # type: ignore[abstract]


async def test_processor_observer_subclass_implementing_on_event_works() -> None:
    seen: list[tuple[ProcessingEvent, dict[str, Any]]] = []

    class Recorder(ProcessorObserver):
        async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
            seen.append((event, data))

    await Recorder().on_event(E.BATCH_STARTED, {"total": 1})
    assert seen == [(E.BATCH_STARTED, {"total": 1})]


async def test_base_observer_ignores_every_event() -> None:
    observer = BaseObserver()
    assert isinstance(observer, ProcessorObserver)
    for event in ProcessingEvent:
        data: dict[str, Any] = {"item_id": "a"}
        await observer.on_event(event, data)
        assert data == {"item_id": "a"}


def test_metrics_observer_starts_with_initial_metrics() -> None:
    observer = MetricsObserver()
    assert isinstance(observer, BaseObserver)
    assert observer.metrics == INITIAL_METRICS
    assert list(observer.metrics) == list(INITIAL_METRICS)
    assert isinstance(observer.metrics["total_cooldown_time"], float)
    assert isinstance(observer.metrics["processing_times_sum"], float)


@pytest.mark.parametrize("value", [0, -1, -100], ids=["zero", "minus-one", "minus-hundred"])
def test_max_processing_samples_must_be_positive(value: int) -> None:
    with pytest.raises(ValueError, match=r"^max_processing_samples must be positive$"):
        MetricsObserver(max_processing_samples=value)


def test_max_processing_samples_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        MetricsObserver(5)  # type: ignore[call-arg]


async def test_item_completed_counts_success_and_records_duration() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "duration": 1.5, "tokens": 30})
    m = observer.metrics
    assert m["items_processed"] == 1
    assert m["items_succeeded"] == 1
    assert m["items_failed"] == 0
    assert m["processing_times_count"] == 1
    assert m["processing_times_sum"] == 1.5
    assert m["processing_times"] == []  # samples are kept outside this dict
    assert (await observer.get_metrics())["processing_times"] == [1.5]


async def test_item_completed_without_duration_counts_but_records_no_sample() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a"})
    snapshot = await observer.get_metrics()
    assert snapshot["items_processed"] == 1
    assert snapshot["items_succeeded"] == 1
    assert snapshot["processing_times_count"] == 0
    assert snapshot["processing_times_sum"] == 0.0
    assert snapshot["processing_times"] == []
    assert snapshot["avg_processing_time"] == 0


async def test_item_failed_counts_failure_by_error_type() -> None:
    observer = MetricsObserver()
    await feed(
        observer,
        (E.ITEM_FAILED, {"item_id": "a", "error_type": "ValueError"}),
        (E.ITEM_FAILED, {"item_id": "b", "error_type": "ValueError"}),
        (E.ITEM_FAILED, {"item_id": "c", "error_type": "KeyError"}),
        (E.ITEM_FAILED, {"item_id": "d"}),
    )
    m = observer.metrics
    assert m["items_processed"] == 4
    assert m["items_failed"] == 4
    assert m["items_succeeded"] == 0
    assert m["error_counts"] == {"ValueError": 2, "KeyError": 1}
    assert list(m["error_counts"]) == ["ValueError", "KeyError"]


async def test_rate_limit_hit_counts() -> None:
    observer = MetricsObserver()
    await feed(observer, *[(E.RATE_LIMIT_HIT, {"item_id": "a", "worker_id": 0})] * 3)
    assert observer.metrics["rate_limits_hit"] == 3
    assert observer.metrics["items_processed"] == 0


async def test_cooldown_ended_adds_actual_duration() -> None:
    observer = MetricsObserver()
    await feed(
        observer,
        (E.COOLDOWN_ENDED, {"duration": 60.0}),
        (E.COOLDOWN_ENDED, {"duration": 0.5, "error": "boom"}),
        (E.COOLDOWN_ENDED, {}),
    )
    assert observer.metrics["total_cooldown_time"] == 60.5


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (E.ITEM_STARTED, {"item_id": "a", "worker_id": 0}),
        (E.COOLDOWN_STARTED, {"worker_id": 0, "duration": 60.0, "consecutive": 1}),
        (E.WORKER_STARTED, {"worker_id": 0}),
        (E.WORKER_STOPPED, {"worker_id": 0}),
        (E.BATCH_STARTED, {"total": 3, "max_workers": 2, "start_time": 0.0}),
        (
            E.BATCH_COMPLETED,
            {
                "processed": 3,
                "succeeded": 2,
                "failed": 1,
                "total": 3,
                "total_tokens": 90,
                "cached_input_tokens": 0,
                "duration": 2.0,
            },
        ),
    ],
    ids=lambda value: value.name if isinstance(value, ProcessingEvent) else "",
)
async def test_other_events_change_nothing(event: ProcessingEvent, data: dict[str, Any]) -> None:
    observer = MetricsObserver()
    await observer.on_event(event, data)
    assert observer.metrics == INITIAL_METRICS


async def test_samples_are_bounded_newest_last_while_sum_and_count_cover_all() -> None:
    observer = MetricsObserver(max_processing_samples=3)
    for duration in [1.0, 2.0, 3.0, 4.0, 5.0]:
        await observer.on_event(E.ITEM_COMPLETED, {"item_id": "x", "duration": duration})
    snapshot = await observer.get_metrics()
    assert snapshot["processing_times"] == [3.0, 4.0, 5.0]
    assert snapshot["processing_times_count"] == 5
    assert snapshot["processing_times_sum"] == 15.0
    assert snapshot["avg_processing_time"] == 3.0  # over all five, not the three kept


async def test_default_keeps_one_hundred_samples() -> None:
    observer = MetricsObserver()
    for i in range(150):
        await observer.on_event(E.ITEM_COMPLETED, {"item_id": "x", "duration": float(i)})
    samples = (await observer.get_metrics())["processing_times"]
    assert samples == [float(i) for i in range(50, 150)]


async def test_get_metrics_key_order_and_values() -> None:
    observer = MetricsObserver()
    await feed(
        observer,
        (E.ITEM_COMPLETED, {"item_id": "a", "duration": 1.0, "tokens": 30}),
        (E.ITEM_COMPLETED, {"item_id": "b", "duration": 2.0, "tokens": 30}),
        (E.ITEM_FAILED, {"item_id": "c", "error_type": "ValueError"}),
        (E.RATE_LIMIT_HIT, {"item_id": "d", "worker_id": 1}),
        (E.COOLDOWN_ENDED, {"duration": 30.0}),
    )
    snapshot = await observer.get_metrics()
    assert list(snapshot) == GET_METRICS_KEYS
    assert snapshot == {
        "items_processed": 3,
        "items_succeeded": 2,
        "items_failed": 1,
        "rate_limits_hit": 1,
        "total_cooldown_time": 30.0,
        "error_counts": {"ValueError": 1},
        "processing_times_count": 2,
        "processing_times_sum": 3.0,
        "processing_times": [1.0, 2.0],
        "avg_processing_time": 1.5,
        "success_rate": 2 / 3,
    }


async def test_empty_observer_uses_integer_zero_fallbacks() -> None:
    snapshot = await MetricsObserver().get_metrics()
    assert list(snapshot) == GET_METRICS_KEYS
    assert snapshot["avg_processing_time"] == 0
    assert type(snapshot["avg_processing_time"]) is int
    assert snapshot["success_rate"] == 0
    assert type(snapshot["success_rate"]) is int


async def test_success_rate_is_a_float_once_something_was_processed() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_FAILED, {"item_id": "a", "error_type": "X"})
    snapshot = await observer.get_metrics()
    assert snapshot["success_rate"] == 0.0
    assert type(snapshot["success_rate"]) is float


async def test_get_metrics_returns_copies() -> None:
    observer = MetricsObserver()
    await feed(
        observer,
        (E.ITEM_COMPLETED, {"item_id": "a", "duration": 1.0}),
        (E.ITEM_FAILED, {"item_id": "b", "error_type": "X"}),
    )
    snapshot = await observer.get_metrics()
    snapshot["error_counts"]["X"] = 99
    snapshot["processing_times"].append(42.0)
    again = await observer.get_metrics()
    assert again["error_counts"] == {"X": 1}
    assert again["processing_times"] == [1.0]


async def test_export_dict_equals_get_metrics() -> None:
    observer = MetricsObserver()
    await feed(
        observer,
        (E.ITEM_COMPLETED, {"item_id": "a", "duration": 0.25}),
        (E.ITEM_FAILED, {"item_id": "b", "error_type": "TimeoutError"}),
    )
    exported = await observer.export_dict()
    assert exported == await observer.get_metrics()
    assert list(exported) == GET_METRICS_KEYS


async def test_export_json_drops_processing_times_only() -> None:
    observer = MetricsObserver()
    await feed(
        observer,
        (E.ITEM_COMPLETED, {"item_id": "a", "duration": 0.5}),
        (E.ITEM_FAILED, {"item_id": "b", "error_type": "ValueError"}),
    )
    text = await observer.export_json()
    expected = await observer.get_metrics()
    del expected["processing_times"]
    assert text == json.dumps(expected, indent=2)
    decoded = json.loads(text)
    assert "processing_times" not in decoded
    assert list(decoded) == [key for key in GET_METRICS_KEYS if key != "processing_times"]
    assert decoded["processing_times_count"] == 1
    assert decoded["success_rate"] == 0.5


async def test_export_json_of_empty_observer() -> None:
    text = await MetricsObserver().export_json()
    assert json.loads(text) == {
        "items_processed": 0,
        "items_succeeded": 0,
        "items_failed": 0,
        "rate_limits_hit": 0,
        "total_cooldown_time": 0.0,
        "error_counts": {},
        "processing_times_count": 0,
        "processing_times_sum": 0.0,
        "avg_processing_time": 0,
        "success_rate": 0,
    }
    assert '"avg_processing_time": 0,' in text
    assert text.startswith('{\n  "items_processed": 0,')


async def test_reset_restores_initial_state() -> None:
    observer = MetricsObserver(max_processing_samples=2)
    await feed(
        observer,
        (E.ITEM_COMPLETED, {"item_id": "a", "duration": 1.0}),
        (E.ITEM_FAILED, {"item_id": "b", "error_type": "ValueError"}),
        (E.RATE_LIMIT_HIT, {"item_id": "c", "worker_id": 0}),
        (E.COOLDOWN_ENDED, {"duration": 5.0}),
    )
    observer.reset()
    assert observer.metrics == INITIAL_METRICS
    snapshot = await observer.get_metrics()
    assert snapshot["processing_times"] == []
    assert snapshot["avg_processing_time"] == 0
    # Counting resumes from zero and the sample bound is unchanged.
    for duration in [1.0, 2.0, 3.0]:
        await observer.on_event(E.ITEM_COMPLETED, {"item_id": "x", "duration": duration})
    snapshot = await observer.get_metrics()
    assert snapshot["items_processed"] == 3
    assert snapshot["processing_times"] == [2.0, 3.0]


async def test_concurrent_events_are_all_counted() -> None:
    observer = MetricsObserver()
    await asyncio.gather(
        *(
            observer.on_event(E.ITEM_COMPLETED, {"item_id": str(i), "duration": 1.0})
            for i in range(50)
        ),
        *(
            observer.on_event(E.ITEM_FAILED, {"item_id": str(i), "error_type": "X"})
            for i in range(25)
        ),
    )
    snapshot = await observer.get_metrics()
    assert snapshot["items_processed"] == 75
    assert snapshot["items_succeeded"] == 50
    assert snapshot["items_failed"] == 25
    assert snapshot["error_counts"] == {"X": 25}
    assert snapshot["processing_times_sum"] == 50.0


def test_observer_created_outside_a_loop_works_in_several_loops() -> None:
    observer = MetricsObserver()
    asyncio.run(observer.on_event(E.RATE_LIMIT_HIT, {}))
    asyncio.run(observer.on_event(E.RATE_LIMIT_HIT, {}))
    assert asyncio.run(observer.get_metrics())["rate_limits_hit"] == 2


def test_repr_shows_live_counters() -> None:
    observer = MetricsObserver(max_processing_samples=7)
    assert repr(observer) == (
        "MetricsObserver(items_processed=0, items_succeeded=0, items_failed=0, "
        "rate_limits_hit=0, max_processing_samples=7)"
    )
