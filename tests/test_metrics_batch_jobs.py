"""MetricsObserver counts provider batch jobs from the ``ExtendedEvent.BATCH_JOB_*`` events; what
it reported in 0.6.0 stays exactly as it was."""

from __future__ import annotations

import json
from typing import Any

from async_batch_llm.observers import ExtendedEvent, MetricsObserver, ProcessingEvent
from tests.conftest import ScriptedStrategy, items, make_config, make_processor, run_batch
from tests.test_prometheus_export import EMPTY_EXPORT, parse

X = ExtendedEvent
JOB_KEYS = [
    "batch_jobs_submitted",
    "batch_jobs_completed",
    "batch_jobs_in_progress",
    "batch_lines_succeeded",
    "batch_lines_failed",
    "batch_lines_expired",
]


def job(job_id: str, state: str, requests: int, completed: int = 0, failed: int = 0) -> Any:
    """A ``BATCH_JOB_*`` payload, as the processor sends it."""
    return {
        "job_id": job_id,
        "provider": "openai",
        "requests": requests,
        "state": state,
        "completed": completed,
        "failed": failed,
    }


async def send(observer: MetricsObserver, event: ExtendedEvent, data: dict[str, Any]) -> None:
    """Deliver an extended event as the processor does (``on_event`` keeps 0.6.0's annotation)."""
    receiver: Any = observer
    await receiver.on_event(event, data)


async def fed(events: list[tuple[ExtendedEvent, dict[str, Any]]]) -> MetricsObserver:
    observer = MetricsObserver()
    for event, data in events:
        await send(observer, event, data)
    return observer


async def batch_figures(observer: MetricsObserver) -> dict[str, Any]:
    snapshot = await observer.get_metrics()
    return {key: snapshot[key] for key in JOB_KEYS}


async def test_jobs_are_counted_by_final_state_and_their_lines_by_outcome() -> None:
    observer = await fed(
        [
            (X.BATCH_JOB_SUBMITTED, job("b1", "validating", 10)),
            (X.BATCH_JOB_SUBMITTED, job("b2", "validating", 10)),
            (X.BATCH_JOB_SUBMITTED, job("b3", "validating", 3)),
            (X.BATCH_JOB_PROGRESS, job("b1", "in_progress", 10, 4)),
            (X.BATCH_JOB_COMPLETED, job("b1", "completed", 10, 9, 1)),
            (X.BATCH_JOB_COMPLETED, job("b2", "expired", 10, 4)),  # 6 lines never ran
            (X.BATCH_JOB_COMPLETED, job("b3", "failed", 3)),  # validation: every line failed
            (X.BATCH_JOB_SUBMITTED, job("b4", "validating", 8)),
        ]
    )
    assert await batch_figures(observer) == {
        "batch_jobs_submitted": 4,
        "batch_jobs_completed": {"completed": 1, "expired": 1, "failed": 1},
        "batch_jobs_in_progress": 1,
        "batch_lines_succeeded": 13,
        "batch_lines_failed": 4,
        "batch_lines_expired": 6,
    }


async def test_a_cancelled_jobs_unrun_lines_are_expired_ones() -> None:
    observer = await fed(
        [
            (X.BATCH_JOB_SUBMITTED, job("b1", "validating", 5)),
            (X.BATCH_JOB_COMPLETED, job("b1", "cancelled", 5, 2, 1)),
        ]
    )
    figures = await batch_figures(observer)
    assert figures["batch_jobs_completed"] == {"cancelled": 1}
    assert (figures["batch_lines_succeeded"], figures["batch_lines_failed"]) == (2, 1)
    assert figures["batch_lines_expired"] == 2


async def test_a_job_polled_after_a_resume_is_in_progress_until_it_ends() -> None:
    # The resumed run did not submit it: no BATCH_JOB_SUBMITTED, only its progress and end.
    observer = await fed([(X.BATCH_JOB_PROGRESS, job("old", "in_progress", 4, 1))])
    figures = await batch_figures(observer)
    assert figures["batch_jobs_submitted"] == 0
    assert figures["batch_jobs_in_progress"] == 1
    await send(observer, X.BATCH_JOB_PROGRESS, job("old", "finalizing", 4, 4))
    assert (await batch_figures(observer))["batch_jobs_in_progress"] == 1
    await send(observer, X.BATCH_JOB_COMPLETED, job("old", "completed", 4, 4))
    figures = await batch_figures(observer)
    assert figures["batch_jobs_in_progress"] == 0
    assert figures["batch_lines_succeeded"] == 4


async def test_the_job_keys_follow_the_060_keys_only_once_a_job_was_seen() -> None:
    observer = MetricsObserver()
    await observer.on_event(ProcessingEvent.ITEM_COMPLETED, {"item_id": "a", "duration": 1.0})
    plain = await observer.get_metrics()
    assert not set(JOB_KEYS) & set(plain)
    await send(observer, X.BATCH_JOB_SUBMITTED, job("b1", "validating", 1))
    snapshot = await observer.get_metrics()
    assert list(snapshot) == [*plain, *JOB_KEYS]
    assert {k: snapshot[k] for k in plain} == plain
    exported = json.loads(await observer.export_json())
    assert exported["batch_jobs_submitted"] == 1
    assert exported["batch_jobs_completed"] == {}


