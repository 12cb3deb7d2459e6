"""``RichProgressObserver``: a live panel of a running batch, or periodic lines in a log.

On a terminal it draws a panel with `rich <https://rich.readthedocs.io>`_ (the ``rich`` extra):
items done and failed, throughput, requests and tokens per minute against their limits,
retries, the cooldown countdown, spend and ETA. Anywhere else (a file, a pipe, CI) it writes one
plain line every few seconds and a last one when the batch completes; that mode needs no extra.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self

from async_batch_llm._internal.progress import (
    ProgressSnapshot,
    ProgressTracker,
    format_cost,
    format_duration,
    format_line,
    format_rate,
)
from async_batch_llm.observers.base import BaseObserver, ProcessingEvent

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

__all__ = ["RichProgressObserver"]

_INSTALL_HINT = (
    "the live panel of RichProgressObserver needs rich; install it with: "
    "pip install 'async-batch-llm[rich]' (or use mode='lines')"
)
_MODES = ("auto", "live", "lines")


class RichProgressObserver(BaseObserver):
    """Show a batch's progress live on a terminal, or as periodic lines elsewhere.

    Pass it in ``observers=[...]``. It starts drawing at ``BATCH_STARTED`` and stops at
    ``BATCH_COMPLETED``; call :meth:`close` (or use it as a context manager) to stop it when a
    batch ends otherwise (cancelled, failed). Spend so far and the projected total come from
    the ``cost`` of item events, so they show ``"—"`` unless a ``cost_function`` prices the
    calls (``GuardrailConfig``); the projection is the spend so far plus the average spend
    per priced item times the items left.

    Args:
        total: number of items, when the processor cannot know it (a streamed source);
            ``BATCH_STARTED`` gives it otherwise.
        max_requests_per_minute: the requests-per-minute limit shown next to the rate;
            without it, the limit the quota gate reports in item events is shown (a batch
            with one quota scope).
        max_tokens_per_minute: the tokens-per-minute limit shown next to the rate, likewise.
        mode: ``"live"`` (the panel), ``"lines"`` (plain lines) or ``"auto"`` (the panel when
            ``file`` is a terminal, else lines).
        file: where to write; ``sys.stderr`` by default, so the output of a program stays clean.
        interval: seconds between two lines in lines mode.
        refresh_per_second: redraws of the panel per second.
        title: the panel's title (and the prefix of each line).
        clock: monotonic time source in seconds (tests inject a fake one).

    Raises:
        ValueError: ``mode`` is not one of ``"auto"``, ``"live"``, ``"lines"``, or ``interval``
            / ``refresh_per_second`` is not positive.
        ImportError: the panel is needed and rich is not installed (the message says how to
            install it).
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        mode: Literal["auto", "live", "lines"] = "auto",
        file: IO[str] | None = None,
        interval: float = 5.0,
        refresh_per_second: float = 4.0,
        title: str = "async-batch-llm",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be > 0, got {refresh_per_second!r}")
        self.file: IO[str] = sys.stderr if file is None else file
        if mode == "auto":
            isatty = getattr(self.file, "isatty", None)
            mode = "live" if callable(isatty) and isatty() else "lines"
        self.mode: Literal["auto", "live", "lines"] = mode
        self.interval = float(interval)
        self.refresh_per_second = float(refresh_per_second)
        self.title = title
        self._clock = clock
        self._tracker = ProgressTracker(
            total=total,
            max_requests_per_minute=max_requests_per_minute,
            max_tokens_per_minute=max_tokens_per_minute,
        )
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        if mode == "live":
            try:
                import rich  # noqa: F401  # checked here, used when the batch starts
            except ImportError as exc:
                raise ImportError(_INSTALL_HINT) from exc

    # -- events ---------------------------------------------------------------------------------

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        """Fold the event into the figures; start drawing on the first, stop on completion."""
        with self._lock:
            self._tracker.on_event(event, data, self._clock())
        if not self._started and not self._closed:
            self._start()
        if event is ProcessingEvent.BATCH_COMPLETED:
            self.close()

    def snapshot(self) -> ProgressSnapshot:
        """The figures now (what the next redraw or line shows)."""
        with self._lock:
            return self._tracker.snapshot(self._clock())

    # -- drawing --------------------------------------------------------------------------------

    def _start(self) -> None:
        self._started = True
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.file)
            self._live = Live(
                get_renderable=self.__rich__,
                console=console,
                refresh_per_second=self.refresh_per_second,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        else:
            self._thread = threading.Thread(
                target=self._print_lines, name="async-batch-llm-progress", daemon=True
            )
            self._thread.start()

    def _print_lines(self) -> None:
        while not self._stop.wait(self.interval):
            self._write_line()

    def _write_line(self) -> None:
        try:
            self.file.write(f"[{self.title}] {format_line(self.snapshot())}\n")
            self.file.flush()
        except (OSError, ValueError):  # closed or broken output: stop quietly
            self._stop.set()

    def __rich__(self) -> RenderableType:
        """The panel of the figures now (rich calls this; `Console().print(observer)` too)."""
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        snap = self.snapshot()
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        total = snap.total
        items = f"{snap.done}/{total}" if total is not None else str(snap.done)
        if total:
            items += f"  ({100 * snap.done / total:.0f}%)"
        table.add_row("Items", items)
        if total:
            table.add_row("", ProgressBar(total=total, completed=snap.done, width=40))
        failed = f"[red]{snap.failed}[/red]" if snap.failed else "0"
        table.add_row("Succeeded / failed", f"{snap.succeeded} / {failed}")
        table.add_row("In flight", str(snap.in_flight))
        table.add_row("Throughput", f"{snap.items_per_second:.1f} items/s")
        table.add_row(
            "Requests/min",
            format_rate(snap.requests_per_minute, snap.max_requests_per_minute),
        )
        table.add_row("Tokens/min", format_rate(snap.tokens_per_minute, snap.max_tokens_per_minute))
        table.add_row("Retries", f"{snap.retries}  (rate limited {snap.rate_limits})")
        cooldown = snap.cooldown_remaining
        table.add_row(
            "Cooldown",
            "—" if cooldown is None else f"[yellow]{format_duration(cooldown)} left[/yellow]",
        )
        table.add_row(
            "Spend / projected",
            f"{format_cost(snap.spend)} / {format_cost(snap.projected_cost)}",
        )
        table.add_row("Elapsed", format_duration(snap.elapsed))
        table.add_row("ETA", "done" if snap.finished else format_duration(snap.eta))
        return Panel(table, title=self.title, expand=False)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop drawing: a last redraw (or line) of the final figures. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._live is not None:
            live, self._live = self._live, None
            live.refresh()
            live.stop()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.join()
            self._write_line()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("drawing" if self._started else "idle")
        return f"<RichProgressObserver mode={self.mode} {state}>"
