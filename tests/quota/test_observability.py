"""What observers learn about quota admission: per-item waits, and the gate's limits and usage.

Everything runs on a FakeClock, so waits and per-minute figures are exact. Token buckets pace at
95% of the declared limit (the gate's estimation margin) and hold one second of refill.
"""

from __future__ import annotations

from typing import Any

import pytest

from async_batch_llm import MetricsObserver, ProcessingEvent, RetryState, TokenUsage
from async_batch_llm._internal.admission import GateRegistry
from async_batch_llm.quota import QuotaLimits, TokenEstimate, report_rate_limit_headers
from async_batch_llm.testing.clock import FakeClock
from tests.conftest import (
    EventRecorder,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)

TPM = 60_000


def usage_of(total: int) -> TokenUsage:
    return {"input_tokens": total, "output_tokens": 0, "total_tokens": total}


def fixed(total: int) -> Any:
    def estimate(
        prompt: Any, *, strategy: object, attempt: int, state: RetryState | None
    ) -> TokenEstimate:
        return TokenEstimate(total)

    return estimate


class ScopeA(ScriptedStrategy):
    quota_scope = "a"


class ScopeB(ScriptedStrategy):
    quota_scope = "b"


def by_item(recorder: EventRecorder, event: ProcessingEvent) -> dict[str, dict[str, Any]]:
    return {data["item_id"]: data for data in recorder.of(event)}


# ------------------------------------------------------------------------------ event payloads


async def test_item_completed_carries_the_wait_and_the_gates_snapshot(
    fake_clock: FakeClock,
) -> None:
    # 1,000 tokens a second; each admission leaves the 50-token reserve (5% of the one-second
    # bucket) in the bucket, so an item of 950 goes every 0.95 s, the first at once.
    strategy = ScriptedStrategy(clock=fake_clock, usage=usage_of(950))
    recorder = EventRecorder()
    config = make_config(max_workers=4, max_tokens_per_minute=TPM, token_estimator=fixed(950))
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    await run_batch(processor, items(strategy, *"abcde"), fake_clock)

    completed = by_item(recorder, ProcessingEvent.ITEM_COMPLETED)
    waits = sorted(data["admission_wait"] for data in completed.values())
    assert waits == pytest.approx([0.0, 0.95, 1.9, 2.85, 3.8])
    last = max(completed.values(), key=lambda data: data["admission_wait"])
    assert last["quota_scope"] == "default"
    assert last["quota_limits"] == {"tokens": 60_000.0}
    assert last["quota_used"] == {
        "requests": 5.0,
        "tokens": 4_750.0,
        "input_tokens": 4_750.0,
        "output_tokens": 0.0,
    }
    # The gate was made at t=0 and started full (one second of refill): 4.8 s covered at 3.8.
    assert last["quota_window"] == pytest.approx(4.8)
    first = min(completed.values(), key=lambda data: data["admission_wait"])
    assert first["quota_used"]["tokens"] == 950.0
    assert first["quota_window"] == pytest.approx(1.0)


async def test_the_wait_sums_every_attempt_of_the_item(fake_clock: FakeClock) -> None:
    # One request a second. "x" goes at 0; "a" waits until 1 (1.0 s), fails, backs off 0.25 s
    # and waits again until 2 (0.75 s): 1.75 s in all.
    strategy = ScriptedStrategy({"a": [ConnectionError("reset")]}, clock=fake_clock)
    recorder = EventRecorder()
    config = make_config(max_requests_per_minute=60, retry_initial_wait=0.25)
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    await run_batch(processor, items(strategy, "x", "a"), fake_clock)
    assert [call.at for call in strategy.calls] == [0.0, 1.0, 2.0]
    completed = by_item(recorder, ProcessingEvent.ITEM_COMPLETED)
    assert completed["x"]["admission_wait"] == 0.0
    assert completed["a"]["admission_wait"] == pytest.approx(1.75)
    assert completed["a"]["quota_used"]["requests"] == 3.0


