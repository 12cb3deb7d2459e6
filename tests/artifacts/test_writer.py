"""ArtifactWriter: group commits on its own thread, callbacks on the loop, failure routing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import ArtifactRecord, ArtifactStoreError
from async_batch_llm._internal.artifacts.sqlite import SqliteArtifactStore
from async_batch_llm._internal.artifacts.writer import ArtifactWriter

WRITER_THREAD = "async-batch-llm-artifact-writer"


def record(n: int) -> ArtifactRecord:
    return ArtifactRecord(str(n), "fp", True, "str", f"out-{n}", None, {"input_tokens": 1})


class MemoryStore(ArtifactStore):
    """Keeps each write() group; can hold a write open or fail the n-th one."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        fail_on_write: int | None = None,
        hold_first_write: bool = False,
        commit_interval: float = 0.01,
    ) -> None:
        super().__init__(
            tmp_path / "memory", output_type=None, version=None, commit_interval=commit_interval
        )
        self.groups: list[list[str]] = []
        self.writes = 0
        self.written = threading.Condition()
        self.fail_on_write = fail_on_write
        self.error = ArtifactStoreError("disk on fire")
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first_write:
            self.release.set()

    def write(self, records: Sequence[ArtifactRecord]) -> None:
        self.writes += 1
        self.entered.set()
        assert self.release.wait(10)
        if self.writes == self.fail_on_write:
            raise self.error
        with self.written:
            self.groups.append([r.item_id for r in records])
            self.written.notify_all()

    def wait_for_records(self, count: int) -> bool:
        with self.written:
            return self.written.wait_for(lambda: self.count() >= count, timeout=10)

    def lookup(self, item_id: str) -> ArtifactRecord | None:
        raise NotImplementedError

    def iter_latest(self) -> Iterator[ArtifactRecord]:
        raise NotImplementedError

    def count(self) -> int:
        return sum(len(group) for group in self.groups)


