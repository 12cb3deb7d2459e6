"""Every built-in strategy, and a custom one, on the same Gemini client.

What it shows, one small batch each:

1. ``PydanticAIStrategy`` around a real pydantic-ai ``Agent`` with a structured ``output_type``
   (pydantic-ai asks Gemini for a ``final_result`` tool call and validates it);
2. ``GeminiStrategy(GeminiModel(...))`` with a ``response_parser`` that turns the reply into the
   item's output;
3. ``GeminiCachedStrategy``: one context cache holding a 1,400-word catalogue, shared by every
   item; the cached tokens show up in the token totals, and ``delete_cache()`` removes the cache
   at the end;
4. a custom ``LLMCallStrategy`` calling ``client.aio.models.generate_content`` directly with
   Gemini's JSON mode (``response_schema``), for when you want full control of the request.

Run it: ``python examples/example_llm_strategies.py``. With ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set it calls Gemini (``gemini-2.5-flash``; the cache costs about 2,000 tokens
to create); without it, a local Gemini emulator answers.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeVar

from _catalogue import CATALOGUE, lookup
from _offline import gemini_backend
from google import genai
from google.genai import types
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.google import GoogleModel
from pydantic_ai.providers.google import GoogleProvider

from async_batch_llm import (
    BatchResult,
    GeminiCachedStrategy,
    GeminiModel,
    GeminiStrategy,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    PydanticAIStrategy,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.servers import ProviderRequest, ResponseValue

MODEL = "gemini-2.5-flash"
T = TypeVar("T")

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima"}


class Country(BaseModel):
    name: str
    capital: str


class Kettle(BaseModel):
    model: str
    price_euros: int


def offline_gemini(request: ProviderRequest) -> ResponseValue:
    """Stands in for Gemini in offline mode."""
    prompt = request.prompt
    if request.forced_tool is not None:  # pydantic-ai's final_result tool
        name = next((c for c in CAPITALS if c in prompt), "Atlantis")
        return {"name": name, "capital": CAPITALS.get(name, "unknown")}
    if request.response_schema is not None:  # the custom strategy's JSON mode
        model = re.search(r"K\d+", prompt)
        price = re.search(r"(\d+) euros", prompt)
        return {
            "model": model.group(0) if model else "?",
            "price_euros": int(price.group(1)) if price else 0,
        }
    if request.cached_content is not None:  # questions about the cached catalogue
        return lookup(prompt)
    return prompt.split(":")[-1].strip().upper()


def uppercase_reply(response: LLMResponse) -> str:
    """A response parser: any callable from ``LLMResponse`` to the item's output."""
    return response.text.strip().upper()


class JSONModeStrategy(LLMCallStrategy[Kettle]):
    """A custom strategy: the raw SDK call, with Gemini's JSON mode and a response schema."""

    def __init__(self, client: genai.Client, model: str = MODEL) -> None:
        self.client = client
        self.model = model

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Kettle, TokenUsage]:
        response = await self.client.aio.models.generate_content(
            model=self.model,
            contents=prompt,
            config=types.GenerateContentConfig(
                response_mime_type="application/json",
                response_schema=Kettle,
                temperature=0.0,
            ),
        )
        meta = response.usage_metadata
        tokens: TokenUsage = {
            "input_tokens": (meta.prompt_token_count or 0) if meta else 0,
            "output_tokens": (meta.candidates_token_count or 0) if meta else 0,
            "total_tokens": (meta.total_token_count or 0) if meta else 0,
        }
        # Validate the text ourselves: a reply that does not fit raises a retryable ValidationError.
        return Kettle.model_validate_json(response.text or ""), tokens


async def run_batch(
    title: str, strategy: LLMCallStrategy[T], prompts: dict[str, str]
) -> BatchResult[T, None]:
    """Run one small batch and print its results and token totals."""
    config = ProcessorConfig(
        max_workers=3, timeout_per_item=60.0, retry=RetryConfig(max_attempts=3, initial_wait=0.5)
    )
    async with ParallelBatchProcessor[str, T, None](config=config) as processor:
        for item_id, prompt in prompts.items():
            await processor.add_work(LLMWorkItem(item_id=item_id, strategy=strategy, prompt=prompt))
        result = await processor.process_all()
    print(f"\n== {title}")
    for item in sorted(result.results, key=lambda r: r.item_id):
        shown: Any = item.output if item.success else f"FAILED: {item.error}"
        print(f"  {item.item_id:<8} {shown}")
    print(
        f"  {result.succeeded}/{result.total_items} succeeded; tokens: "
        f"{result.total_input_tokens} input ({result.total_cached_tokens} cached), "
        f"{result.total_output_tokens} output"
    )
    return result


async def main() -> None:
    async with gemini_backend(respond=offline_gemini) as backend:
        client = genai.Client(
            api_key=backend.api_key, http_options=types.HttpOptions(base_url=backend.base_url)
        )
        try:
            # 1. pydantic-ai: any Agent works; this one shares our client (and its base URL).
            agent = Agent(
                GoogleModel(MODEL, provider=GoogleProvider(client=client)),
                output_type=Country,
                instructions="Name the country mentioned and its capital.",
            )
            async with agent:
                await run_batch(
                    "PydanticAIStrategy (pydantic-ai Agent, output_type=Country)",
                    PydanticAIStrategy[Country](agent=agent),
                    {f"q{i}": f"Tell me about {c}." for i, c in enumerate(CAPITALS, 1)},
                )

            # 2. GeminiStrategy: a model plus a response parser.
            await run_batch(
                "GeminiStrategy(GeminiModel) with a response_parser",
                GeminiStrategy(GeminiModel(MODEL, client), response_parser=uppercase_reply),
                {
                    f"w{i}": f"Repeat this word and nothing else: {w}"
                    for i, w in enumerate(("alpha", "bravo", "charlie"), 1)
                },
            )

            # 3. GeminiCachedStrategy: one cache for every item of the batch.
            cached = GeminiCachedStrategy(
                MODEL,
                client,
                [types.Content(role="user", parts=[types.Part(text=CATALOGUE)])],
                cache_ttl_seconds=600,
                cache_renewal_buffer_seconds=60,
                # Without tags the strategy would adopt any cache of yours for this model (and
                # delete_cache() below would delete it). google-genai cannot store tags yet, so
                # expect a logged warning and a fresh cache each run. See docs/providers.md.
                cache_tags={"app": "async-batch-llm-example"},
            )
            try:
                await run_batch(
                    "GeminiCachedStrategy (the catalogue is cached once)",
                    cached,
                    {
                        "c1": "Answer from the catalogue: what is the warranty of model K7?",
                        "c2": "Answer from the catalogue: which warehouse ships model K12?",
                        "c3": "Answer from the catalogue: what is the price of model K20?",
                    },
                )
                print(f"  cache in use: {cached.model.cache_name}")
            finally:
                await cached.delete_cache()  # otherwise it lives until its TTL runs out
            print(f"  after delete_cache(): {cached.model.cache_name}")

            # 4. A custom strategy on the raw SDK.
            await run_batch(
                "custom LLMCallStrategy (generate_content with a response_schema)",
                JSONModeStrategy(client),
                {
                    "ad1": "Extract the kettle: Flash sale! Model K3 now only 28 euros.",
                    "ad2": "Extract the kettle: The K9, our quietest kettle, costs 46 euros.",
                },
            )
        finally:
            await client.aio.aclose()
        if backend.server is not None:
            counts = dict(backend.server.counts)
            print(f"\nserver saw {backend.server.request_count} requests: {counts}")


if __name__ == "__main__":
    asyncio.run(main())
