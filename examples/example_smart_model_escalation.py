"""Smart model escalation: start on the cheapest Gemini model, escalate only on validation errors.

What it shows:

* a strategy that picks the model from ``RetryState``: attempt 1 runs on
  ``gemini-2.5-flash-lite``; each reply that fails validation moves the item one model up
  (``gemini-2.5-flash``, then ``gemini-2.5-pro``);
* rate limits, timeouts and network errors retry on the *same* model: they say nothing about
  the model's ability, so paying for a bigger one would be waste;
* what it saves: the strategy records the tokens each model used (rejected replies included)
  and the example prices them against running every item on ``gemini-2.5-pro``.

Run it: ``python examples/example_smart_model_escalation.py``. With ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set it calls Gemini; real models rarely fail this task, so expect little
escalation. Without a key, a local Gemini emulator stands in: its flash-lite fumbles the
"(hard)" headlines and its flash the "(very hard)" one, and it sends one 429.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from _offline import gemini_backend
from google import genai
from google.genai import types
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    GeminiModel,
    LLMCallStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.servers import ProviderRequest, RateLimited

MODELS = ("gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro")

# USD per million tokens (input, output), Gemini API list prices at the time of writing;
# check https://ai.google.dev/pricing before relying on them.
PRICES = {
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
}

HEADLINES = {
    "h1": "Parliament passes the new housing bill after a late-night vote",
    "h2": "Local club wins the cup in a penalty shoot-out",
    "h3": "Telescope spots water vapour on a distant exoplanet (hard)",
    "h4": "Chipmaker shares jump 12% on record quarterly revenue",
    "h5": "Museum reopens its modern art wing after renovation",
    "h6": "Central bank holds rates; minister praises 'steady hand' (very hard)",
    "h7": "Marathon record falls in Berlin",
    "h8": "Start-up raises funds to turn seaweed into packaging (hard)",
}

INSTRUCTION = (
    "Classify the news headline. Reply with JSON only: "
    '{"topic": "politics" | "sport" | "science" | "business" | "culture"}'
)


class Label(BaseModel):
    topic: Literal["politics", "sport", "science", "business", "culture"]


@dataclass
class Answer:
    topic: str
    model: str


class SmartModelEscalationStrategy(LLMCallStrategy[Answer]):
    """Cheapest model first; one model up per validation failure; spend recorded per model."""

    def __init__(self, client: genai.Client) -> None:
        self.models = {
            name: GeminiModel(name, client, system_instruction=INSTRUCTION) for name in MODELS
        }
        self.calls: Counter[str] = Counter()
        self.input_tokens: Counter[str] = Counter()
        self.output_tokens: Counter[str] = Counter()

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Answer, TokenUsage]:
        state = state if state is not None else RetryState()
        name = MODELS[min(state.get("validation_failures", 0), len(MODELS) - 1)]
        response = await self.models[name].generate(prompt)
        self._record(name, response)
        try:
            label = Label.model_validate_json(response.text.strip())
        except ValidationError as exc:
            exc.__dict__["_failed_token_usage"] = response.token_usage
            raise
        return Answer(topic=label.topic, model=name), response.token_usage

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        if state is None:
            return
        failures = state.get("validation_failures", 0)
        if isinstance(exception, ValidationError):
            state.set("validation_failures", failures + 1)
            upgrade = MODELS[min(failures + 1, len(MODELS) - 1)]
            used = MODELS[min(failures, len(MODELS) - 1)]
            print(f"  attempt {attempt}: invalid reply from {used} -> escalate to {upgrade}")
        else:
            status = getattr(exception, "code", "")  # google-genai errors carry the HTTP status
            print(f"  attempt {attempt}: {type(exception).__name__} {status} -> same model again")

    def _record(self, name: str, response: LLMResponse) -> None:
        self.calls[name] += 1
        self.input_tokens[name] += response.input_tokens
        # Gemini 2.5 bills "thinking" as output; it is in the total but not in output_tokens.
        self.output_tokens[name] += max(response.total_tokens - response.input_tokens, 0)

    def cost(self, name: str, *, priced_as: str | None = None) -> float:
        """USD spent on ``name`` (optionally at another model's prices)."""
        price_in, price_out = PRICES[priced_as or name]
        return (self.input_tokens[name] * price_in + self.output_tokens[name] * price_out) / 1e6


def offline_gemini(request: ProviderRequest) -> str:
    """Stands in for Gemini offline: smaller models fumble the harder headlines."""
    text = request.prompt
    model = request.model or ""
    fumbles = (model.endswith("flash-lite") and "hard)" in text) or (
        model.endswith("2.5-flash") and "very hard" in text
    )
    if fumbles:
        return "This headline is probably about science, or maybe business."
    topics = {
        "Parliament": "politics",
        "bank": "politics",
        "cup": "sport",
        "Marathon": "sport",
        "Telescope": "science",
        "shares": "business",
        "Start-up": "business",
    }
    topic = next((t for word, t in topics.items() if word in text), "culture")
    return json.dumps({"topic": topic})


async def main() -> None:
    async with gemini_backend(respond=offline_gemini) as backend:
        if backend.server is not None:
            backend.server.script(None, None, RateLimited(retry_after=0.5))
            print("offline: flash-lite fumbles '(hard)' headlines, flash '(very hard)'; one 429\n")
        client = genai.Client(
            api_key=backend.api_key, http_options=types.HttpOptions(base_url=backend.base_url)
        )
        strategy = SmartModelEscalationStrategy(client)
        config = ProcessorConfig(
            max_workers=3,
            timeout_per_item=60.0,
            retry=RetryConfig(max_attempts=len(MODELS) + 1, initial_wait=0.1),
            rate_limit=RateLimitConfig(cooldown_seconds=0.2, slow_start_items=0),
        )
        try:
            async with ParallelBatchProcessor[str, Answer, None](config=config) as processor:
                for item_id, headline in HEADLINES.items():
                    await processor.add_work(
                        LLMWorkItem(item_id=item_id, strategy=strategy, prompt=headline)
                    )
                result = await processor.process_all()
        finally:
            await client.aio.aclose()

        print()
        for item in sorted(result.results, key=lambda r: r.item_id):
            if item.output is not None:
                print(f"{item.item_id}  {item.output.topic:<9} answered by {item.output.model}")
            else:
                print(f"{item.item_id}  FAILED: {item.error}")
        print(f"\n{result.succeeded}/{result.total_items} succeeded")

        print(f"\n{'model':<22} {'calls':>5} {'input':>6} {'output':>6} {'cost USD':>11}")
        for name in MODELS:
            print(
                f"{name:<22} {strategy.calls[name]:>5} {strategy.input_tokens[name]:>6} "
                f"{strategy.output_tokens[name]:>6} {strategy.cost(name):>11.7f}"
            )
        actual = sum(strategy.cost(name) for name in MODELS)
        all_pro = sum(strategy.cost(name, priced_as="gemini-2.5-pro") for name in MODELS)
        saved = 100 * (1 - actual / all_pro) if all_pro else 0.0
        print(f"cost with escalation: ${actual:.7f}")
        print(f"same tokens, every call on gemini-2.5-pro: ${all_pro:.7f}")
        print(f"saved: {saved:.0f}%")


if __name__ == "__main__":
    asyncio.run(main())
