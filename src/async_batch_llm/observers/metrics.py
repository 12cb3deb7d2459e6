"""An observer counting items, failures, rate limits and durations; JSON and Prometheus export."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from async_batch_llm.observers.base import BaseObserver, ProcessingEvent

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
        """Update the counters for ``event``; events other than the four counted ones are ignored.

        Args:
            event: the lifecycle event.
            data: its payload; ``duration`` (seconds) and ``error_type`` are read when present.
        """
        # No lock: the update never awaits, so it cannot interleave with another event's update
        # or with get_metrics() on the event loop. It runs for every event of every item.
        m = self.metrics
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

    async def get_metrics(self) -> dict[str, Any]:
        """Return a snapshot of the counters with derived values.

        Returns:
            A new dict with, in this order: ``items_processed``, ``items_succeeded``,
            ``items_failed``, ``rate_limits_hit``, ``total_cooldown_time``, ``error_counts``
            (a copy), ``processing_times_count``, ``processing_times_sum``,
            ``processing_times`` (the kept samples, oldest first), ``avg_processing_time``
            (seconds, over every sample ever recorded; the integer ``0`` when there is none) and
            ``success_rate`` (0.0 to 1.0; the integer ``0`` when nothing was processed).
        """
        async with self._lock:
            m = self.metrics
            count: int = m["processing_times_count"]
            processed: int = m["items_processed"]
            return {
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
        sample per type. The text ends with a single newline.

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
        return "\n".join(lines)

    def reset(self) -> None:
        """Set every counter back to its initial value and drop the kept samples."""
        self.metrics.clear()
        self.metrics.update(_initial_metrics())
        self._samples.clear()
