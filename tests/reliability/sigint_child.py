"""Child process of ``test_sigint.py``: a batch under ``asyncio.run`` that the parent Ctrl-C's.

Prints one line per fact the parent checks, flushed at once:

- ``READY``: work queued, ``process_all()`` about to start;
- ``CALL_START <item>`` / ``CALL_END <item> <how>``: a provider call began / ended;
- ``CLEANUP in_flight=<n>``: strategy cleanup ran, with <n> calls still running;
- ``PENDING_TASKS <n>``: tasks still pending once the processor's ``async with`` exited;
- ``KEYBOARD_INTERRUPT``: ``asyncio.run`` raised it (the exception is then re-raised, so the
  process dies of SIGINT like any Ctrl-C'd Python program).

Usage: ``python sigint_child.py <workers> <items>``.
"""

from __future__ import annotations

import asyncio
import sys

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryState,
    TokenUsage,
)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class BlockingStrategy(LLMCallStrategy[str]):
    """Every call announces itself and then waits for a reply that never comes."""

    def __init__(self) -> None:
        self.in_flight = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        self.in_flight += 1
        say(f"CALL_START {prompt}")
        how = "returned"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            self.in_flight -= 1
            say(f"CALL_END {prompt} {how}")
        return prompt, {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}

    async def cleanup(self) -> None:
        say(f"CLEANUP in_flight={self.in_flight}")


async def main(workers: int, items: int) -> None:
    strategy = BlockingStrategy()
    processor: ParallelBatchProcessor[str, str, None] = ParallelBatchProcessor(
        config=ProcessorConfig(max_workers=workers, timeout_per_item=600.0)
    )
    try:
        async with processor:
            for i in range(items):
                await processor.add_work(
                    LLMWorkItem(item_id=f"item-{i}", strategy=strategy, prompt=f"item-{i}")
                )
            say("READY")
            await processor.process_all()
    finally:
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        say(f"PENDING_TASKS {len(pending)}")


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    except KeyboardInterrupt:
        say("KEYBOARD_INTERRUPT")
        raise
    say("FINISHED")
