"""An observer counting items, failures, rate limits, durations and provider batch jobs; JSON and
Prometheus export."""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from async_batch_llm.observers.base import BaseObserver, ExtendedEvent, ProcessingEvent

__all__ = ["MetricsObserver"]

_PROMETHEUS_PREFIX = "async_batch_llm_"

# (metric key, Prometheus type, help text), in export order.
_PROMETHEUS_METRICS: tuple[tuple[str, str, str], ...] = (
    ("items_processed", "counter", "Total items processed"),
    ("items_succeeded", "counter", "Total items succeeded"),
    ("items_failed", "counter", "Total items failed"),
    ("rate_limits_hit", "counter", "Total rate limits encountered"),
    ("avg_processing_time", "gauge", "Average processing time in seconds"),
    ("success_rate", "gauge", "Success rate (0.0 to 1.0)"),
    ("total_cooldown_time", "gauge", "Total time spent in rate limit cooldown (seconds)"),
    ("processing_times_count", "gauge", "Number of recorded processing time samples"),
)


_QUOTA_DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")


class _ScopeQuota:
    """What the item events of one quota scope said: admission waits, the gate's last snapshot."""

    __slots__ = ("limits", "used", "wait_count", "wait_total", "window")

    def __init__(self) -> None:
        self.wait_total = 0.0
        self.wait_count = 0
        self.limits: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.window = 0.0

    def record(self, data: Mapping[str, Any]) -> None:
        wait = data["admission_wait"]
        if isinstance(wait, int | float) and math.isfinite(wait):
            self.wait_total += wait
            self.wait_count += 1
        limits, used, window = (
            data.get("quota_limits"),
            data.get("quota_used"),
            data.get("quota_window"),
        )
        if isinstance(limits, Mapping) and isinstance(used, Mapping):
            self.limits = {dim: float(limits[dim]) for dim in _QUOTA_DIMENSIONS if dim in limits}
            self.used = {dim: float(used.get(dim, 0.0)) for dim in _QUOTA_DIMENSIONS}
            self.window = float(window) if isinstance(window, int | float) else 60.0

    def per_minute(self, dimension: str) -> float:
        if self.window <= 0:
            return 0.0
        return self.used.get(dimension, 0.0) * 60.0 / self.window

    def snapshot(self) -> dict[str, Any]:
        count = self.wait_count
        result: dict[str, Any] = {
            "admission_wait_total": self.wait_total,
            "admission_wait_count": count,
            "avg_admission_wait": self.wait_total / count if count else 0,
        }
        for dimension in _QUOTA_DIMENSIONS:
            result[f"{dimension}_per_minute"] = self.per_minute(dimension)
            result[f"{dimension}_per_minute_limit"] = self.limits.get(dimension)
        return result


_RAN_STATES = frozenset({"completed", "expired", "cancelled"})
"""Final job states whose unreported lines were not run (rather than failed with the job)."""


