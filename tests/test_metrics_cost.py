"""Cost in MetricsObserver: the events' ``cost``, ``get_metrics()`` keys, Prometheus families."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from async_batch_llm import GuardrailConfig, TokenEstimate, TokenUsage
from async_batch_llm.observers import MetricsObserver, ProcessingEvent
from tests.conftest import (
    EventRecorder,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)

E = ProcessingEvent


def per_token(model: str, usage: TokenUsage) -> float:
    return usage.get("total_tokens", 0) * 0.001


def parse(text: str) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    return {
        family.name: (family.type, [(s.name, s.labels, s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


async def test_events_without_cost_keep_the_060_snapshot_and_export() -> None:
    plain, counted = MetricsObserver(), MetricsObserver()
    for observer in (plain, counted):
        await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "duration": 1.0, "tokens": 3})
        await observer.on_event(E.ITEM_FAILED, {"item_id": "b", "error_type": "X"})
    await counted.on_event(E.ITEM_STARTED, {"item_id": "c", "cost": 9.0})  # not an item end
    snapshot = await counted.get_metrics()
    assert "total_cost" not in snapshot
    assert list(snapshot) == list(await plain.get_metrics())
    assert "cost" not in await counted.export_prometheus()


async def test_costs_of_completed_and_failed_items_add_up_by_model_and_scope() -> None:
    observer = MetricsObserver()
    await observer.on_event(
        E.ITEM_COMPLETED,
        {"item_id": "a", "duration": 1.0, "tokens": 3, "cost": 0.25, "model": "gpt-x"},
    )
    await observer.on_event(
        E.ITEM_FAILED,
        {"item_id": "b", "error_type": "E", "cost": 0.5, "model": "gpt-x", "quota_scope": "s1"},
    )
    await observer.on_event(
        E.ITEM_COMPLETED, {"item_id": "c", "duration": 1.0, "cost": 1, "model": "claude-y"}
    )
    snapshot = await observer.get_metrics()
    # New keys come after every 0.6.0 key.
    assert list(snapshot)[-3:] == ["total_cost", "cost_by_model", "cost_by_quota_scope"]
    assert list(snapshot)[:11] == list(await MetricsObserver().get_metrics())
    assert snapshot["total_cost"] == pytest.approx(1.75)
    assert snapshot["cost_by_model"] == {"gpt-x": 0.75, "claude-y": 1.0}
    assert snapshot["cost_by_quota_scope"] == {"s1": 0.5}
    assert snapshot["items_processed"] == 3


async def test_a_zero_cost_is_a_known_cost() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_FAILED, {"item_id": "a", "error_type": "E", "cost": 0.0})
    snapshot = await observer.get_metrics()
    assert snapshot["total_cost"] == 0.0
    assert snapshot["cost_by_model"] == {}


@pytest.mark.parametrize("bad", [None, "0.5", True, -1.0, math.nan, math.inf])
async def test_a_cost_that_is_not_a_price_is_ignored(bad: Any) -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "cost": bad, "model": "m"})
    snapshot = await observer.get_metrics()
    assert "total_cost" not in snapshot
    assert snapshot["items_succeeded"] == 1


async def test_reset_forgets_the_cost() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "cost": 0.1, "model": "m"})
    observer.reset()
    assert "total_cost" not in await observer.get_metrics()
    assert await observer.export_prometheus() == await MetricsObserver().export_prometheus()


async def test_export_json_carries_the_cost_keys() -> None:
    observer = MetricsObserver()
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "cost": 0.5, "model": "m"})
    text = await observer.export_json()
    assert '"total_cost": 0.5' in text
    assert '"cost_by_model": {\n    "m": 0.5\n  }' in text


async def test_prometheus_cost_families_exact_text_after_the_060_text() -> None:
    observer = MetricsObserver()
    plain = await MetricsObserver().export_prometheus()
    await observer.on_event(
        E.ITEM_COMPLETED, {"item_id": "a", "cost": 0.25, "model": 'g"x', "quota_scope": "s"}
    )
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "b", "cost": 0.5, "model": "h"})
    text = await observer.export_prometheus()
    head = plain.replace("processed 0", "processed 2").replace("succeeded 0", "succeeded 2")
    head = head.replace("success_rate 0\n", "success_rate 1.0\n")
    assert text.startswith(head)
    assert text[len(head) :] == (
        "\n"
        "# HELP async_batch_llm_cost_dollars_total Dollars spent on provider calls "
        "(priced by the cost_function)\n"
        "# TYPE async_batch_llm_cost_dollars_total counter\n"
        "async_batch_llm_cost_dollars_total 0.75\n"
        "\n"
        "# HELP async_batch_llm_cost_dollars_by_model_total Dollars spent on provider calls "
        "by model\n"
        "# TYPE async_batch_llm_cost_dollars_by_model_total counter\n"
        'async_batch_llm_cost_dollars_by_model_total{model="g\\"x"} 0.25\n'
        'async_batch_llm_cost_dollars_by_model_total{model="h"} 0.5\n'
        "\n"
        "# HELP async_batch_llm_cost_dollars_by_quota_scope_total Dollars spent on provider "
        "calls by quota scope\n"
        "# TYPE async_batch_llm_cost_dollars_by_quota_scope_total counter\n"
        'async_batch_llm_cost_dollars_by_quota_scope_total{quota_scope="s"} 0.25\n'
    )
    families = parse(text)
    assert families["async_batch_llm_cost_dollars"] == (
        "counter",
        [("async_batch_llm_cost_dollars_total", {}, 0.75)],
    )
    assert families["async_batch_llm_cost_dollars_by_model"][1] == [
        ("async_batch_llm_cost_dollars_by_model_total", {"model": 'g"x'}, 0.25),
        ("async_batch_llm_cost_dollars_by_model_total", {"model": "h"}, 0.5),
    ]


async def test_a_priced_batch_reports_each_items_cost_in_its_event_and_the_total() -> None:
    # "flaky" fails once (a retry: two priced attempts); "bad" fails for good after 2 attempts.
    strategy = ScriptedStrategy(
        {"flaky": [ConnectionError("x")], "bad": [ValueError("no"), ValueError("no")]}
    )
    strategy.model = "scripted-model"  # type: ignore[attr-defined]
    recorder, metrics = EventRecorder(), MetricsObserver()
    config = make_config(
        retry_max_attempts=2,
        retry_initial_wait=0.001,
        retry_max_wait=0.001,
        guardrails=GuardrailConfig(cost_function=per_token),
    )
    processor = make_processor(config=config, observers=[recorder, metrics])
    batch = await run_batch(processor, items(strategy, "a", "flaky", "bad"))
    by_id = {r.item_id: r for r in batch.results}
    ends = {d["item_id"]: d for d in recorder.of(E.ITEM_COMPLETED) + recorder.of(E.ITEM_FAILED)}
    assert set(ends) == {"a", "flaky", "bad"}
    for item_id, data in ends.items():
        assert data["cost"] == pytest.approx(by_id[item_id].cost)
    assert [d["model"] for d in recorder.of(E.ITEM_COMPLETED)] == ["scripted-model"] * 2
    # Failures report no usage here, so only successful attempts cost (15 tokens each).
    assert by_id["a"].cost == pytest.approx(0.015)
    assert by_id["flaky"].cost == pytest.approx(0.015)
    assert by_id["bad"].cost == 0.0
    snapshot = await metrics.get_metrics()
    assert batch.total_cost is not None
    assert snapshot["total_cost"] == pytest.approx(batch.total_cost)
    # ITEM_COMPLETED names the model; "bad" failed at no cost, so the model's share is the total.
    assert snapshot["cost_by_model"] == {"scripted-model": pytest.approx(batch.total_cost)}


async def test_a_budget_stop_reports_the_cost_of_every_item_event() -> None:
    strategy = ScriptedStrategy()
    metrics = MetricsObserver()
    config = make_config(
        token_estimator=lambda prompt, **_: TokenEstimate(10, 5),
        guardrails=GuardrailConfig(max_total_cost=0.05, cost_function=per_token),
    )
    processor = make_processor(config=config, observers=[metrics])
    batch = await run_batch(processor, items(strategy, "a", "b", "c", "d"))
    assert batch.termination.kind == "budget_exceeded"
    snapshot = await metrics.get_metrics()
    assert snapshot["total_cost"] == pytest.approx(0.045)
    assert batch.total_cost == pytest.approx(0.045)


async def test_an_unpriced_batch_events_carry_no_cost() -> None:
    strategy = ScriptedStrategy({"b": [ValueError("no")] * 3})
    recorder, metrics = EventRecorder(), MetricsObserver()
    config = make_config(retry_max_attempts=1)
    processor = make_processor(config=config, observers=[recorder, metrics])
    await run_batch(processor, items(strategy, "a", "b"))
    ends = recorder.of(E.ITEM_COMPLETED) + recorder.of(E.ITEM_FAILED)
    assert len(ends) == 2
    assert all("cost" not in data for data in ends)
    assert "total_cost" not in await metrics.get_metrics()
