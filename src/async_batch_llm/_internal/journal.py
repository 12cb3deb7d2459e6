"""The processor's side of an artifact store: replay before the call, journal before publishing.

One :class:`Journal` serves one run of a processor that was given an ``artifact_store``:

- :meth:`Journal.replay` looks an item up before any call is made. A record is replayed only for
  the same ``item_id`` *and* the same fingerprint (prompt, strategy identity, store version), and
  only as the resume policy allows; anything else is called again.
- :meth:`Journal.submit` turns a finished result into a record and hands it to the single writer
  thread; the worker moves on at once. The result is published (``on_committed``) only after its
  record is committed, so no one sees an answer that a crash could still lose.

The store and the writer are their own modules (``_internal/artifacts/``); this one only adapts
work items and results to records.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, Generic

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import (
    ArtifactStoreError,
    ResumePolicy,
    UnstorableOutputError,
    decode_output,
    encode_output,
    fingerprint_hasher,
    item_fingerprint,
    strategy_identity,
)
from async_batch_llm._internal.artifacts.writer import ArtifactWriter
from async_batch_llm._types import LLMWorkItem, TContext, TInput, TOutput, WorkItemResult
from async_batch_llm.observers.base import ProcessingEvent

__all__ = ["ItemEvent", "Journal", "Published"]

logger = logging.getLogger("async_batch_llm.artifacts")

ItemEvent = tuple[ProcessingEvent, dict[str, Any]]
"""An item's ``ITEM_COMPLETED``/``ITEM_FAILED`` event, held back until its record is committed."""

Published = WorkItemResult[Any, Any] | tuple[WorkItemResult[Any, Any], ItemEvent]
"""What the writer hands back once committed: the result, or the result and its held-back
event (a bare result when there is no event, which spares a tuple per item)."""