class _BatchJobs:
    """What the ``BATCH_JOB_*`` events of provider batch mode said: jobs and their lines."""

    __slots__ = ("by_state", "expired", "failed", "running", "submitted", "succeeded")

    def __init__(self) -> None:
        self.submitted = 0
        self.by_state: dict[str, int] = {}
        self.running: set[object] = set()  # ids of jobs submitted (or polled) and not ended
        self.succeeded = 0
        self.failed = 0
        self.expired = 0

    def record(self, event: ExtendedEvent, data: Mapping[str, Any]) -> None:
        job_id = data.get("job_id")
        if event is ExtendedEvent.BATCH_JOB_SUBMITTED:
            self.submitted += 1
            self.running.add(job_id)
        elif event is ExtendedEvent.BATCH_JOB_PROGRESS:
            self.running.add(job_id)  # a job a resumed run polls was submitted by another run
        else:
            self.running.discard(job_id)
            state = str(data.get("state", "unknown"))
            self.by_state[state] = self.by_state.get(state, 0) + 1
            succeeded, failed = _count(data.get("completed")), _count(data.get("failed"))
            left = max(_count(data.get("requests")) - succeeded - failed, 0)
            self.succeeded += succeeded
            # Lines a completed, expired or cancelled job never ran are sent again (expired);
            # those of a job that failed (or could not be read) failed with it.
            if state in _RAN_STATES:
                self.failed += failed
                self.expired += left
            else:
                self.failed += failed + left

    def snapshot(self) -> dict[str, Any]:
        return {
            "batch_jobs_submitted": self.submitted,
            "batch_jobs_completed": dict(self.by_state),
            "batch_jobs_in_progress": len(self.running),
            "batch_lines_succeeded": self.succeeded,
            "batch_lines_failed": self.failed,
            "batch_lines_expired": self.expired,
        }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _initial_metrics() -> dict[str, Any]:
    return {
        "items_processed": 0,
        "items_succeeded": 0,
        "items_failed": 0,
        "rate_limits_hit": 0,
        "total_cooldown_time": 0.0,
        # Samples live in MetricsObserver._samples (bounded); this key stays empty.
        "processing_times": [],
        "error_counts": {},
        "processing_times_count": 0,
        "processing_times_sum": 0.0,
    }


