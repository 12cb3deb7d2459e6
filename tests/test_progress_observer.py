"""RichProgressObserver and the figures behind it (ProgressTracker), with an injected clock."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import threading
import time
from typing import Any

import pytest

from async_batch_llm import GuardrailConfig, RichProgressObserver, TokenUsage
from async_batch_llm._internal.progress import (
    ProgressTracker,
    format_cost,
    format_duration,
    format_line,
)
from async_batch_llm.observers import ProcessingEvent
from async_batch_llm.observers import RichProgressObserver as FromObservers
from async_batch_llm.testing.clock import FakeClock

from .conftest import (
    RateLimitError,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)

E = ProcessingEvent


def feed(tracker: ProgressTracker, *events: tuple[float, ProcessingEvent, dict[str, Any]]) -> None:
    for now, event, data in events:
        tracker.on_event(event, data, now)


def test_counts_items_retries_and_what_is_in_flight() -> None:
    tracker = ProgressTracker()
    feed(
        tracker,
        (0.0, E.BATCH_STARTED, {"total": 3}),
        (0.0, E.ITEM_STARTED, {"item_id": "a"}),
        (0.0, E.ITEM_STARTED, {"item_id": "b"}),
        (1.0, E.ITEM_COMPLETED, {"item_id": "a", "tokens": 10}),
        (1.0, E.ITEM_STARTED, {"item_id": "b"}),  # b's second attempt
        (2.0, E.ITEM_FAILED, {"item_id": "b"}),
        (2.0, E.ITEM_STARTED, {"item_id": "c"}),
    )
    snap = tracker.snapshot(2.0)
    assert (snap.total, snap.done, snap.succeeded, snap.failed) == (3, 2, 1, 1)
    assert snap.retries == 1
    assert snap.in_flight == 1
    assert snap.items_per_second == pytest.approx(1.0)
    assert snap.eta == pytest.approx(1.0)  # one item left at one item per second
    assert not snap.finished


def test_rates_cover_the_last_minute_and_scale_while_it_is_younger() -> None:
    tracker = ProgressTracker(max_requests_per_minute=100, max_tokens_per_minute=1000)
    feed(tracker, (0.0, E.BATCH_STARTED, {"total": 100}))
    for i in range(10):
        feed(
            tracker,
            (float(i), E.ITEM_STARTED, {"item_id": str(i)}),
            (float(i) + 0.5, E.ITEM_COMPLETED, {"item_id": str(i), "tokens": 30}),
        )
    young = tracker.snapshot(10.0)
    assert young.requests_per_minute == pytest.approx(10 * 60 / 10)
    assert young.tokens_per_minute == pytest.approx(300 * 60 / 10)
    assert (young.max_requests_per_minute, young.max_tokens_per_minute) == (100, 1000)
    # At 65 s the window is (5 s, 65 s]: items 6..9 started in it, items 5..9 finished in it.
    later = tracker.snapshot(65.0)
    assert later.requests_per_minute == pytest.approx(4)
    assert later.tokens_per_minute == pytest.approx(5 * 30)
    assert tracker.snapshot(200.0).requests_per_minute == 0


def test_the_cooldown_counts_down_and_ends() -> None:
    tracker = ProgressTracker()
    feed(
        tracker,
        (0.0, E.BATCH_STARTED, {"total": 1}),
        (1.0, E.RATE_LIMIT_HIT, {"item_id": "a"}),
        (1.0, E.COOLDOWN_STARTED, {"duration": 30.0}),
    )
    assert tracker.snapshot(1.0).rate_limits == 1
    assert tracker.snapshot(11.0).cooldown_remaining == pytest.approx(20.0)
    feed(tracker, (31.0, E.COOLDOWN_ENDED, {"duration": 30.0}))
    assert tracker.snapshot(31.0).cooldown_remaining is None


def test_eta_is_unknown_without_a_total_or_a_finished_item_and_zero_when_done() -> None:
    tracker = ProgressTracker()
    feed(tracker, (0.0, E.BATCH_STARTED, {"total": 0}), (1.0, E.ITEM_COMPLETED, {"item_id": "a"}))
    assert tracker.snapshot(2.0).eta is None  # a streamed source: total unknown
    feed(tracker, (3.0, E.BATCH_COMPLETED, {}))
    done = tracker.snapshot(50.0)
    assert done.finished
    assert done.eta == 0.0
    assert done.elapsed == pytest.approx(3.0)  # frozen at completion


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (0.4, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (7440, "2h04m")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_line_holds_every_figure() -> None:
    tracker = ProgressTracker(total=4, max_requests_per_minute=60)
    feed(
        tracker,
        (0.0, E.BATCH_STARTED, {}),
        (0.0, E.ITEM_STARTED, {"item_id": "a"}),
        (2.0, E.ITEM_COMPLETED, {"item_id": "a", "tokens": 1200}),
        (2.0, E.COOLDOWN_STARTED, {"duration": 90}),
    )
    assert format_line(tracker.snapshot(2.0)) == (
        "items 1/4 (25%) | ok 1 | failed 0 | 0.5 items/s | req/min 30/60 | tok/min 36,000 | "
        "retries 0 | cooldown 1m30s | spend — | elapsed 2s | ETA 6s"
    )


# ---------------------------------------------------------------------------------- observer


def test_the_observer_is_public_at_the_top_level_and_in_observers() -> None:
    assert RichProgressObserver is FromObservers


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fancy"}, "mode must be one of ['auto', 'live', 'lines'], got 'fancy'"),
        ({"interval": 0}, "interval must be > 0, got 0"),
        ({"refresh_per_second": -1}, "refresh_per_second must be > 0, got -1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RichProgressObserver(**kwargs)


def test_auto_writes_lines_when_the_file_is_not_a_terminal() -> None:
    assert RichProgressObserver(file=io.StringIO()).mode == "lines"


def test_the_panel_without_rich_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'async-batch-llm[rich]'")):
        RichProgressObserver(mode="live", file=io.StringIO())
    RichProgressObserver(mode="lines", file=io.StringIO())  # lines need no extra


class Lines(io.StringIO):
    """A log file whose writers can be waited for."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = threading.Condition()

    def write(self, text: str) -> int:
        with self.wrote:
            written = super().write(text)
            self.wrote.notify_all()
        return written

    def wait_for_lines(self, count: int, timeout: float = 10.0) -> None:
        with self.wrote:
            assert self.wrote.wait_for(lambda: self.getvalue().count("\n") >= count, timeout)