async def test_item_failed_carries_the_wait_of_its_attempts(fake_clock: FakeClock) -> None:
    # Three attempts, backoffs 0.25 s and 0.5 s: they wait 0, 0.75 and 0.5 s for admission.
    strategy = ScriptedStrategy({"a": [ConnectionError("reset")] * 3}, clock=fake_clock)
    recorder = EventRecorder()
    config = make_config(max_requests_per_minute=60, retry_initial_wait=0.25)
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    result = await run_batch(processor, items(strategy, "a"), fake_clock)
    assert result.failed == 1
    assert [call.at for call in strategy.calls] == [0.0, 1.0, 2.0]
    (failed,) = recorder.of(ProcessingEvent.ITEM_FAILED)
    assert failed["error_type"] == "ConnectionError"
    assert failed["admission_wait"] == pytest.approx(1.25)
    assert failed["quota_scope"] == "default"
    assert failed["quota_limits"] == {"requests": 60.0}
    assert failed["quota_used"]["requests"] == 3.0


async def test_a_failure_at_the_first_attempt_carries_its_scope(fake_clock: FakeClock) -> None:
    strategy = ScopeA({"a": [ValueError("bad request")]}, clock=fake_clock)
    recorder = EventRecorder()
    config = make_config(quotas={"a": QuotaLimits(requests_per_minute=120)})
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    (failed,) = recorder.of(ProcessingEvent.ITEM_FAILED)
    assert failed["error_type"] == "ValueError"
    assert (failed["quota_scope"], failed["admission_wait"]) == ("a", 0.0)
    assert failed["quota_limits"] == {"requests": 120.0}


async def test_an_item_admission_refused_has_no_wait(fake_clock: FakeClock) -> None:
    # An estimate above the whole per-minute limit fails the item before any reservation.
    strategy = ScriptedStrategy(clock=fake_clock)
    recorder = EventRecorder()
    config = make_config(max_tokens_per_minute=1_000, token_estimator=fixed(5_000))
    processor = make_processor(fake_clock, config=config, observers=[recorder])
    await run_batch(processor, items(strategy, "a"), fake_clock)
    (failed,) = recorder.of(ProcessingEvent.ITEM_FAILED)
    assert failed["error_type"] == "EstimateTooLargeError"
    assert "admission_wait" not in failed


async def test_no_quota_keys_without_admission(fake_clock: FakeClock) -> None:
    strategy = ScriptedStrategy({"b": [ValueError("bad")]}, clock=fake_clock)
    recorder = EventRecorder()
    processor = make_processor(fake_clock, observers=[recorder])
    await run_batch(processor, items(strategy, "a", "b"), fake_clock)
    for event in (ProcessingEvent.ITEM_COMPLETED, ProcessingEvent.ITEM_FAILED):
        (data,) = recorder.of(event)
        assert not {key for key in data if "quota" in key or "admission" in key}


