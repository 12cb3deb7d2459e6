"""Resource management: ``async with`` versus an explicit ``shutdown()``, and cache lifetimes.

What it shows:

1. ``async with ParallelBatchProcessor(...)``: a strategy shared by every item is prepared
   once, before its first call, and cleaned up once, when the block exits;
2. the same without ``async with``: call ``await processor.shutdown()`` yourself, in a
   ``finally`` so that it also runs when the batch fails or is cancelled;
3. ``GeminiCachedStrategy`` across two batches: its cache is created once, survives the first
   processor's cleanup (cleanup never deletes it, so later runs can reuse it), serves the second
   batch, and is removed only by ``delete_cache()``.

Run it: ``python examples/example_context_manager.py``. With ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set it calls Gemini (``gemini-2.5-flash``; the cache costs about 2,000 tokens
to create); without it, a local Gemini emulator answers and reports what it saw.
"""

from __future__ import annotations

import asyncio

from _catalogue import CATALOGUE, lookup
from _offline import gemini_backend
from google import genai
from google.genai import types

from async_batch_llm import (
    GeminiCachedStrategy,
    GeminiModel,
    GeminiStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
)
from async_batch_llm.testing.servers import ProviderRequest

MODEL = "gemini-2.5-flash"
CONFIG = ProcessorConfig(max_workers=3, timeout_per_item=60.0)


def text_of(response: LLMResponse) -> str:
    return response.text.strip()


class NoisyStrategy(GeminiStrategy[str]):
    """A ``GeminiStrategy`` that says when the processor prepares and cleans it up."""

    async def prepare(self) -> None:
        print("    prepare() called")
        await super().prepare()

    async def cleanup(self) -> None:
        print("    cleanup() called")
        await super().cleanup()


def offline_gemini(request: ProviderRequest) -> str:
    """Stands in for Gemini in offline mode."""
    if request.cached_content is not None:
        return lookup(request.prompt)
    return f"{len(request.prompt.split())} words"


async def add_questions(
    processor: ParallelBatchProcessor[str, str, None],
    strategy: GeminiStrategy[str],
    questions: list[str],
    prefix: str,
) -> None:
    for i, question in enumerate(questions, 1):
        await processor.add_work(
            LLMWorkItem(item_id=f"{prefix}{i}", strategy=strategy, prompt=question)
        )


async def main() -> None:
    async with gemini_backend(respond=offline_gemini) as backend:
        server = backend.server
        client = genai.Client(
            api_key=backend.api_key, http_options=types.HttpOptions(base_url=backend.base_url)
        )
        try:
            strategy = NoisyStrategy(GeminiModel(MODEL, client), response_parser=text_of)
            sentences = [f"Count the words of sentence number {n}, please." for n in range(1, 5)]

            print("\n1. async with: cleanup runs when the block exits")
            async with ParallelBatchProcessor[str, str, None](config=CONFIG) as processor:
                await add_questions(processor, strategy, sentences, "a")
                result = await processor.process_all()
                print(f"    {result.succeeded}/{result.total_items} items done, block still open")
            print("    block exited")

            print("\n2. explicit shutdown(): same lifecycle, your responsibility")
            processor = ParallelBatchProcessor[str, str, None](config=CONFIG)
            try:
                await add_questions(processor, strategy, sentences, "b")
                result = await processor.process_all()
                print(f"    {result.succeeded}/{result.total_items} items done")
            finally:
                await processor.shutdown()  # runs strategy cleanup, stops the workers

            print("\n3. GeminiCachedStrategy: one cache for two batches, then delete_cache()")
            cached = GeminiCachedStrategy(
                MODEL,
                client,
                [types.Content(role="user", parts=[types.Part(text=CATALOGUE)])],
                cache_ttl_seconds=600,
                cache_renewal_buffer_seconds=60,
                # Keeps the strategy from adopting (and deleting below) a cache of yours for the
                # same model. google-genai cannot store tags yet, so expect a logged warning and
                # a fresh cache each run. See docs/providers.md.
                cache_tags={"app": "async-batch-llm-example"},
            )
            try:
                for run, models in enumerate((("K2", "K5"), ("K8", "K13")), 1):
                    questions = [f"What is the price of model {m}?" for m in models]
                    async with ParallelBatchProcessor[str, str, None](config=CONFIG) as processor:
                        await add_questions(processor, cached, questions, f"c{run}-")
                        result = await processor.process_all()
                    for item in sorted(result.results, key=lambda r: r.item_id):
                        print(f"    {item.item_id}: {item.output if item.success else item.error}")
                    alive = f", caches alive on the server: {len(server.caches)}" if server else ""
                    print(
                        f"    batch {run}: {result.total_cached_tokens} of "
                        f"{result.total_input_tokens} input tokens cached; "
                        f"cache {cached.model.cache_name}{alive}"
                    )
            finally:
                await cached.delete_cache()
            alive = f"; caches alive on the server: {len(server.caches)}" if server else ""
            print(f"    after delete_cache(): cache {cached.model.cache_name}{alive}")
        finally:
            await client.aio.aclose()

        if server is not None:
            counts = server.counts
            print(
                f"\nserver saw {counts['cache_create']} cache create, "
                f"{counts['cache_delete']} cache delete, "
                f"{counts['generate_content']} generate_content requests"
            )


if __name__ == "__main__":
    asyncio.run(main())