async def test_lines_come_periodically_and_a_last_one_at_completion() -> None:
    log = Lines()
    observer = RichProgressObserver(mode="lines", file=log, interval=0.01, title="t")
    gate = asyncio.Event()
    strategy = ScriptedStrategy(gate=gate)
    processor = make_processor(observers=[observer])
    batch = asyncio.create_task(run_batch(processor, items(strategy, "a", "b", "c")))
    # Two periodic lines while every call waits at the gate: nothing is finished yet.
    await asyncio.to_thread(log.wait_for_lines, 2)
    gate.set()
    result = await batch
    assert result.succeeded == 3
    lines = log.getvalue().splitlines()
    assert len(lines) >= 3
    assert lines[0].startswith("[t] items 0/3 (0%) | ok 0 |")
    assert re.match(r"\[t\] items 3/3 \(100%\) \| ok 3 \| failed 0 \| .* \| done$", lines[-1])
    observer.close()  # idempotent after completion
    assert len(log.getvalue().splitlines()) == len(lines)


async def test_failures_and_retries_reach_the_last_line(fake_clock: FakeClock) -> None:
    log = io.StringIO()
    observer = RichProgressObserver(mode="lines", file=log, interval=60)
    strategy = ScriptedStrategy(
        {"b": [TimeoutError("slow")] * 3, "c": [RateLimitError(), RateLimitError()]},
        clock=fake_clock,
    )
    processor = make_processor(fake_clock, observers=[observer])
    result = await run_batch(processor, items(strategy, "a", "b", "c"), fake_clock)
    assert (result.succeeded, result.failed) == (2, 1)
    last = log.getvalue().splitlines()[-1]
    assert "items 3/3 (100%) | ok 2 | failed 1 |" in last
    # b: 2 retries after its first attempt; c: 2 attempts cut by a rate limit, then its third.
    assert "| retries 4 |" in last


