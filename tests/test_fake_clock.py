"""FakeClock (virtual time) and wait_all_tasks_blocked."""

from __future__ import annotations

import asyncio

import pytest

from async_batch_llm._internal.clock import Clock
from async_batch_llm.testing import clock as clock_module
from async_batch_llm.testing.clock import FakeClock, wait_all_tasks_blocked


def test_module_exports() -> None:
    assert clock_module.__all__ == ["FakeClock", "wait_all_tasks_blocked"]


def test_satisfies_the_processor_clock_protocol() -> None:
    clock: Clock = FakeClock()  # checked by mypy
    assert isinstance(clock, Clock)
    assert clock.time() == 0.0


def test_start_time_and_repr() -> None:
    clock = FakeClock(start=100)
    assert clock.time() == 100.0
    assert isinstance(clock.time(), float)
    assert repr(clock) == "FakeClock(time=100.0, pending_sleepers=0)"


async def test_time_does_not_move_on_its_own() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await wait_all_tasks_blocked()
    await asyncio.sleep(0.001)  # real time passes; virtual time does not
    assert clock.time() == 0.0
    assert not task.done()
    assert clock.pending_sleepers == 1
    assert repr(clock) == "FakeClock(time=0.0, pending_sleepers=1)"
    await clock.advance(10)
    assert task.done()


async def test_advance_wakes_sleepers_in_deadline_order_at_their_deadlines() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.time()))

    tasks = [
        asyncio.create_task(sleeper("c", 30)),
        asyncio.create_task(sleeper("a", 10)),
        asyncio.create_task(sleeper("d", 90)),
        asyncio.create_task(sleeper("b", 20)),
    ]
    await clock.advance(60)
    assert woke == [("a", 10.0), ("b", 20.0), ("c", 30.0)]
    assert clock.time() == 60.0
    assert clock.pending_sleepers == 1
    assert [t.done() for t in tasks] == [True, True, False, True]

    await clock.advance(29.5)
    assert len(woke) == 3
    await clock.advance(0.5)
    assert woke[-1] == ("d", 90.0)
    assert clock.pending_sleepers == 0


async def test_advance_exactly_to_a_deadline_wakes_it() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(5))
    await clock.advance(4.999)
    assert not task.done()
    await clock.advance(0.001)
    assert clock.time() == 5.0
    assert task.done()


async def test_sleepers_with_the_same_deadline_wake_in_start_order() -> None:
    clock = FakeClock()
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep(1)
        woke.append(n)

    for n in range(5):
        asyncio.create_task(sleeper(n))  # noqa: RUF006 - all awaited via advance below
    await clock.advance(1)
    assert woke == [0, 1, 2, 3, 4]


async def test_sleeps_started_by_woken_tasks_within_the_span_also_wake() -> None:
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            await clock.sleep(10)
            ticks.append(clock.time())

    task = asyncio.create_task(ticker())
    await clock.advance(35)
    assert ticks == [10.0, 20.0, 30.0]
    assert clock.time() == 35.0
    await clock.advance(25)
    assert ticks == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert task.done()


async def test_advance_lets_new_tasks_reach_their_sleep_first() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(60))
    # The task has not run yet; advance lets it register its sleep at t=0 before moving time.
    await clock.advance(60)
    assert task.done()


async def test_woken_tasks_run_until_blocked_before_advance_returns() -> None:
    clock = FakeClock()
    steps: list[str] = []
    event = asyncio.Event()

    async def first() -> None:
        await clock.sleep(1)
        steps.append("first woke")
        event.set()

    async def second() -> None:
        await event.wait()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        steps.append("second ran")

    asyncio.create_task(first())  # noqa: RUF006 - finishes during advance
    asyncio.create_task(second())  # noqa: RUF006 - finishes during advance
    await clock.advance(1)
    assert steps == ["first woke", "second ran"]


async def test_advance_zero_runs_ready_tasks_without_moving_time() -> None:
    clock = FakeClock(start=3.0)
    ran: list[bool] = []

    async def job() -> None:
        ran.append(True)

    asyncio.create_task(job())  # noqa: RUF006 - finishes during advance
    await clock.advance(0)
    assert ran == [True]
    assert clock.time() == 3.0


async def test_advance_rejects_negative_durations() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match=r"^seconds must be >= 0, got -1$"):
        await clock.advance(-1)


@pytest.mark.parametrize("seconds", [0, 0.0, -5.0], ids=["int-zero", "float-zero", "negative"])
async def test_non_positive_sleep_yields_once_without_parking(seconds: float) -> None:
    clock = FakeClock()
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    asyncio.create_task(other())  # noqa: RUF006 - runs during the yield below
    order.append("before")
    await clock.sleep(seconds)
    order.append("after")
    assert order == ["before", "other", "after"]
    assert clock.pending_sleepers == 0
    assert clock.time() == 0.0


async def test_sleep_zero_works_when_asyncio_sleep_is_patched_with_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    await clock.sleep(0)  # must not recurse into itself
    task = asyncio.create_task(asyncio.sleep(5))
    await clock.advance(5)
    assert task.done()


