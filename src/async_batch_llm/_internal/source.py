"""A lazy, bounded source of work items for the workers of a streaming run.

:class:`Feed` reads an ``Iterable`` or ``AsyncIterable`` one element at a time, in its own task
(:meth:`Feed.run`), and turns each element into an :class:`LLMWorkItem`. Two bounds keep memory
flat however long the source is:

- at most ``max_waiting`` items wait for a worker (the feeder pauses while that many wait);
- at most ``capacity`` items are *in the system* (read but whose result the consumer has not
  taken yet): the feeder takes a slot before reading an element, :meth:`Feed.release` gives it
  back when the consumer takes that item's result. A slow consumer therefore slows the reading
  of the source instead of letting results pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, cast

from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._types import LLMWorkItem, TContext, TInput, TOutput

__all__ = ["Feed", "PromptSource"]

PromptSource = Iterable[Any] | AsyncIterable[Any]
"""Elements are prompts (``str``), ``(item_id, prompt)`` pairs or ``LLMWorkItem``\\ s."""


class Feed(Generic[TInput, TOutput, TContext]):
    """Reads ``source`` lazily into a small waiting line that workers take items from.

    Args:
        source: the elements (see :data:`PromptSource`).
        strategy: the strategy of elements that are not ``LLMWorkItem``\\ s.
        max_waiting: most items read and not yet taken by a worker (>= 1).
        capacity: most items read whose result has not been released (>= ``max_waiting``).
        on_item: called once per item read (the processor counts its total there).
        keep_positions: remember each item's position in the source (for ordered results).
    """

    def __init__(
        self,
        source: PromptSource,
        strategy: LLMCallStrategy[TOutput] | None,
        *,
        max_waiting: int,
        capacity: int,
        on_item: Callable[[], None] | None = None,
        keep_positions: bool = False,
    ) -> None:
        if isinstance(source, (str, bytes)) or not (isinstance(source, (AsyncIterable, Iterable))):
            raise TypeError(
                "prompts must be an iterable or async iterable of prompts (str), (item_id, "
                f"prompt) pairs or LLMWorkItems, got {type(source).__name__}: {source!r:.100}"
            )
        self._source = source
        self._strategy = strategy
        self.max_waiting = max_waiting
        self.capacity = capacity
        self._on_item = on_item
        self._waiting: deque[LLMWorkItem[TInput, TOutput, TContext]] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._room: asyncio.Future[None] | None = None
        self._slots = asyncio.Semaphore(capacity)
        self._in_flight: set[str] = set()
        self.positions: dict[str, int] | None = {} if keep_positions else None
        self.read = 0
        """Elements read from the source so far."""
        self.error: BaseException | None = None
        """Why reading stopped early (a bad element or a failing source), else ``None``."""
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"<Feed read={self.read} waiting={len(self._waiting)} in_flight={len(self._in_flight)}"
            f" closed={self.closed}>"
        )

    # ------------------------------------------------------------------------- worker side

    async def get(self) -> LLMWorkItem[TInput, TOutput, TContext] | None:
        """The next item, waiting for the source if needed; ``None`` once it is exhausted."""
        waiting = self._waiting
        while not waiting:
            if self.closed:
                return None
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                if getter in self._getters:
                    self._getters.remove(getter)
                raise
        item = waiting.popleft()
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)
        return item

    def take_waiting(self) -> list[LLMWorkItem[TInput, TOutput, TContext]]:
        """Remove and return every item still waiting (the batch stopped before them)."""
        items = list(self._waiting)
        self._waiting.clear()
        return items

    def release(self, item_id: str) -> None:
        """The consumer took ``item_id``'s result: its slot may be used for a new element."""
        if item_id in self._in_flight:
            self._in_flight.discard(item_id)
            self._slots.release()

    def close(self) -> None:
        """Read nothing more; workers get ``None`` once the waiting items are taken."""
        self.closed = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    # ------------------------------------------------------------------------- feeder side

    async def run(self) -> None:
        """Read the source until it ends, the feed is closed or an element is bad."""
        source = self._source
        iterator: Iterator[Any] | AsyncIterator[Any]
        is_async = isinstance(source, AsyncIterable)
        iterator = (
            aiter(cast(AsyncIterable[Any], source))
            if is_async
            else iter(cast(Iterable[Any], source))
        )
        exhausted = False
        try:
            while not self.closed:
                while len(self._waiting) >= self.max_waiting:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
                    if self.closed:
                        return
                await self._slots.acquire()
                try:
                    if is_async:
                        raw = await anext(cast(AsyncIterator[Any], iterator))
                    else:
                        raw = next(cast(Iterator[Any], iterator))
                except (StopIteration, StopAsyncIteration):
                    self._slots.release()
                    exhausted = True
                    return
                if self.closed:  # closed while reading: nothing will take this item
                    self._slots.release()
                    return
                self._add(self._make_item(raw))
        except Exception as exc:  # a bad element, or the source itself failed
            self.error = exc
        finally:
            self.close()
            if not exhausted:
                await _close_iterator(iterator)

    def _add(self, item: LLMWorkItem[TInput, TOutput, TContext]) -> None:
        item_id = item.item_id
        if item_id in self._in_flight:
            self._slots.release()
            raise ValueError(
                f"item_id {item_id!r} appears twice in the prompts while its first item is "
                "still being processed; item ids must be unique within a stream"
            )
        self._in_flight.add(item_id)
        if self.positions is not None:
            self.positions[item_id] = self.read
        self.read += 1
        if self._on_item is not None:
            self._on_item()
        self._waiting.append(item)
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    def _make_item(self, raw: object) -> LLMWorkItem[TInput, TOutput, TContext]:
        if isinstance(raw, LLMWorkItem):
            return cast(LLMWorkItem[TInput, TOutput, TContext], raw)
        strategy = self._strategy
        if strategy is None:
            raise TypeError(
                f"element {self.read} of the prompts is a {type(raw).__name__}, but no strategy "
                "was given; pass a strategy or give LLMWorkItems"
            )
        if isinstance(raw, str):
            return LLMWorkItem(item_id=str(self.read), strategy=strategy, prompt=raw)
        if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], str):
            return LLMWorkItem(item_id=raw[0], strategy=strategy, prompt=raw[1])
        raise TypeError(
            f"element {self.read} of the prompts must be a prompt (str), an (item_id, prompt) "
            f"pair with a str item_id, or an LLMWorkItem; got {type(raw).__name__}: {raw!r:.100}"
        )


async def _close_iterator(iterator: object) -> None:
    """Close a source left unfinished (an async generator's ``finally`` runs now)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # the source's own cleanup cannot fail the batch
            await close()
        return
    close = getattr(iterator, "close", None)
    if close is not None and not inspect.iscoroutinefunction(close):
        with contextlib.suppress(Exception):  # the source's own cleanup cannot fail the batch
            close()