async def test_the_panel_draws_the_final_figures_when_the_batch_completes() -> None:
    screen = io.StringIO()
    observer = RichProgressObserver(
        mode="live", file=screen, max_requests_per_minute=600, title="demo"
    )
    strategy = ScriptedStrategy()
    processor = make_processor(observers=[observer])
    await run_batch(processor, items(strategy, "a", "b"))
    text = screen.getvalue()
    assert "demo" in text
    assert re.search(r"Items\s+2/2\s+\(100%\)", text), text
    assert re.search(r"Succeeded / failed\s+2 / 0", text)
    assert re.search(r"Requests/min\s+[\d,]+/600", text)
    assert re.search(r"ETA\s+done", text)


def test_close_stops_the_line_thread_of_a_batch_that_never_completed() -> None:
    log = io.StringIO()
    observer = RichProgressObserver(mode="lines", file=log, interval=60)
    asyncio.run(observer.on_event(E.BATCH_STARTED, {"total": 5}))
    started = time.monotonic()
    with observer:
        pass
    assert time.monotonic() - started < 5  # did not wait for the 60 s interval
    assert "items 0/5" in log.getvalue()
    assert not any(t.name == "async-batch-llm-progress" for t in threading.enumerate())


def test_rates_of_the_first_second_are_counted_over_one_second() -> None:
    tracker = ProgressTracker()
    feed(tracker, (0.0, E.BATCH_STARTED, {}), (0.1, E.ITEM_STARTED, {"item_id": "a"}))
    assert tracker.snapshot(0.2).requests_per_minute == pytest.approx(60)


async def test_the_panel_counts_the_cooldown_down_on_the_observer_clock() -> None:
    from rich.console import Console

    now = [100.0]
    observer = RichProgressObserver(
        mode="live", file=io.StringIO(), max_tokens_per_minute=5000, clock=lambda: now[0]
    )
    await observer.on_event(E.BATCH_STARTED, {"total": 10})
    await observer.on_event(E.ITEM_STARTED, {"item_id": "a"})
    await observer.on_event(E.RATE_LIMIT_HIT, {"item_id": "a"})
    await observer.on_event(E.COOLDOWN_STARTED, {"duration": 30.0})
    now[0] = 112.0
    screen = io.StringIO()
    Console(file=screen, width=100).print(observer)
    text = screen.getvalue()
    observer.close()
    assert re.search(r"Cooldown\s+18s left", text), text
    assert re.search(r"Retries\s+0\s+\(rate limited 1\)", text)
    assert re.search(r"Tokens/min\s+0/5,000", text)
    assert re.search(r"Items\s+0/10\s+\(0%\)", text)
    assert re.search(r"ETA\s+—", text)  # nothing finished yet: no throughput to project


def test_limits_reported_by_the_quota_gate_are_shown_for_a_single_scope() -> None:
    tracker = ProgressTracker(max_tokens_per_minute=9000)
    gate = {"quota_scope": "openai:m", "quota_limits": {"requests": 500, "tokens": 20000}}
    feed(
        tracker,
        (0.0, E.BATCH_STARTED, {}),
        (1.0, E.ITEM_COMPLETED, {"item_id": "a", "tokens": 5, **gate}),
    )
    snap = tracker.snapshot(1.0)
    assert snap.max_requests_per_minute == 500  # learned from the gate
    assert snap.max_tokens_per_minute == 9000  # given: wins over the gate's
    other = {"quota_scope": "anthropic:m", "quota_limits": {"requests": 50}}
    feed(tracker, (2.0, E.ITEM_FAILED, {"item_id": "b", **other}))
    assert tracker.snapshot(2.0).max_requests_per_minute is None  # two scopes: no one figure


# ---------------------------------------------------------------------------------- spend


