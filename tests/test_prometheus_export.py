"""MetricsObserver.export_prometheus: the exact text layout and what a Prometheus parser reads."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from async_batch_llm.observers import MetricsObserver, ProcessingEvent

E = ProcessingEvent

EMPTY_EXPORT = """\
# HELP async_batch_llm_items_processed Total items processed
# TYPE async_batch_llm_items_processed counter
async_batch_llm_items_processed 0

# HELP async_batch_llm_items_succeeded Total items succeeded
# TYPE async_batch_llm_items_succeeded counter
async_batch_llm_items_succeeded 0

# HELP async_batch_llm_items_failed Total items failed
# TYPE async_batch_llm_items_failed counter
async_batch_llm_items_failed 0

# HELP async_batch_llm_rate_limits_hit Total rate limits encountered
# TYPE async_batch_llm_rate_limits_hit counter
async_batch_llm_rate_limits_hit 0

# HELP async_batch_llm_avg_processing_time Average processing time in seconds
# TYPE async_batch_llm_avg_processing_time gauge
async_batch_llm_avg_processing_time 0

# HELP async_batch_llm_success_rate Success rate (0.0 to 1.0)
# TYPE async_batch_llm_success_rate gauge
async_batch_llm_success_rate 0

# HELP async_batch_llm_total_cooldown_time Total time spent in rate limit cooldown (seconds)
# TYPE async_batch_llm_total_cooldown_time gauge
async_batch_llm_total_cooldown_time 0.0

# HELP async_batch_llm_processing_times_count Number of recorded processing time samples
# TYPE async_batch_llm_processing_times_count gauge
async_batch_llm_processing_times_count 0
"""

POPULATED_EXPORT = """\
# HELP async_batch_llm_items_processed Total items processed
# TYPE async_batch_llm_items_processed counter
async_batch_llm_items_processed 4

# HELP async_batch_llm_items_succeeded Total items succeeded
# TYPE async_batch_llm_items_succeeded counter
async_batch_llm_items_succeeded 2

# HELP async_batch_llm_items_failed Total items failed
# TYPE async_batch_llm_items_failed counter
async_batch_llm_items_failed 2

# HELP async_batch_llm_rate_limits_hit Total rate limits encountered
# TYPE async_batch_llm_rate_limits_hit counter
async_batch_llm_rate_limits_hit 3

# HELP async_batch_llm_avg_processing_time Average processing time in seconds
# TYPE async_batch_llm_avg_processing_time gauge
async_batch_llm_avg_processing_time 1.5

# HELP async_batch_llm_success_rate Success rate (0.0 to 1.0)
# TYPE async_batch_llm_success_rate gauge
async_batch_llm_success_rate 0.5

# HELP async_batch_llm_total_cooldown_time Total time spent in rate limit cooldown (seconds)
# TYPE async_batch_llm_total_cooldown_time gauge
async_batch_llm_total_cooldown_time 120.0

# HELP async_batch_llm_processing_times_count Number of recorded processing time samples
# TYPE async_batch_llm_processing_times_count gauge
async_batch_llm_processing_times_count 2