class Callbacks:
    """Collects every callback with the thread it ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[int], BaseException | None]] = []
        self.threads: set[int] = set()
        self.changed = asyncio.Event()

    def committed(self, payloads: list[int]) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("committed", payloads, None))
        self.changed.set()

    def failed(self, exc: BaseException, payloads: list[int]) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("failed", payloads, exc))
        self.changed.set()

    def payloads(self, kind: str) -> list[int]:
        return [p for k, group, _ in self.events if k == kind for p in group]

    async def wait_for(self, kind: str, count: int) -> None:
        while len(self.payloads(kind)) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout=10)


def make_writer(store: ArtifactStore, callbacks: Callbacks, **kwargs: Any) -> ArtifactWriter[int]:
    writer: ArtifactWriter[int] = ArtifactWriter(
        store,
        asyncio.get_running_loop(),
        on_committed=callbacks.committed,
        on_failed=callbacks.failed,
        **kwargs,
    )
    writer.start()
    return writer


async def test_callbacks_run_on_the_loop_in_submit_order(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    for n in range(500):
        writer.submit(record(n), n)
        if n % 50 == 0:
            await asyncio.sleep(0)
    await writer.drain()
    assert callbacks.payloads("committed") == list(range(500))
    assert callbacks.threads == {threading.get_ident()}
    assert [r for group in store.groups for r in group] == [str(n) for n in range(500)]
    stats = writer.statistics()
    assert (stats.submitted, stats.committed, stats.pending, stats.failed) == (500, 500, 0, None)
    assert stats.commits == len(store.groups)
    await writer.close()


async def test_records_arriving_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path, hold_first_write=True)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    writer.submit(record(0), 0)
    assert await asyncio.to_thread(store.entered.wait, 10)
    for n in range(1, 100):
        writer.submit(record(n), n)
    assert writer.statistics().pending == 100
    store.release.set()
    await writer.drain()
    assert store.groups == [["0"], [str(n) for n in range(1, 100)]]
    assert [group for _, group, _ in callbacks.events] == [[0], list(range(1, 100))]
    stats = writer.statistics()
    assert stats.commits == 2
    assert stats.commits < stats.submitted
    await writer.close()


async def test_first_record_after_idle_is_committed_without_waiting_the_interval(
    tmp_path: Path,
) -> None:
    store = MemoryStore(tmp_path)
    callbacks = Callbacks()
    # An interval far beyond the wait below: a commit seen here did not wait for it.
    writer = make_writer(store, callbacks, commit_interval=300.0)
    writer.submit(record(0), 0)
    await callbacks.wait_for("committed", 1)
    assert store.groups == [["0"]]
    await writer.close()


async def test_commits_go_back_to_back_never_spaced_by_the_interval(tmp_path: Path) -> None:
    # Records that arrived during a commit are committed right after it: waiting out an
    # interval would only widen the window of paid answers a crash loses.
    store = MemoryStore(tmp_path, hold_first_write=True)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks, commit_interval=300.0)
    writer.submit(record(0), 0)
    assert await asyncio.to_thread(store.entered.wait, 10)
    for n in range(1, 10):
        writer.submit(record(n), n)
    store.release.set()
    await callbacks.wait_for("committed", 10)  # times out after 10 s, far below 300 s
    assert store.groups == [["0"], [str(n) for n in range(1, 10)]]
    for n in range(10, 13):
        writer.submit(record(n), n)
        await asyncio.wait_for(writer.drain(), timeout=10)
        assert callbacks.payloads("committed") == list(range(n + 1))
    await writer.close()


async def test_a_commit_lag_beyond_twice_the_interval_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore(tmp_path, hold_first_write=True, commit_interval=0.001)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    writer.submit(record(0), 0)
    assert await asyncio.to_thread(store.entered.wait, 10)
    await asyncio.sleep(0.01)  # the record has now waited at least 10 x the interval
    with caplog.at_level("WARNING", logger="async_batch_llm.artifacts"):
        store.release.set()
        await writer.drain()
    assert writer.statistics().max_lag >= 0.01
    assert any(
        "waited" in r.getMessage() and "paid again" in r.getMessage() for r in caplog.records
    )
    await writer.close()


async def test_drain_with_nothing_pending_returns_at_once(tmp_path: Path) -> None:
    writer = make_writer(MemoryStore(tmp_path), Callbacks())
    await asyncio.wait_for(writer.drain(), timeout=1)
    await writer.close()


async def test_drain_before_start_with_records_pending_is_misuse(tmp_path: Path) -> None:
    callbacks = Callbacks()
    writer: ArtifactWriter[int] = ArtifactWriter(
        MemoryStore(tmp_path),
        asyncio.get_running_loop(),
        on_committed=callbacks.committed,
        on_failed=callbacks.failed,
    )
    writer.submit(record(0), 0)
    with pytest.raises(RuntimeError, match=r"call start\(\) first"):
        await writer.drain()
    writer.start()
    await writer.close()
    assert callbacks.payloads("committed") == [0]


async def test_a_failed_write_routes_that_group_and_every_later_payload_to_on_failed(
    tmp_path: Path,
) -> None:
    store = MemoryStore(tmp_path, fail_on_write=2)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    writer.submit(record(0), 0)
    await writer.drain()
    for n in range(1, 4):
        writer.submit(record(n), n)
    await writer.drain()
    assert writer.statistics().failed is store.error
    writer.submit(record(4), 4)  # the writer is dead: routed, never dropped
    writer.submit(record(5), 5)
    await writer.drain()

    assert callbacks.payloads("committed") == [0]
    assert callbacks.payloads("failed") == [1, 2, 3, 4, 5]
    assert all(exc is store.error for kind, _, exc in callbacks.events if kind == "failed")
    assert callbacks.events[0][0] == "committed"
    assert store.writes == 2  # nothing is written after the failure
    stats = writer.statistics()
    assert (stats.submitted, stats.committed, stats.pending) == (6, 1, 0)
    await writer.close()


async def test_close_drains_then_refuses_submits_and_stops_the_thread(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks, commit_interval=300.0)
    for n in range(10):
        writer.submit(record(n), n)
    await writer.close()
    assert callbacks.payloads("committed") == list(range(10))
    assert WRITER_THREAD not in {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(record(10), 10)
    with pytest.raises(RuntimeError, match="closed"):
        writer.start()
    await asyncio.wait_for(writer.close(), timeout=1)  # idempotent


async def test_start_twice_runs_one_thread(tmp_path: Path) -> None:
    writer = make_writer(MemoryStore(tmp_path), Callbacks())
    writer.start()
    names = [t.name for t in threading.enumerate()]
    assert names.count(WRITER_THREAD) == 1
    await writer.close()


async def test_a_raising_callback_still_lets_drain_return(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    seen: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["exception"]))

    def explode(payloads: list[int]) -> None:
        raise ValueError(f"callback bug {payloads}")

    writer: ArtifactWriter[int] = ArtifactWriter(
        MemoryStore(tmp_path), loop, on_committed=explode, on_failed=Callbacks().failed
    )
    writer.start()
    writer.submit(record(0), 0)
    await asyncio.wait_for(writer.drain(), timeout=10)
    await writer.close()
    loop.set_exception_handler(None)
    assert [str(exc) for exc in seen] == ["callback bug [0]"]


def test_a_closed_loop_does_not_kill_the_thread(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path, hold_first_write=True)
    callbacks = Callbacks()
    loop = asyncio.new_event_loop()
    writer: ArtifactWriter[int] = ArtifactWriter(
        store, loop, on_committed=callbacks.committed, on_failed=callbacks.failed
    )
    writer.start()
    writer.submit(record(0), 0)
    assert store.entered.wait(10)
    loop.close()
    store.release.set()  # the commit completes; scheduling its callback hits a closed loop
    deadline = time.monotonic() + 10
    while not writer._free and time.monotonic() < deadline:  # done with record 0
        time.sleep(0.001)
    writer.submit(record(1), 1)  # handed over at once: the thread is free
    # The thread survived the closed loop and commits the next record too.
    assert store.wait_for_records(2)
    assert store.groups == [["0"], ["1"]]
    assert callbacks.events == []
    # close() needs the loop; with it gone, stop the thread by hand so it does not linger.
    thread = writer._thread
    assert thread is not None
    with writer._cond:
        writer._stopping = True
        writer._cond.notify()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("interval", [0, -0.5, float("nan")])
async def test_commit_interval_is_validated(tmp_path: Path, interval: float) -> None:
    with pytest.raises(ValueError, match="commit_interval must be > 0"):
        make_writer(MemoryStore(tmp_path), Callbacks(), commit_interval=interval)


async def test_commits_keep_coming_while_the_loop_is_saturated(tmp_path: Path) -> None:
    interval = 0.02
    store = SqliteArtifactStore(tmp_path / "a.db", commit_interval=interval)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    n = 0
    started = time.monotonic()
    # About a second of pure-Python CPU work on the loop thread (some per record, like a
    # post-processor would do), yielding to the loop only every 2000 records.
    while time.monotonic() - started < 1.0:
        for _ in range(50):
            sum(i * i for i in range(1000))
            writer.submit(record(n), n)
            n += 1
        if n % 2000 == 0:
            await asyncio.sleep(0)
    during = writer.statistics()
    await writer.close()
    stats = writer.statistics()
    store.close()
    print(
        f"saturated loop: {n} records, {stats.commits} commits, "
        f"max_lag {stats.max_lag * 1000:.1f} ms, last_lag {stats.last_lag * 1000:.1f} ms"
    )
    assert during.commits >= 10  # the writer made progress while the loop never let go
    assert stats.committed == n
    assert callbacks.payloads("committed") == list(range(n))
    assert stats.max_lag < 5 * interval + 0.1


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
async def test_built_in_stores_encode_on_the_loop_and_commit_what_was_encoded(
    tmp_path: Path, kind: str
) -> None:
    # The Python work of encoding happens in submit(), on the loop thread; the thread only
    # writes. A record that cannot be encoded fails its group like any failed write.
    from async_batch_llm._internal.artifacts.jsonl import JsonlArtifactStore

    store: ArtifactStore = (
        SqliteArtifactStore(tmp_path / "a.db")
        if kind == "sqlite"
        else JsonlArtifactStore(tmp_path / "a.jsonl")
    )
    encoded_on: set[int] = set()
    encode = store._encode_fields

    def spy(*fields: Any) -> object:
        encoded_on.add(threading.get_ident())
        return encode(*fields)

    store._encode_fields = spy  # type: ignore[method-assign, assignment]
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    for n in range(5):
        writer.submit(record(n), n)
    await writer.drain()
    assert encoded_on == {threading.get_ident()}
    assert callbacks.payloads("committed") == list(range(5))
    assert store.lookup("3") == record(3)

    bad = ArtifactRecord("6", "fp", True, "str", "x", None, {"input_tokens": 1.5j})  # type: ignore[dict-item]
    writer.submit(bad, 6)
    await writer.drain()
    assert callbacks.payloads("failed") == [6]
    assert isinstance(writer.statistics().failed, ArtifactStoreError)
    assert store.lookup("6") is None
    await writer.close()
    store.close()


async def test_a_store_that_overrides_write_gets_plain_records(tmp_path: Path) -> None:
    seen: list[object] = []

    class Audited(SqliteArtifactStore):
        def write(self, records: Sequence[ArtifactRecord]) -> None:
            seen.extend(records)
            super().write(records)

    store = Audited(tmp_path / "a.db")
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    writer.submit(record(0), 0)
    await writer.close()
    assert seen == [record(0)]
    assert store.lookup("0") == record(0)
    store.close()


class UpkeepStore(MemoryStore):
    """Counts the writer's idle upkeep calls."""

    def __init__(self, tmp_path: Path, **kwargs: Any) -> None:
        super().__init__(tmp_path, **kwargs)
        self.upkeep = threading.Event()
        self.upkeeps = 0

    def _idle_maintenance(self) -> None:
        self.upkeeps += 1
        self.upkeep.set()