def test_spend_and_projection_come_from_the_cost_of_item_events() -> None:
    tracker = ProgressTracker()
    feed(tracker, (0.0, E.BATCH_STARTED, {"total": 10}))
    assert tracker.snapshot(0.0).spend is None  # nothing priced yet
    feed(
        tracker,
        (1.0, E.ITEM_COMPLETED, {"item_id": "a", "cost": 0.25}),
        (1.0, E.ITEM_FAILED, {"item_id": "b", "cost": 0.05}),
        # Replayed or never started: finished, but no cost of this run to average.
        (1.0, E.ITEM_COMPLETED, {"item_id": "c", "replayed": True}),
        (1.0, E.ITEM_STARTED, {"item_id": "d", "cost": 9.0}),  # not an item end
    )
    snap = tracker.snapshot(1.0)
    assert snap.spend == pytest.approx(0.30)
    # $0.15 per priced item, 7 items left: 0.30 + 7 * 0.15.
    assert snap.projected_cost == pytest.approx(1.35)
    feed(tracker, (2.0, E.BATCH_COMPLETED, {}))
    done = tracker.snapshot(2.0)
    assert done.projected_cost == done.spend == pytest.approx(0.30)


def test_no_projection_without_a_total_and_bad_costs_are_ignored() -> None:
    tracker = ProgressTracker()
    feed(
        tracker,
        (0.0, E.BATCH_STARTED, {"total": 0}),
        (1.0, E.ITEM_COMPLETED, {"item_id": "a", "cost": 0.5}),
        (1.0, E.ITEM_COMPLETED, {"item_id": "b", "cost": float("nan")}),
        (1.0, E.ITEM_COMPLETED, {"item_id": "c", "cost": -1}),
        (1.0, E.ITEM_COMPLETED, {"item_id": "d", "cost": True}),
    )
    snap = tracker.snapshot(1.0)
    assert snap.spend == 0.5
    assert snap.projected_cost is None


@pytest.mark.parametrize(
    ("dollars", "text"),
    [(None, "—"), (0.0, "$0.000000"), (0.000045, "$0.000045"), (0.0123, "$0.0123"),
     (1234.567, "$1,234.57")],
)  # fmt: skip
def test_format_cost(dollars: float | None, text: str) -> None:
    assert format_cost(dollars) == text


def test_a_line_shows_spend_and_projection_once_priced() -> None:
    tracker = ProgressTracker(total=4)
    feed(
        tracker,
        (0.0, E.BATCH_STARTED, {}),
        (2.0, E.ITEM_COMPLETED, {"item_id": "a", "tokens": 10, "cost": 0.02}),
    )
    assert format_line(tracker.snapshot(2.0)) == (
        "items 1/4 (25%) | ok 1 | failed 0 | 0.5 items/s | req/min 0 | tok/min 300 | "
        "retries 0 | spend $0.0200 (projected $0.0800) | elapsed 2s | ETA 6s"
    )


async def test_the_panel_shows_spend_and_projection() -> None:
    from rich.console import Console

    now = [0.0]
    observer = RichProgressObserver(mode="live", file=io.StringIO(), clock=lambda: now[0])
    await observer.on_event(E.BATCH_STARTED, {"total": 4})
    screen = io.StringIO()
    Console(file=screen, width=100).print(observer)
    assert re.search(r"Spend / projected\s+— / —", screen.getvalue())
    now[0] = 1.0
    await observer.on_event(E.ITEM_COMPLETED, {"item_id": "a", "cost": 1.5})
    screen = io.StringIO()
    Console(file=screen, width=100).print(observer)
    observer.close()
    assert re.search(r"Spend / projected\s+\$1\.50 / \$6\.00", screen.getvalue()), screen.getvalue()


async def test_a_priced_batch_ends_with_its_total_cost_in_the_last_line() -> None:
    log = io.StringIO()
    observer = RichProgressObserver(mode="lines", file=log, interval=60)
    strategy = ScriptedStrategy()

    def price(model: str, usage: TokenUsage) -> float:
        return 0.01 * usage.get("total_tokens", 0)  # 15 tokens a call: $0.15

    config = make_config(guardrails=GuardrailConfig(cost_function=price))
    processor = make_processor(config=config, observers=[observer])
    result = await run_batch(processor, items(strategy, "a", "b", "c"))
    assert result.total_cost == pytest.approx(0.45)
    last = log.getvalue().splitlines()[-1]
    assert "| spend $0.4500 (projected $0.4500) |" in last, last
