"""The single writer: one thread that group-commits records while the event loop keeps working.

Workers hand a record over with :meth:`ArtifactWriter.submit` (a list append) and take the next
item; they never wait for the disk. Whenever the thread is free, the loop hands it everything
pending as one group, already made into what the store commits (for SQLite: the statements,
rows joined into one JSON text each). The thread only commits it with the store and schedules
the ``on_committed`` callback on the loop with the payloads of that group, in submit order.

So all the Python work per record runs on the loop, which runs anyway; the thread needs the GIL
only a few times per group (to take it, to bind one text, to report back), and a loop busy with
Python barely waits for it. Commits go back to back: the group of a commit is whatever arrived
while the previous one was being written, so groups grow with the load by themselves and a
record waits for at most about one commit's duration. That window is what a crash can still
lose of answers already paid for (they are called again on resume), so it is kept as short as
the disk allows rather than spaced out by a timer. ``commit_interval`` is the lag the writer is
expected to stay within: a commit lag above twice that is logged as a warning.

A loop that never lets go of the GIL (every worker busy in Python) would starve the thread:
woken, it still waits for the GIL. So while a group has been with the thread for a quarter
interval, :meth:`ArtifactWriter.submit` hands the GIL over (``time.sleep(0)``), at most once a
millisecond; and a thread done with its group is given the next one by the next submit, even if
the loop never gets to run the thread's callback.

Groups are handed over one at a time and their callbacks run in order, so every submitted payload
reaches exactly one callback, in submit order, even after a failure: once a write fails the
writer is dead, and that group and every later payload go to ``on_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import ArtifactRecord, fields_of

__all__ = ["ArtifactWriter", "WriterStatistics"]

logger = logging.getLogger("async_batch_llm.artifacts")

P = TypeVar("P")

_YIELD_SPACING = 0.001
"""Seconds between two GIL hand-overs of :meth:`ArtifactWriter.submit_encoded`."""


@dataclass(frozen=True)
class WriterStatistics:
    """A snapshot of an :class:`ArtifactWriter`.

    Attributes:
        submitted: records handed to :meth:`ArtifactWriter.submit`.
        committed: records written by a successful group commit.
        pending: records neither committed nor routed to ``on_failed`` yet.
        commits: successful group commits.
        max_lag: longest time, in seconds, from a submit to the commit of its record.
        last_lag: the longest such time within the most recent commit.
        failed: the exception that killed the writer, or ``None``.
    """

    submitted: int
    committed: int
    pending: int
    commits: int
    max_lag: float
    last_lag: float
    failed: BaseException | None


class _Group(Generic[P]):
    """One hand-over: what the store commits, and for whom."""

    __slots__ = ("oldest", "payloads", "prepared")

    def __init__(self, prepared: object, payloads: list[P], oldest: float) -> None:
        self.prepared = prepared
        self.payloads = payloads  # one per record, in submit order
        self.oldest = oldest  # monotonic submit time of its first record


class ArtifactWriter(Generic[P]):
    """Commits records on a thread of its own and reports back on the event loop.

    Args:
        store: where the records go; only this writer's thread calls its ``write``.
        loop: the event loop the callbacks run on (the loop that calls :meth:`submit`).
        on_committed: called on the loop with the payloads of each committed group, in
            submit order.
        on_failed: called on the loop with the write's exception and payloads, for the group
            whose write failed and for every payload submitted after it.
        commit_interval: the commit lag (seconds from a submit to its commit) to stay within;
            twice that is logged as a warning; ``None`` takes the store's.

    Raises:
        ValueError: ``commit_interval`` is not a finite number > 0.
    """

    def __init__(
        self,
        store: ArtifactStore,
        loop: asyncio.AbstractEventLoop,
        *,
        on_committed: Callable[[list[P]], None],
        on_failed: Callable[[BaseException, list[P]], None],
        commit_interval: float | None = None,
    ) -> None:
        interval = store.commit_interval if commit_interval is None else commit_interval
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise ValueError(f"commit_interval must be > 0, got {interval!r}")
        self._store = store
        self.encode_fields, self._prepare, self._write = store._writer_parts()
        """The store's encoder of one record given as its fields (see :meth:`submit_encoded`)."""
        self._loop = loop
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._interval = float(interval)

        # Loop side: records not handed to the thread yet (encoded on the loop, see
        # ArtifactStore._encode_fields), their payloads, and when the oldest was submitted.
        self._rows: list[object] = []
        self._payloads: list[P] = []
        self._oldest = 0.0
        # The hand-over: the loop puts a group in _group only while _free (the thread is done
        # with the last one); the thread takes it, commits, reports, then sets _free again.
        self._cond = threading.Condition(threading.Lock())
        self._group: _Group[P] | None = None
        self._free = True
        self._handed_at = 0.0  # when the group the thread holds was handed over
        self._yield_at = 0.0  # no GIL hand-over (see submit_encoded) before this time
        self._dirty = False  # committed since the last idle upkeep
        self._warned_at = -math.inf
        self._starved_after = self._interval / 4
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._done: asyncio.Future[None] | None = None

        # Counters. submitted, routed_failed and delivered change on the loop thread; the
        # others on the writer thread (single writers each, read anywhere).
        self._submitted = 0
        self._committed = 0
        self._routed_failed = 0
        self._commits = 0
        self._max_lag = 0.0
        self._last_lag = 0.0
        self._failed: BaseException | None = None
        self._delivered = 0
        self._drain_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def start(self) -> None:
        """Start the writer thread (a daemon). Calling it again does nothing.

        Raises:
            RuntimeError: the writer was closed.
        """
        if self._closed:
            raise RuntimeError("ArtifactWriter is closed; create a new one")
        if self._thread is not None:
            return
        self._done = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, name="async-batch-llm-artifact-writer", daemon=True
        )
        self._thread.start()

    def submit(self, record: ArtifactRecord, payload: P) -> None:
        """Queue ``record``; ``payload`` comes back through exactly one callback.

        Never blocks and never fails on account of the store: after a failed write the payload
        is routed to ``on_failed``. Call on the loop thread.

        Raises:
            RuntimeError: the writer was closed.
        """
        self.submit_encoded(self.encode_fields(*fields_of(record)), payload)

    def submit_encoded(self, encoded: object, payload: P) -> None:
        """:meth:`submit` for a record already encoded by :attr:`encode_fields` (the hot path).

        Raises:
            RuntimeError: the writer was closed.
        """
        if self._closed:
            raise RuntimeError("ArtifactWriter is closed; the record was not accepted")
        rows = self._rows
        if not rows:
            self._oldest = time.monotonic()
        rows.append(encoded)
        self._payloads.append(payload)
        self._submitted += 1
        if self._free:
            self._hand_over()
            return
        now = time.monotonic()
        if (
            now - self._handed_at > self._starved_after
            and now >= self._yield_at
            and self._thread is not None
        ):
            # The thread has held its group for a while: a loop that never lets go of the GIL
            # may be starving it (woken, it still waits for the GIL). Hand the GIL over, at most
            # once a millisecond (each hand-over can cost the loop a turn of the thread).
            self._yield_at = now + _YIELD_SPACING
            time.sleep(0)
            if self._free:
                self._hand_over()

    def _hand_over(self) -> None:
        """Give everything pending to the thread as one group (on the loop, thread free)."""
        rows, payloads = self._rows, self._payloads
        if not rows:
            return
        self._rows, self._payloads = [], []
        failed = self._failed
        if failed is None:
            try:
                prepared = self._prepare(rows)
            except Exception as exc:  # a malformed record: the group fails like a write
                self._failed = failed = exc
        if failed is not None:
            # Every earlier group's callback is scheduled already (the thread is free): this
            # one comes after them.
            self._route_failed(failed, payloads)
            return
        self._free = False
        self._handed_at = time.monotonic()
        with self._cond:
            self._group = _Group(prepared, payloads, self._oldest)
            self._cond.notify()

    async def drain(self) -> None:
        """Return once everything submitted before the call is committed or failed and its
        callback has run on the loop.

        Raises:
            RuntimeError: records are pending but the writer was never started.
        """
        target = self._submitted
        if self._delivered >= target:
            return
        if self._thread is None:
            raise RuntimeError("ArtifactWriter.drain() with records pending: call start() first")
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append((target, waiter))
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            self._drain_waiters = [(t, w) for t, w in self._drain_waiters if w is not waiter]

    async def close(self) -> None:
        """Drain, then stop the thread and wait for it without blocking the loop. Idempotent.

        Later :meth:`submit` calls raise :class:`RuntimeError`.
        """
        if self._closed:
            if self._done is not None:
                await asyncio.shield(self._done)
            return
        await self.drain()
        self._closed = True
        if self._thread is None or self._done is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        await asyncio.shield(self._done)
        # The thread resolved _done as its last act; joining it now is immediate.
        self._thread.join()

    def statistics(self) -> WriterStatistics:
        """Return a snapshot of the counters (see :class:`WriterStatistics`)."""
        committed = self._committed
        routed = self._routed_failed
        return WriterStatistics(
            submitted=self._submitted,
            committed=committed,
            pending=self._submitted - committed - routed,
            commits=self._commits,
            max_lag=self._max_lag,
            last_lag=self._last_lag,
            failed=self._failed,
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        state = "failed" if stats.failed else "closed" if self._closed else "running"
        return (
            f"<ArtifactWriter {state} submitted={stats.submitted} committed={stats.committed} "
            f"pending={stats.pending} commits={stats.commits} max_lag={stats.max_lag:.3f}s>"
        )

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_until_stopped()
        finally:
            self._call_soon(self._finish)

    def _loop_until_stopped(self) -> None:
        cond = self._cond
        maintain = self._store._idle_maintenance
        while True:
            with cond:
                while self._group is None:
                    if self._stopping:
                        return
                    # After commits, wait at most an interval: a writer idle that long does
                    # the store's upkeep (a WAL checkpoint) where no record waits for it.
                    if not cond.wait(self._interval if self._dirty else None):
                        break
                group, self._group = self._group, None
            if group is None:  # idle for an interval
                self._dirty = False
                if self._failed is None:
                    maintain()
                continue
            self._commit(group)

    def _commit(self, group: _Group[P]) -> None:
        """Commit one group and schedule its callback, then take the next (writer thread)."""
        if self._failed is not None:
            self._route_failed(self._failed, group.payloads)
        else:
            try:
                self._write(group.prepared)
            except BaseException as exc:
                self._failed = exc
                self._route_failed(exc, group.payloads)
            else:
                self._committed += len(group.payloads)
                self._commits += 1
                self._dirty = True
                self._note_lag(group.oldest)
                self._call_soon(self._deliver_committed, group.payloads)
        # Only now (its callback scheduled) may the loop hand over the next group.
        self._free = True
        self._call_soon(self._next_group)

    def _note_lag(self, oldest: float) -> None:
        now = time.monotonic()
        lag = now - oldest
        self._last_lag = lag
        if lag > self._max_lag:
            self._max_lag = lag
        if lag > 2 * self._interval and now - self._warned_at > 60.0:
            self._warned_at = now
            logger.warning(
                "artifact store %r: a record waited %.3f s for its commit (commit_interval "
                "%.3f s); answers not committed yet are paid again after a crash",
                self._store,
                lag,
                self._interval,
            )

    def _route_failed(self, exc: BaseException, payloads: list[P]) -> None:
        self._routed_failed += len(payloads)
        self._call_soon(self._deliver_failed, exc, payloads)

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    # -- on the loop ---------------------------------------------------------------------------

    def _next_group(self) -> None:
        if self._free:
            self._hand_over()

    def _deliver_committed(self, payloads: list[P]) -> None:
        try:
            self._on_committed(payloads)
        finally:
            self._delivered_up_to(len(payloads))

    def _deliver_failed(self, exc: BaseException, payloads: list[P]) -> None:
        try:
            self._on_failed(exc, payloads)
        finally:
            self._delivered_up_to(len(payloads))

    def _delivered_up_to(self, count: int) -> None:
        self._delivered += count
        if not self._drain_waiters:
            return
        delivered = self._delivered
        for target, waiter in self._drain_waiters:
            if target <= delivered and not waiter.done():
                waiter.set_result(None)

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