async def test_upkeep_runs_once_the_writer_has_been_idle_an_interval_after_commits(
    tmp_path: Path,
) -> None:
    store = UpkeepStore(tmp_path)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks, commit_interval=0.01)
    assert not await asyncio.to_thread(store.upkeep.wait, 0.1)  # no commit yet: no upkeep
    writer.submit(record(0), 0)
    await writer.drain()
    assert await asyncio.to_thread(store.upkeep.wait, 10)
    assert store.upkeeps == 1
    # Idle with nothing committed since: the thread sleeps, no further upkeep.
    await asyncio.sleep(0.1)  # ten intervals
    assert store.upkeeps == 1
    await writer.close()
    assert store.upkeeps == 1


async def test_no_upkeep_while_records_keep_coming(tmp_path: Path) -> None:
    store = UpkeepStore(tmp_path)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks, commit_interval=300.0)
    for n in range(50):
        writer.submit(record(n), n)
        await writer.drain()
    assert store.upkeeps == 0  # never idle for a whole interval
    await writer.close()


def test_sqlite_checkpoints_only_in_upkeep_or_after_many_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from async_batch_llm._internal.artifacts import sqlite as sqlite_module

    store = SqliteArtifactStore(tmp_path / "a.db")
    assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    checkpoints: list[int] = []
    real = store._checkpoint

    def counting() -> None:
        checkpoints.append(store._since_checkpoint)
        real()

    store._checkpoint = counting  # type: ignore[method-assign]
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_WHEN_IDLE", 10)
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_EVEN_IF_BUSY", 25)
    store.write([record(n) for n in range(5)])
    store._idle_maintenance()
    assert checkpoints == []  # too little to bother
    store.write([record(n) for n in range(5, 12)])
    store._idle_maintenance()
    assert checkpoints == [12]
    store.write([record(n) for n in range(12, 40)])  # past the busy limit: inline
    assert checkpoints == [12, 28]
    assert store._since_checkpoint == 0
    assert store.count() == 40
    store.close()


async def test_records_are_committed_while_the_loop_never_lets_go_of_the_gil(
    tmp_path: Path,
) -> None:
    # A saturated event loop (here: a CPU-bound stretch that never awaits) used to starve the
    # writer thread of the GIL: nothing was committed until the loop paused, so a crash then
    # lost every paid answer of the stretch. Submit hands the GIL over, and commits itself when
    # that was not enough, so records keep being committed within a few intervals.
    store = SqliteArtifactStore(tmp_path / "a.db", commit_interval=0.05)
    callbacks = Callbacks()
    writer = make_writer(store, callbacks)
    n = 0
    stop = time.monotonic() + 0.6
    while time.monotonic() < stop:
        writer.submit(record(n), n)
        n += 1
        for _ in range(300):  # a worker's Python work per item
            pass
    busy = writer.statistics()
    assert busy.committed > 0
    assert busy.commits >= 3
    assert busy.max_lag < 0.25  # wide margin over the 0.05 s interval; starved it was ~0.3-0.6
    await writer.close()
    assert callbacks.payloads("committed") == list(range(n))
    store.close()