async def test_learned_limits_reach_the_events(fake_clock: FakeClock) -> None:
    class Reporting(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
        ) -> tuple[str, TokenUsage]:
            report_rate_limit_headers({"x-ratelimit-limit-requests": "60"})
            return await super().execute(prompt, attempt, timeout, state)

    strategy = Reporting(clock=fake_clock)
    recorder = EventRecorder()
    processor = make_processor(fake_clock, config=make_config(), observers=[recorder])
    await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    completed = by_item(recorder, ProcessingEvent.ITEM_COMPLETED)
    assert "admission_wait" not in completed["a"]  # ran before any limit was known
    assert completed["c"]["quota_limits"] == {"requests": 60.0}
    assert completed["c"]["admission_wait"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ the gate snapshot


async def test_registry_snapshot_is_read_only_and_never_makes_a_gate(
    fake_clock: FakeClock,
) -> None:
    registry = GateRegistry({"tokens": 6_000}, fake_clock)
    assert registry.snapshot("default") is None
    assert registry.statistics() == {}
    gate = registry.gate("default")
    reservation = await gate.reserve(TokenEstimate(60, 20))
    reservation.reconcile({"input_tokens": 50, "output_tokens": 10, "total_tokens": 60})
    await fake_clock.advance(2.0)
    snapshot = registry.snapshot("default")
    assert snapshot is not None
    assert snapshot.limits == {"tokens": 6_000.0}
    assert snapshot.limit_sources == {"tokens": "declared"}
    assert snapshot.used_last_minute == {
        "requests": 1.0,
        "tokens": 60.0,
        "input_tokens": 50.0,
        "output_tokens": 10.0,
    }
    assert snapshot.window_seconds == pytest.approx(3.0)  # 2 s since made + 1 s of burst
    assert snapshot.per_minute("tokens") == pytest.approx(1_200.0)
    assert registry.snapshot("default") == snapshot  # taking one changes nothing


async def test_usage_leaves_the_snapshot_after_a_minute(fake_clock: FakeClock) -> None:
    registry = GateRegistry({"requests": 600}, fake_clock)
    gate = registry.gate("default")
    for _ in range(3):
        (await gate.reserve(TokenEstimate(0))).reconcile(None)
    await fake_clock.advance(30.0)
    (await gate.reserve(TokenEstimate(0))).reconcile(None)
    await fake_clock.advance(30.0)
    snapshot = registry.snapshot("default")
    assert snapshot is not None
    assert snapshot.used_last_minute["requests"] == 1.0  # the first three are a minute old
    assert snapshot.window_seconds == 60.0
    await fake_clock.advance(30.0)
    snapshot = registry.snapshot("default")
    assert snapshot is not None
    assert snapshot.used_last_minute["requests"] == 0.0


# ------------------------------------------------------------------------------ MetricsObserver


async def test_metrics_observer_records_waits_and_rates_per_scope(fake_clock: FakeClock) -> None:
    # "a": 60,000 tokens a minute, 950 per item (one every 0.95 s: the 50-token reserve stays in
    # the bucket). "b": 120 requests a minute,
    # no token limit (two a second, a burst of two).
    a = ScopeA(clock=fake_clock, usage=usage_of(950))
    b = ScopeB(clock=fake_clock, usage=usage_of(10))
    metrics = MetricsObserver()
    config = make_config(
        max_workers=8,
        token_estimator=fixed(950),
        quotas={
            "a": QuotaLimits(tokens_per_minute=TPM),
            "b": QuotaLimits(requests_per_minute=120),
        },
    )
    processor = make_processor(fake_clock, config=config, observers=[metrics])
    await run_batch(processor, [*items(a, *"abcde"), *items(b, "v", "w", "x", "y")], fake_clock)

    snapshot = await metrics.get_metrics()
    assert snapshot["items_succeeded"] == 9
    quota = snapshot["quota"]
    assert list(quota) == ["a", "b"] or list(quota) == ["b", "a"]
    assert quota["a"]["admission_wait_total"] == pytest.approx(0 + 0.95 + 1.9 + 2.85 + 3.8)
    assert quota["a"]["admission_wait_count"] == 5
    assert quota["a"]["avg_admission_wait"] == pytest.approx(1.9)
    # At t=3.8, 5 reservations of 950 over 4.8 s: 59,375 a minute, 99% of the limit.
    assert quota["a"]["tokens_per_minute"] == pytest.approx(59_375.0)
    assert quota["a"]["tokens_per_minute_limit"] == 60_000.0
    assert quota["a"]["requests_per_minute"] == pytest.approx(5 * 60 / 4.8)
    assert quota["a"]["requests_per_minute_limit"] is None
    # "b": calls at 0, 0, 0.5, 1.0; waits 0 + 0 + 0.5 + 1.0.
    assert quota["b"]["admission_wait_total"] == pytest.approx(1.5)
    assert quota["b"]["requests_per_minute"] == pytest.approx(4 * 60 / 2.0)
    assert quota["b"]["requests_per_minute_limit"] == 120.0
    assert quota["b"]["tokens_per_minute_limit"] is None
    assert snapshot["admission_wait_total"] == pytest.approx(11.0)
    assert snapshot["admission_wait_count"] == 9
    assert snapshot["avg_admission_wait"] == pytest.approx(11.0 / 9)


def quota_event(scope: str, wait: float, **extra: Any) -> dict[str, Any]:
    return {
        "item_id": "i",
        "duration": 0.5,
        "tokens": 30,
        "admission_wait": wait,
        "quota_scope": scope,
        "quota_limits": {"requests": 60.0, "tokens": 1_000.0},
        "quota_used": {
            "requests": 5.0,
            "tokens": 150.0,
            "input_tokens": 100.0,
            "output_tokens": 50.0,
        },
        "quota_window": 30.0,
        **extra,
    }


async def test_metrics_prometheus_export_adds_the_quota_families() -> None:
    metrics = MetricsObserver()
    await metrics.on_event(ProcessingEvent.ITEM_COMPLETED, quota_event("gpt", 0.5))
    await metrics.on_event(
        ProcessingEvent.ITEM_FAILED, {**quota_event("gpt", 1.0), "error_type": "E"}
    )
    text = await metrics.export_prometheus()
    # The 0.6.0 families come first, unchanged; the new ones after them.
    head, tail = text.split("# HELP async_batch_llm_admission_wait_seconds ", 1)
    assert head.startswith("# HELP async_batch_llm_items_processed Total items processed\n")
    assert 'async_batch_llm_errors_total{error_type="E"} 1\n' in head
    assert tail == (
        "Time items waited for quota admission (seconds)\n"
        "# TYPE async_batch_llm_admission_wait_seconds summary\n"
        'async_batch_llm_admission_wait_seconds_sum{quota_scope="gpt"} 1.5\n'
        'async_batch_llm_admission_wait_seconds_count{quota_scope="gpt"} 2\n'
        "\n"
        "# HELP async_batch_llm_quota_used_per_minute "
        "Quota units used per minute over the last minute\n"
        "# TYPE async_batch_llm_quota_used_per_minute gauge\n"
        'async_batch_llm_quota_used_per_minute{quota_scope="gpt",dimension="requests"} 10.0\n'
        'async_batch_llm_quota_used_per_minute{quota_scope="gpt",dimension="tokens"} 300.0\n'
        'async_batch_llm_quota_used_per_minute{quota_scope="gpt",dimension="input_tokens"}'
        " 200.0\n"
        'async_batch_llm_quota_used_per_minute{quota_scope="gpt",dimension="output_tokens"}'
        " 100.0\n"
        "\n"
        "# HELP async_batch_llm_quota_limit_per_minute "
        "Per-minute quota limit in force (declared or learned)\n"
        "# TYPE async_batch_llm_quota_limit_per_minute gauge\n"
        'async_batch_llm_quota_limit_per_minute{quota_scope="gpt",dimension="requests"}'
        " 60.0\n"
        'async_batch_llm_quota_limit_per_minute{quota_scope="gpt",dimension="tokens"}'
        " 1000.0\n"
    )


async def test_metrics_without_admission_data_keep_the_060_shape() -> None:
    metrics = MetricsObserver()
    await metrics.on_event(ProcessingEvent.ITEM_COMPLETED, {"item_id": "i", "duration": 1.0})
    snapshot = await metrics.get_metrics()
    assert list(snapshot)[-1] == "success_rate"
    assert "admission_wait" not in await metrics.export_prometheus()


async def test_metrics_reset_forgets_the_quota_figures() -> None:
    metrics = MetricsObserver()
    await metrics.on_event(ProcessingEvent.ITEM_COMPLETED, quota_event("s", 2.0))
    assert (await metrics.get_metrics())["quota"]["s"]["admission_wait_total"] == 2.0
    assert '"quota"' in await metrics.export_json()
    metrics.reset()
    assert "quota" not in await metrics.get_metrics()
    assert "quota" not in await metrics.export_prometheus()