async def test_cancelled_sleeper_is_removed() -> None:
    clock = FakeClock()
    doomed = asyncio.create_task(clock.sleep(10))
    survivor = asyncio.create_task(clock.sleep(20))
    await wait_all_tasks_blocked()
    assert clock.pending_sleepers == 2

    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert clock.pending_sleepers == 1
    assert len(clock._sleepers) == 1

    await clock.advance(20)
    assert survivor.done()
    assert clock.pending_sleepers == 0


async def test_cancelling_a_sleeper_after_it_was_woken_is_clean() -> None:
    clock = FakeClock()
    woke: list[bool] = []

    async def sleeper() -> None:
        await clock.sleep(1)
        woke.append(True)

    task = asyncio.create_task(sleeper())
    await wait_all_tasks_blocked()
    # Wake the sleeper's future by hand, then cancel before the task resumes.
    _, _, future = clock._sleepers[0]
    clock._sleepers.clear()
    future.set_result(None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert woke == []
    assert clock.pending_sleepers == 0


async def test_timeout_around_a_fake_sleep_cancels_it_cleanly() -> None:
    clock = FakeClock()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.001):
            await clock.sleep(1000)
    assert clock.pending_sleepers == 0


async def test_pending_sleepers_ignores_cancelled_but_not_yet_cleaned_sleepers() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await wait_all_tasks_blocked()
    task.cancel()  # the future is cancelled now; the task cleans up when it next runs
    assert clock.pending_sleepers == 0
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_until_idle_jumps_through_every_sleep() -> None:
    clock = FakeClock()
    log: list[tuple[str, float]] = []

    async def worker(name: str, delays: list[float]) -> None:
        for delay in delays:
            await clock.sleep(delay)
            log.append((name, clock.time()))

    tasks = [
        asyncio.create_task(worker("a", [5, 5, 5])),
        asyncio.create_task(worker("b", [12, 100])),
    ]
    await clock.run_until_idle()
    assert all(t.done() for t in tasks)
    assert log == [("a", 5.0), ("a", 10.0), ("b", 12.0), ("a", 15.0), ("b", 112.0)]
    assert clock.time() == 112.0
    assert clock.pending_sleepers == 0


async def test_run_until_idle_returns_when_tasks_wait_on_something_else() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    reached: list[float] = []

    async def waiter() -> None:
        await clock.sleep(7)
        reached.append(clock.time())
        await event.wait()
        await clock.sleep(1)
        reached.append(clock.time())

    task = asyncio.create_task(waiter())
    await clock.run_until_idle()
    assert reached == [7.0]
    assert not task.done()
    assert clock.pending_sleepers == 0

    event.set()
    await clock.run_until_idle()
    assert reached == [7.0, 8.0]
    assert task.done()


async def test_run_until_idle_without_sleepers_returns_immediately() -> None:
    clock = FakeClock(start=1.0)
    await clock.run_until_idle()
    assert clock.time() == 1.0


async def test_run_until_idle_reaches_deadlines_exactly_despite_rounding() -> None:
    clock = FakeClock()

    async def chain() -> None:
        for _ in range(3):
            await clock.sleep(0.1)

    task = asyncio.create_task(chain())
    await clock.run_until_idle()
    assert task.done()
    assert clock.time() == 0.1 + 0.1 + 0.1


async def test_wait_all_tasks_blocked_runs_wakeup_chains() -> None:
    events = [asyncio.Event() for _ in range(20)]
    done: list[int] = []

    async def relay(i: int) -> None:
        await events[i].wait()
        await asyncio.sleep(0)
        done.append(i)
        if i + 1 < len(events):
            events[i + 1].set()

    tasks = [asyncio.create_task(relay(i)) for i in range(len(events))]
    events[0].set()
    await wait_all_tasks_blocked()
    assert done == list(range(20))
    assert all(t.done() for t in tasks)


async def test_wait_all_tasks_blocked_returns_while_tasks_wait() -> None:
    never = asyncio.Event()
    task = asyncio.create_task(never.wait())
    await wait_all_tasks_blocked()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wait_all_tasks_blocked_with_nothing_else_running() -> None:
    await wait_all_tasks_blocked()


async def test_wait_all_tasks_blocked_falls_back_to_bounded_yields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clock_module, "_ready_queue", lambda loop: None)
    done: list[int] = []

    async def hops() -> None:
        for i in range(10):
            await asyncio.sleep(0)
            done.append(i)

    task = asyncio.create_task(hops())
    await wait_all_tasks_blocked()
    assert task.done()
    assert done == list(range(10))


async def test_fake_clock_drives_timeouts_of_code_using_it() -> None:
    clock = FakeClock()

    async def retry_with_backoff() -> list[float]:
        attempts: list[float] = []
        for delay in [1.0, 2.0, 4.0]:
            attempts.append(clock.time())
            await clock.sleep(delay)
        attempts.append(clock.time())
        return attempts

    task = asyncio.create_task(retry_with_backoff())
    await clock.advance(3)
    assert not task.done()
    await clock.advance(4)
    assert await task == [0.0, 1.0, 3.0, 7.0]