def _escape_label_value(value: str) -> str:
    # Prometheus text format: backslash, double quote and newline are escaped in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsObserver(BaseObserver):
    """Counts what happens in a batch from the processor's events.

    Only four events change the counters: ``ITEM_COMPLETED`` (a success, with its duration),
    ``ITEM_FAILED`` (a failure, counted by ``error_type``), ``RATE_LIMIT_HIT`` and
    ``COOLDOWN_ENDED`` (adds the cooldown's actual duration). Items that end without an
    ``ITEM_FAILED`` event (for example skipped by middleware) are not counted as failed.

    Durations are summed over every sample ever recorded, while only the newest
    ``max_processing_samples`` samples are kept for :meth:`get_metrics`.

    Quota admission: when the processor paces attempts (a request or token limit is declared
    or learned), each ``ITEM_COMPLETED`` / ``ITEM_FAILED`` carries the item's
    ``admission_wait`` and a snapshot of its quota scope's gate. The observer then also
    records, per quota scope, the admission wait (total, count, average) and the requests and
    tokens per minute used against the limits in force; see :meth:`get_metrics`. Without
    admission, snapshots and exports are exactly those of 0.6.0.

    Attributes:
        metrics: the live counters: ``items_processed``, ``items_succeeded``, ``items_failed``,
            ``rate_limits_hit``, ``total_cooldown_time``, ``processing_times`` (always empty;
            samples are kept separately), ``error_counts``, ``processing_times_count`` and
            ``processing_times_sum``.

    Example:
        >>> metrics = MetricsObserver()
        >>> # ParallelBatchProcessor(config=config, observers=[metrics]) ...
        >>> # print(await metrics.export_prometheus())
    """

    extended_events = True  # the BATCH_JOB_* events feed the batch job counters

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass written for 0.6.0 that handles events itself keeps receiving exactly the
        # 0.6.0 events (its on_event may not expect an ExtendedEvent), unless it opts in.
        if "on_event" in cls.__dict__ and "extended_events" not in cls.__dict__:
            cls.extended_events = False

    def __init__(self, *, max_processing_samples: int = 100) -> None:
        """Create an observer with every counter at zero.

        Args:
            max_processing_samples: how many of the newest item durations to keep (>= 1).

        Raises:
            ValueError: if ``max_processing_samples`` is zero or negative.
        """
        if max_processing_samples <= 0:
            raise ValueError("max_processing_samples must be positive")
        self.max_processing_samples = max_processing_samples
        self.metrics: dict[str, Any] = _initial_metrics()
        self._samples: deque[float] = deque(maxlen=max_processing_samples)
        self._quota: dict[str, _ScopeQuota] = {}
        # Dollars from the items' ``cost`` (None until an event carried one), by model/scope.
        self._cost: float | None = None
        self._cost_by_model: dict[str, float] = {}
        self._cost_by_scope: dict[str, float] = {}
        self._jobs: _BatchJobs | None = None  # None until a batch job event arrived
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        m = self.metrics
        return (
            f"{type(self).__name__}(items_processed={m['items_processed']}, "
            f"items_succeeded={m['items_succeeded']}, items_failed={m['items_failed']}, "
            f"rate_limits_hit={m['rate_limits_hit']}, "
            f"max_processing_samples={self.max_processing_samples})"
        )

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Update the counters for ``event``; events other than the counted ones are ignored.

        Args:
            event: the lifecycle event. ``ExtendedEvent`` members arrive here too (the class
                sets ``extended_events``); the annotation stays 0.6.0's, so that subclasses
                written for 0.6.0 keep type-checking.
            data: its payload; ``duration`` (seconds) and ``error_type`` are read when present.
        """
        # No lock: the update never awaits, so it cannot interleave with another event's update
        # or with get_metrics() on the event loop. It runs for every event of every item.
        received: object = event
        if type(received) is ExtendedEvent:
            if received in _JOB_EVENTS:
                jobs = self._jobs
                if jobs is None:
                    jobs = self._jobs = _BatchJobs()
                jobs.record(received, data)
            return
        m = self.metrics
        if "admission_wait" in data and (
            event is ProcessingEvent.ITEM_COMPLETED or event is ProcessingEvent.ITEM_FAILED
        ):
            scope = str(data.get("quota_scope", "default"))
            quota = self._quota.get(scope)
            if quota is None:
                quota = self._quota[scope] = _ScopeQuota()
            quota.record(data)
        if "cost" in data and (
            event is ProcessingEvent.ITEM_COMPLETED or event is ProcessingEvent.ITEM_FAILED
        ):
            self._record_cost(data)
        if event is ProcessingEvent.ITEM_COMPLETED:
            m["items_processed"] += 1
            m["items_succeeded"] += 1
            if "duration" in data:
                duration = data["duration"]
                m["processing_times_sum"] += duration
                m["processing_times_count"] += 1
                self._samples.append(duration)
        elif event is ProcessingEvent.ITEM_FAILED:
            m["items_processed"] += 1
            m["items_failed"] += 1
            if "error_type" in data:
                error_counts: dict[str, int] = m["error_counts"]
                error_type = data["error_type"]
                error_counts[error_type] = error_counts.get(error_type, 0) + 1
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            m["rate_limits_hit"] += 1
        elif event is ProcessingEvent.COOLDOWN_ENDED and "duration" in data:
            m["total_cooldown_time"] += data["duration"]

    def _record_cost(self, data: Mapping[str, Any]) -> None:
        cost = data["cost"]
        if isinstance(cost, bool) or not isinstance(cost, int | float):
            return  # not a price (None, text): nothing known
        if not (cost >= 0 and math.isfinite(cost)):
            return
        cost = float(cost)
        self._cost = (self._cost or 0.0) + cost
        model = data.get("model")
        if isinstance(model, str) and model:
            self._cost_by_model[model] = self._cost_by_model.get(model, 0.0) + cost
        scope = data.get("quota_scope")
        if isinstance(scope, str) and scope:
            self._cost_by_scope[scope] = self._cost_by_scope.get(scope, 0.0) + cost

    async def get_metrics(self) -> dict[str, Any]:
        """Return a snapshot of the counters with derived values.

        Returns:
            A new dict with, in this order: ``items_processed``, ``items_succeeded``,
            ``items_failed``, ``rate_limits_hit``, ``total_cooldown_time``, ``error_counts``
            (a copy), ``processing_times_count``, ``processing_times_sum``,
            ``processing_times`` (the kept samples, oldest first), ``avg_processing_time``
            (seconds, over every sample ever recorded; the integer ``0`` when there is none) and
            ``success_rate`` (0.0 to 1.0; the integer ``0`` when nothing was processed).

            Once an item event carried quota admission data, four more keys follow:
            ``admission_wait_total`` (seconds items waited for quota admission, every attempt
            of every item counted), ``admission_wait_count`` (items counted),
            ``avg_admission_wait`` (seconds per item; ``0`` when none) and ``quota``: by quota
            scope, a dict with the same three admission keys and, for each dimension
            ``requests``, ``tokens``, ``input_tokens`` and ``output_tokens``,
            ``<dimension>_per_minute`` (used per minute over the last minute, or over the run
            so far when it is younger: reserved estimates corrected by the usage providers
            reported) and ``<dimension>_per_minute_limit`` (the limit in force, declared or
            learned from headers; ``None`` when none is).

            Once an item event carried a ``cost`` (a ``cost_function`` prices the calls, see
            ``GuardrailConfig``), three more keys follow: ``total_cost`` (dollars of every
            item's attempts so far, failed items included), ``cost_by_model`` (dollars by the
            ``model`` the events name: ``ITEM_COMPLETED`` names it) and
            ``cost_by_quota_scope`` (dollars by quota scope; empty without quota admission).
            Without priced calls these keys are absent.

            Once a provider batch job event arrived (``ProcessorConfig(mode="batch")``), six
            more keys follow: ``batch_jobs_submitted``, ``batch_jobs_completed`` (jobs that
            ended, by final state: ``completed``, ``expired``, ``cancelled``, ``failed``),
            ``batch_jobs_in_progress`` (submitted, or polled after a resume, and not ended),
            and, over the lines of ended jobs, ``batch_lines_succeeded`` and
            ``batch_lines_failed`` (as the provider counted them) and ``batch_lines_expired``
            (lines a job ended without running: it expired or was cancelled; they are sent
            again). A failed job's lines count as failed. Without batch jobs these keys are
            absent.
        """
        async with self._lock:
            m = self.metrics
            count: int = m["processing_times_count"]
            processed: int = m["items_processed"]
            snapshot: dict[str, Any] = {
                "items_processed": processed,
                "items_succeeded": m["items_succeeded"],
                "items_failed": m["items_failed"],
                "rate_limits_hit": m["rate_limits_hit"],
                "total_cooldown_time": m["total_cooldown_time"],
                "error_counts": dict(m["error_counts"]),
                "processing_times_count": count,
                "processing_times_sum": m["processing_times_sum"],
                "processing_times": list(self._samples),
                "avg_processing_time": m["processing_times_sum"] / count if count else 0,
                "success_rate": m["items_succeeded"] / processed if processed else 0,
            }
            if self._quota:
                scopes = {scope: quota.snapshot() for scope, quota in self._quota.items()}
                total = sum(quota.wait_total for quota in self._quota.values())
                waits = sum(quota.wait_count for quota in self._quota.values())
                snapshot["admission_wait_total"] = total
                snapshot["admission_wait_count"] = waits
                snapshot["avg_admission_wait"] = total / waits if waits else 0
                snapshot["quota"] = scopes
            if self._cost is not None:
                snapshot["total_cost"] = self._cost
                snapshot["cost_by_model"] = dict(self._cost_by_model)
                snapshot["cost_by_quota_scope"] = dict(self._cost_by_scope)
            if self._jobs is not None:
                snapshot.update(self._jobs.snapshot())
            return snapshot

    async def export_dict(self) -> dict[str, Any]:
        """Return the same snapshot as :meth:`get_metrics`."""
        return await self.get_metrics()

    async def export_json(self) -> str:
        """Return :meth:`get_metrics` as JSON indented by 2, without ``processing_times``."""
        snapshot = await self.get_metrics()
        del snapshot["processing_times"]
        return json.dumps(snapshot, indent=2)

    async def export_prometheus(self) -> str:
        """Return the metrics in the Prometheus text exposition format.

        Every metric is named ``async_batch_llm_<key>`` and written as a ``# HELP`` line, a
        ``# TYPE`` line, the sample line and an empty line. When failures were counted by type,
        an ``async_batch_llm_errors_total`` counter follows with one ``error_type`` labelled
        sample per type. With quota admission data (see :meth:`get_metrics`), three families
        labelled by ``quota_scope`` follow: ``async_batch_llm_admission_wait_seconds`` (a
        summary: ``_sum`` and ``_count``), then ``async_batch_llm_quota_used_per_minute`` and
        ``async_batch_llm_quota_limit_per_minute`` (gauges, also labelled by ``dimension``;
        a limit only where one is in force). With a known cost (see :meth:`get_metrics`),
        ``async_batch_llm_cost_dollars_total`` (a counter, the total) follows, then, when
        known, ``async_batch_llm_cost_dollars_by_model_total`` (labelled by ``model``) and
        ``async_batch_llm_cost_dollars_by_quota_scope_total`` (labelled by ``quota_scope``).
        With batch jobs (see :meth:`get_metrics`), four families follow:
        ``async_batch_llm_batch_jobs_submitted_total`` (a counter),
        ``async_batch_llm_batch_jobs_completed_total`` (a counter labelled by final ``state``,
        once a job ended), ``async_batch_llm_batch_jobs_in_progress`` (a gauge) and
        ``async_batch_llm_batch_lines_total`` (a counter labelled by ``outcome``:
        ``succeeded``, ``failed``, ``expired``). The text ends with a single newline.

        Returns:
            The exposition text, ready to serve on a ``/metrics`` endpoint.
        """
        snapshot = await self.get_metrics()
        lines: list[str] = []
        for key, metric_type, help_text in _PROMETHEUS_METRICS:
            name = _PROMETHEUS_PREFIX + key
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} {metric_type}",
                f"{name} {snapshot[key]}",
                "",
            ]
        error_counts: dict[str, int] = snapshot["error_counts"]
        if error_counts:
            name = _PROMETHEUS_PREFIX + "errors_total"
            lines += [f"# HELP {name} Total errors by type", f"# TYPE {name} counter"]
            lines += [
                f'{name}{{error_type="{_escape_label_value(error_type)}"}} {count}'
                for error_type, count in error_counts.items()
            ]
            lines.append("")
        quota: dict[str, dict[str, Any]] = snapshot.get("quota", {})
        if quota:
            lines += _quota_families(quota)
        if "total_cost" in snapshot:
            lines += _cost_family(
                snapshot["total_cost"],
                snapshot["cost_by_model"],
                snapshot["cost_by_quota_scope"],
            )
        if "batch_jobs_submitted" in snapshot:
            lines += _batch_job_families(snapshot)
        return "\n".join(lines)

    def reset(self) -> None:
        """Set every counter back to its initial value and drop the kept samples."""
        self.metrics.clear()
        self.metrics.update(_initial_metrics())
        self._samples.clear()
        self._quota.clear()
        self._cost = None
        self._cost_by_model.clear()
        self._cost_by_scope.clear()
        self._jobs = None


_JOB_EVENTS = frozenset(
    {
        ExtendedEvent.BATCH_JOB_SUBMITTED,
        ExtendedEvent.BATCH_JOB_PROGRESS,
        ExtendedEvent.BATCH_JOB_COMPLETED,
    }
)


def _batch_job_families(snapshot: Mapping[str, Any]) -> list[str]:
    """The Prometheus lines of the provider batch jobs (see ``export_prometheus``)."""
    submitted = _PROMETHEUS_PREFIX + "batch_jobs_submitted_total"
    ended = _PROMETHEUS_PREFIX + "batch_jobs_completed_total"
    running = _PROMETHEUS_PREFIX + "batch_jobs_in_progress"
    outcomes = _PROMETHEUS_PREFIX + "batch_lines_total"
    lines = [
        f"# HELP {submitted} Provider batch jobs submitted",
        f"# TYPE {submitted} counter",
        f"{submitted} {snapshot['batch_jobs_submitted']}",
        "",
    ]
    by_state: Mapping[str, int] = snapshot["batch_jobs_completed"]
    if by_state:
        lines += [
            f"# HELP {ended} Provider batch jobs that ended, by final state",
            f"# TYPE {ended} counter",
        ]
        lines += [
            f'{ended}{{state="{_escape_label_value(state)}"}} {count}'
            for state, count in by_state.items()
        ]
        lines.append("")
    lines += [
        f"# HELP {running} Provider batch jobs submitted and not yet ended",
        f"# TYPE {running} gauge",
        f"{running} {snapshot['batch_jobs_in_progress']}",
        "",
        f"# HELP {outcomes} Request lines of ended provider batch jobs, by outcome",
        f"# TYPE {outcomes} counter",
    ]
    for outcome in ("succeeded", "failed", "expired"):
        lines.append(f'{outcomes}{{outcome="{outcome}"}} {snapshot[f"batch_lines_{outcome}"]}')
    lines.append("")
    return lines


def _quota_families(quota: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The Prometheus lines of the per-scope quota metrics (see ``export_prometheus``)."""
    wait = _PROMETHEUS_PREFIX + "admission_wait_seconds"
    used = _PROMETHEUS_PREFIX + "quota_used_per_minute"
    limit = _PROMETHEUS_PREFIX + "quota_limit_per_minute"
    lines = [
        f"# HELP {wait} Time items waited for quota admission (seconds)",
        f"# TYPE {wait} summary",
    ]
    for scope, figures in quota.items():
        label = f'quota_scope="{_escape_label_value(scope)}"'
        lines.append(f"{wait}_sum{{{label}}} {figures['admission_wait_total']}")
        lines.append(f"{wait}_count{{{label}}} {figures['admission_wait_count']}")
    lines += [
        "",
        f"# HELP {used} Quota units used per minute over the last minute",
        f"# TYPE {used} gauge",
    ]
    for scope, figures in quota.items():
        label = f'quota_scope="{_escape_label_value(scope)}"'
        for dimension in _QUOTA_DIMENSIONS:
            value = figures[f"{dimension}_per_minute"]
            lines.append(f'{used}{{{label},dimension="{dimension}"}} {value}')
    lines += [
        "",
        f"# HELP {limit} Per-minute quota limit in force (declared or learned)",
        f"# TYPE {limit} gauge",
    ]
    for scope, figures in quota.items():
        label = f'quota_scope="{_escape_label_value(scope)}"'
        for dimension in _QUOTA_DIMENSIONS:
            value = figures[f"{dimension}_per_minute_limit"]
            if value is not None:
                lines.append(f'{limit}{{{label},dimension="{dimension}"}} {value}')
    lines.append("")
    return lines


def _cost_family(
    total: float, by_model: Mapping[str, float], by_scope: Mapping[str, float]
) -> list[str]:
    """The Prometheus lines of the spend (see ``export_prometheus``)."""
    name = _PROMETHEUS_PREFIX + "cost_dollars_total"
    lines = [
        f"# HELP {name} Dollars spent on provider calls (priced by the cost_function)",
        f"# TYPE {name} counter",
        f"{name} {total}",
        "",
    ]
    for label, costs in (("model", by_model), ("quota_scope", by_scope)):
        if not costs:
            continue
        family = f"{_PROMETHEUS_PREFIX}cost_dollars_by_{label}_total"
        lines += [
            f"# HELP {family} Dollars spent on provider calls by {label.replace('_', ' ')}",
            f"# TYPE {family} counter",
        ]
        lines += [
            f'{family}{{{label}="{_escape_label_value(key)}"}} {cost}'
            for key, cost in costs.items()
        ]
        lines.append("")
    return lines