# HELP async_batch_llm_errors_total Total errors by type
# TYPE async_batch_llm_errors_total counter
async_batch_llm_errors_total{error_type="ConnectionError"} 1
async_batch_llm_errors_total{error_type="Bad\\"Quote"} 1
"""


async def populated_observer() -> MetricsObserver:
    observer = MetricsObserver()
    events: list[tuple[ProcessingEvent, dict[str, Any]]] = [
        (E.ITEM_COMPLETED, {"item_id": "a", "duration": 1.0, "tokens": 30}),
        (E.ITEM_COMPLETED, {"item_id": "b", "duration": 2.0, "tokens": 30}),
        (E.ITEM_FAILED, {"item_id": "c", "error_type": "ConnectionError"}),
        (E.ITEM_FAILED, {"item_id": "d", "error_type": 'Bad"Quote'}),
        (E.RATE_LIMIT_HIT, {"item_id": "e", "worker_id": 0}),
        (E.RATE_LIMIT_HIT, {"item_id": "e", "worker_id": 0}),
        (E.RATE_LIMIT_HIT, {"item_id": "e", "worker_id": 1}),
        (E.COOLDOWN_ENDED, {"duration": 120.0}),
    ]
    for event, data in events:
        await observer.on_event(event, data)
    return observer


def parse(text: str) -> dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]]:
    """Family name -> (type, help, [(sample name, labels, value)])."""
    return {
        family.name: (
            family.type,
            family.documentation,
            [(s.name, s.labels, s.value) for s in family.samples],
        )
        for family in text_string_to_metric_families(text)
    }


async def test_empty_observer_exact_text() -> None:
    assert await MetricsObserver().export_prometheus() == EMPTY_EXPORT


async def test_populated_observer_exact_text() -> None:
    observer = await populated_observer()
    assert await observer.export_prometheus() == POPULATED_EXPORT


async def test_text_ends_with_a_single_newline_and_blocks_are_blank_line_separated() -> None:
    for observer in [MetricsObserver(), await populated_observer()]:
        text = await observer.export_prometheus()
        assert text.endswith("\n")
        assert not text.endswith("\n\n")
        blocks = text.rstrip("\n").split("\n\n")
        for block in blocks:
            lines = block.split("\n")
            assert lines[0].startswith("# HELP async_batch_llm_")
            assert lines[1].startswith("# TYPE async_batch_llm_")
            assert len(lines) >= 3


async def test_no_error_block_without_error_counts() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_FAILED, {"item_id": "a"})  # no error_type: not counted by type
    text = await observer.export_prometheus()
    assert "errors_total" not in text
    assert "async_batch_llm_items_failed 1\n" in text


async def test_values_use_python_str_formatting() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "duration": 0.1})
    await observer.on_event(E.ITEM_FAILED, {"item_id": "b", "error_type": "X"})
    await observer.on_event(E.ITEM_FAILED, {"item_id": "c", "error_type": "X"})
    text = await observer.export_prometheus()
    assert "async_batch_llm_items_processed 3\n" in text
    assert "async_batch_llm_avg_processing_time 0.1\n" in text
    assert f"async_batch_llm_success_rate {1 / 3}\n" in text
    assert 'async_batch_llm_errors_total{error_type="X"} 2\n' in text


async def test_label_values_escape_backslash_and_newline_too() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_FAILED, {"item_id": "a", "error_type": "a\\b\nc"})
    text = await observer.export_prometheus()
    assert 'async_batch_llm_errors_total{error_type="a\\\\b\\nc"} 1\n' in text
    samples = parse(text)["async_batch_llm_errors"][2]
    assert samples == [("async_batch_llm_errors_total", {"error_type": "a\\b\nc"}, 1.0)]


async def test_prometheus_parser_reads_every_family() -> None:
    observer = await populated_observer()
    families = parse(await observer.export_prometheus())
    # The parser names counter families without the `_total` suffix and their samples with it.
    assert families == {
        "async_batch_llm_items_processed": (
            "counter",
            "Total items processed",
            [("async_batch_llm_items_processed_total", {}, 4.0)],
        ),
        "async_batch_llm_items_succeeded": (
            "counter",
            "Total items succeeded",
            [("async_batch_llm_items_succeeded_total", {}, 2.0)],
        ),
        "async_batch_llm_items_failed": (
            "counter",
            "Total items failed",
            [("async_batch_llm_items_failed_total", {}, 2.0)],
        ),
        "async_batch_llm_rate_limits_hit": (
            "counter",
            "Total rate limits encountered",
            [("async_batch_llm_rate_limits_hit_total", {}, 3.0)],
        ),
        "async_batch_llm_avg_processing_time": (
            "gauge",
            "Average processing time in seconds",
            [("async_batch_llm_avg_processing_time", {}, 1.5)],
        ),
        "async_batch_llm_success_rate": (
            "gauge",
            "Success rate (0.0 to 1.0)",
            [("async_batch_llm_success_rate", {}, 0.5)],
        ),
        "async_batch_llm_total_cooldown_time": (
            "gauge",
            "Total time spent in rate limit cooldown (seconds)",
            [("async_batch_llm_total_cooldown_time", {}, 120.0)],
        ),
        "async_batch_llm_processing_times_count": (
            "gauge",
            "Number of recorded processing time samples",
            [("async_batch_llm_processing_times_count", {}, 2.0)],
        ),
        "async_batch_llm_errors": (
            "counter",
            "Total errors by type",
            [
                ("async_batch_llm_errors_total", {"error_type": "ConnectionError"}, 1.0),
                ("async_batch_llm_errors_total", {"error_type": 'Bad"Quote'}, 1.0),
            ],
        ),
    }


async def test_prometheus_parser_reads_empty_export() -> None:
    families = parse(await MetricsObserver().export_prometheus())
    assert list(families) == [
        "async_batch_llm_items_processed",
        "async_batch_llm_items_succeeded",
        "async_batch_llm_items_failed",
        "async_batch_llm_rate_limits_hit",
        "async_batch_llm_avg_processing_time",
        "async_batch_llm_success_rate",
        "async_batch_llm_total_cooldown_time",
        "async_batch_llm_processing_times_count",
    ]
    assert all(samples[0][2] == 0 for _, _, samples in families.values())


async def test_export_after_reset_is_the_empty_export() -> None:
    observer = await populated_observer()
    observer.reset()
    assert await observer.export_prometheus() == EMPTY_EXPORT