async def test_other_extended_events_leave_the_060_snapshot_and_export_unchanged() -> None:
    observer = MetricsObserver()
    before = await observer.get_metrics()
    await send(
        observer,
        X.ATTEMPT_FAILED,
        {"item_id": "a", "attempt": 1, "error_type": "ValueError", "retryable": True},
    )
    await send(
        observer, X.BATCH_ABORTED, {"processed": 0, "total": 1, "duration": 0.1, "error_type": "X"}
    )
    assert await observer.get_metrics() == before
    assert observer.metrics["items_failed"] == 0
    assert await observer.export_prometheus() == EMPTY_EXPORT


async def test_reset_forgets_the_jobs() -> None:
    observer = await fed([(X.BATCH_JOB_SUBMITTED, job("b1", "validating", 1))])
    observer.reset()
    assert not set(JOB_KEYS) & set(await observer.get_metrics())
    assert await observer.export_prometheus() == EMPTY_EXPORT


async def test_prometheus_job_families_exact_text_after_the_060_text() -> None:
    observer = await fed(
        [
            (X.BATCH_JOB_SUBMITTED, job("b1", "validating", 10)),
            (X.BATCH_JOB_SUBMITTED, job("b2", "validating", 6)),
            (X.BATCH_JOB_COMPLETED, job("b1", "expired", 10, 3, 1)),
        ]
    )
    text = await observer.export_prometheus()
    assert text.startswith(EMPTY_EXPORT)
    assert text[len(EMPTY_EXPORT) :] == (
        "\n"
        "# HELP async_batch_llm_batch_jobs_submitted_total Provider batch jobs submitted\n"
        "# TYPE async_batch_llm_batch_jobs_submitted_total counter\n"
        "async_batch_llm_batch_jobs_submitted_total 2\n"
        "\n"
        "# HELP async_batch_llm_batch_jobs_completed_total Provider batch jobs that ended, "
        "by final state\n"
        "# TYPE async_batch_llm_batch_jobs_completed_total counter\n"
        'async_batch_llm_batch_jobs_completed_total{state="expired"} 1\n'
        "\n"
        "# HELP async_batch_llm_batch_jobs_in_progress Provider batch jobs submitted and not "
        "yet ended\n"
        "# TYPE async_batch_llm_batch_jobs_in_progress gauge\n"
        "async_batch_llm_batch_jobs_in_progress 1\n"
        "\n"
        "# HELP async_batch_llm_batch_lines_total Request lines of ended provider batch jobs, "
        "by outcome\n"
        "# TYPE async_batch_llm_batch_lines_total counter\n"
        'async_batch_llm_batch_lines_total{outcome="succeeded"} 3\n'
        'async_batch_llm_batch_lines_total{outcome="failed"} 1\n'
        'async_batch_llm_batch_lines_total{outcome="expired"} 6\n'
    )
    families = parse(text)
    assert families["async_batch_llm_batch_jobs_submitted"][0] == "counter"
    assert families["async_batch_llm_batch_jobs_completed"][2] == [
        ("async_batch_llm_batch_jobs_completed_total", {"state": "expired"}, 1.0)
    ]
    assert families["async_batch_llm_batch_jobs_in_progress"] == (
        "gauge",
        "Provider batch jobs submitted and not yet ended",
        [("async_batch_llm_batch_jobs_in_progress", {}, 1.0)],
    )
    assert [(s[1]["outcome"], s[2]) for s in families["async_batch_llm_batch_lines"][2]] == [
        ("succeeded", 3.0),
        ("failed", 1.0),
        ("expired", 6.0),
    ]


async def test_no_ended_job_no_state_family() -> None:
    observer = await fed([(X.BATCH_JOB_SUBMITTED, job("b1", "validating", 2))])
    text = await observer.export_prometheus()
    assert "async_batch_llm_batch_jobs_submitted_total 1\n" in text
    assert "batch_jobs_completed_total" not in text
    assert 'async_batch_llm_batch_lines_total{outcome="succeeded"} 0\n' in text


class Legacy(MetricsObserver):
    """A subclass written for 0.6.0: it handles events itself."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        self.seen.append(event)
        await super().on_event(event, data)


class OptedIn(Legacy):
    extended_events = True


class Plain(MetricsObserver):
    """A subclass that does not touch on_event."""


def test_metrics_observer_opts_in_and_a_060_subclass_overriding_on_event_does_not() -> None:
    assert MetricsObserver.extended_events is True
    assert Plain.extended_events is True
    assert Legacy.extended_events is False
    assert OptedIn.extended_events is True


async def test_a_060_subclass_keeps_receiving_only_the_060_events() -> None:
    strategy = ScriptedStrategy({"flaky": [ConnectionError("once")]})
    legacy, opted = Legacy(), OptedIn()
    processor = make_processor(
        config=make_config(retry_initial_wait=0.001, retry_max_wait=0.001),
        observers=[legacy, opted],
    )
    async with processor:
        result = await run_batch(processor, items(strategy, "flaky", "fine"))
    assert result.succeeded == 2
    assert legacy.seen
    assert all(type(event) is ProcessingEvent for event in legacy.seen)
    assert X.ATTEMPT_FAILED in opted.seen  # the retried attempt
    assert [e for e in opted.seen if type(e) is ProcessingEvent] == legacy.seen
    # The extended event changed none of the counters.
    assert await opted.get_metrics() == await legacy.get_metrics()
    assert (await legacy.get_metrics())["items_succeeded"] == 2