class Journal(Generic[TInput, TOutput, TContext]):
    """Replays and records the items of one run against one :class:`ArtifactStore`.

    Args:
        store: where records live.
        policy: what may be replayed (``NONE`` replays nothing, only records).
    """

    __slots__ = (
        "_identities",
        "_stamp",
        "_writer",
        "output_type",
        "policy",
        "replaying",
        "store",
        "version",
    )

    def __init__(self, store: ArtifactStore, policy: ResumePolicy) -> None:
        self.store = store
        self.policy = policy
        self.replaying = policy is not ResumePolicy.NONE
        self.output_type = store.output_type
        self.version = store.version
        # id(strategy) -> (strategy, identity): the strategy is held so its id stays its own.
        self._identities: dict[int, tuple[object, hashlib.blake2b, str]] = {}
        self._writer: ArtifactWriter[Published] | None = None
        self._stamp = -1.0  # the created_at given to the records of the current millisecond

    # ------------------------------------------------------------------------- fingerprints

    def fingerprint(self, item: LLMWorkItem[TInput, TOutput, TContext]) -> str:
        """The fingerprint a record of ``item`` carries (the strategy's part hashed once)."""
        strategy = item.strategy
        entry = self._identities.get(id(strategy))
        if entry is None or entry[0] is not strategy:
            identity = strategy_identity(strategy)
            entry = self._identities[id(strategy)] = (
                strategy,
                fingerprint_hasher(identity, self.version),
                identity,
            )
        prompt = item.prompt
        if type(prompt) is str:
            hasher = entry[1].copy()
            hasher.update(prompt.encode("utf-8", "surrogatepass"))
            return hasher.hexdigest()
        return item_fingerprint(prompt, entry[2], self.version)

    # ------------------------------------------------------------------------- replay

    def replay(
        self, item: LLMWorkItem[TInput, TOutput, TContext]
    ) -> WorkItemResult[TOutput, TContext] | None:
        """The stored result of ``item`` if the policy lets it be reused, else ``None``."""
        record = self.store.lookup(item.item_id)
        if record is None:
            return None
        if not record.success and self.policy is not ResumePolicy.REUSE_ALL:
            return None
        if record.fingerprint != self.fingerprint(item):
            return None  # the item changed since: call it again
        try:
            output = decode_output(record.output_kind, record.output, self.output_type)
        except ArtifactStoreError as exc:
            # E.g. the output type changed and the old payload no longer validates: paying again
            # is the only way to a result of the type the caller now expects.
            logger.warning(
                "record of item %s cannot be replayed (%s); calling again", item.item_id, exc
            )
            return None
        usage = dict(record.token_usage)
        return WorkItemResult(
            item_id=item.item_id,
            success=record.success,
            output=output,  # type: ignore[arg-type]  # decoded to the stored type
            error=record.error,
            context=item.context,
            token_usage=usage,  # type: ignore[arg-type]  # the stored usage keys
            replayed_from_artifact=True,
            error_category=record.error_category,
            cost=record.cost,
        )

    @staticmethod
    def replay_event(result: WorkItemResult[Any, Any]) -> ItemEvent:
        """The item event a replayed result is published with (no tokens spent this run)."""
        if result.success:
            data: dict[str, Any] = {
                "item_id": result.item_id,
                "duration": 0.0,
                "tokens": 0,
                "replayed": True,
            }
            return ProcessingEvent.ITEM_COMPLETED, data
        error_type = (result.error or "").split(":", 1)[0] or "Error"
        return ProcessingEvent.ITEM_FAILED, {
            "item_id": result.item_id,
            "error_type": error_type,
            "replayed": True,
        }

    # ------------------------------------------------------------------------- recording

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        on_committed: Callable[[list[Published]], None],
        on_failed: Callable[[BaseException, list[Published]], None],
    ) -> None:
        """Start the writer thread for this run."""
        writer: ArtifactWriter[Published] = ArtifactWriter(
            self.store, loop, on_committed=on_committed, on_failed=on_failed
        )
        writer.start()
        self._writer = writer

    def submit(
        self,
        item: LLMWorkItem[TInput, TOutput, TContext],
        result: WorkItemResult[TOutput, TContext],
        event: ItemEvent | None,
    ) -> None:
        """Hand ``result`` to the writer; it is published once committed. Never waits.

        An output the store cannot hold fails the item here (its tokens kept), and that failure
        is what gets recorded and published.
        """
        writer = self._writer
        assert writer is not None, "Journal.start() comes first"
        try:
            kind, payload = encode_output(result.output, self.output_type)
        except UnstorableOutputError as exc:
            logger.error("item %s: %s", item.item_id, exc)
            result = WorkItemResult(
                item_id=result.item_id,
                success=False,
                error=f"UnstorableOutputError: {str(exc)[:500]}",
                context=result.context,
                token_usage=result.token_usage,
                error_category="unknown",
                cost=result.cost,
            )
            event = (
                ProcessingEvent.ITEM_FAILED,
                {"item_id": result.item_id, "error_type": "UnstorableOutputError"},
            )
            kind, payload = "none", None
        # Encoded straight from the fields (no ArtifactRecord in between): once per result.
        encoded = writer.encode_fields(
            result.item_id,
            self.fingerprint(item),
            result.success,
            kind,
            payload,
            result.error,
            result.token_usage,  # type: ignore[arg-type]  # TokenUsage is str -> int
            result.error_category,
            result.cost,
            self._created_at(),
        )
        writer.submit_encoded(encoded, result if event is None else (result, event))

    def _created_at(self) -> float:
        """``time.time()``, the same value for every record made within one millisecond
        (a store then encodes that value once rather than once per record)."""
        now = time.time()
        stamp = self._stamp
        if 0.0 <= now - stamp < 0.001:
            return stamp
        self._stamp = now
        return now

    async def drain(self) -> None:
        """Wait until every submitted record is committed and published (or failed)."""
        if self._writer is not None:
            await self._writer.drain()

    async def close(self) -> None:
        """Commit what is pending and stop the writer thread."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
