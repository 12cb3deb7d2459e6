"""Gemini direct: ``GeminiStrategy`` + ``GeminiModel`` with a ``response_parser``.

What it shows:

* ``GeminiModel`` wraps a ``google.genai.Client`` (a fixed system instruction asks for JSON);
  ``GeminiStrategy`` calls it once per attempt and hands the ``LLMResponse`` to your parser;
* the parser validates the reply with pydantic. When it raises, ``GeminiStrategy`` attaches the
  response's token usage to the error, so the tokens of the rejected reply still count, and the
  ``ValidationError`` is retried;
* a Gemini 429 carries its wait as a ``google.rpc.RetryInfo`` detail (``retryDelay``), not as a
  header; the processor reads it and pauses every worker at least that long. With the default
  classifier the rate-limited item is then retried. (``GeminiErrorClassifier`` would instead fail
  it after the cooldown; see ``example_gemini_smart_retry.py`` and docs/providers.md.)

Run it: ``python examples/example_gemini_direct.py``. With ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set it calls Gemini (``gemini-2.5-flash``); without it, a local Gemini emulator
answers, scripted to send one 429 (retryDelay 0.5s) and one malformed reply.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any

from _offline import gemini_backend
from google import genai
from google.genai import types
from pydantic import BaseModel

from async_batch_llm import (
    BaseObserver,
    GeminiModel,
    GeminiStrategy,
    LLMResponse,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessingEvent,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
)
from async_batch_llm.testing.servers import Malformed, ProviderRequest, RateLimited

MODEL = "gemini-2.5-flash"

EMAILS = {
    "mail-1": "Hi team, let's review the Q3 budget on 2025-10-02 at 14:00. Bring numbers. - Ana",
    "mail-2": "Reminder: design critique for the new onboarding flow, 2025-10-03 at 09:30.",
    "mail-3": "Can we move the vendor call to 2025-10-07 at 16:15? Topic: renewal terms.",
    "mail-4": "Lunch and learn on Rust async, 2025-10-09 at 12:00, room Ada.",
}

INSTRUCTION = (
    'Extract the meeting from the email. Reply with JSON only: {"date": "YYYY-MM-DD", '
    '"time": "HH:MM", "topic": "<five words at most>"}'
)


class Meeting(BaseModel):
    date: str
    time: str
    topic: str


def parse_meeting(response: LLMResponse) -> Meeting:
    """The response parser: strip an optional Markdown code fence, then validate."""
    text = response.text.strip()
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    return Meeting.model_validate_json(text)


class RetryLog(BaseObserver):
    """Prints rate limits, cooldowns and retries as the processor reports them."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
        if event is ProcessingEvent.ITEM_STARTED:
            self.attempts[data["item_id"]] += 1
            if self.attempts[data["item_id"]] > 1:
                print(f"  {data['item_id']}: attempt {self.attempts[data['item_id']]}")
        elif event is ProcessingEvent.RATE_LIMIT_HIT:
            print(f"  {data['item_id']}: 429 RESOURCE_EXHAUSTED")
        elif event is ProcessingEvent.COOLDOWN_STARTED:
            print(f"  every worker pauses for {data['duration']:.1f}s")


def offline_extractor(request: ProviderRequest) -> str:
    """Stands in for Gemini in offline mode: a regular expression."""
    found = re.search(r"(\d{4}-\d{2}-\d{2}) at (\d{2}:\d{2})", request.prompt)
    date, time = found.groups() if found else ("?", "?")
    topic = " ".join(request.prompt.split()[:5])
    return "```json\n" + json.dumps({"date": date, "time": time, "topic": topic}) + "\n```"


async def main() -> None:
    async with gemini_backend(respond=offline_extractor) as backend:
        if backend.server is not None:
            backend.server.script(None, RateLimited(retry_after=0.5), Malformed())
            print("offline: the emulator sends one 429 (retryDelay 0.5s) and one malformed reply\n")

        client = genai.Client(
            api_key=backend.api_key, http_options=types.HttpOptions(base_url=backend.base_url)
        )
        model = GeminiModel(MODEL, client, system_instruction=INSTRUCTION)
        strategy = GeminiStrategy(model, response_parser=parse_meeting)
        config = ProcessorConfig(
            max_workers=2,
            timeout_per_item=60.0,
            retry=RetryConfig(max_attempts=3, initial_wait=0.1),
            # Short for the example; the 429's retryDelay (0.5 s) is longer, so it wins.
            rate_limit=RateLimitConfig(cooldown_seconds=0.2, slow_start_items=0),
        )
        try:
            async with ParallelBatchProcessor[str, Meeting, None](
                config=config, observers=[RetryLog()]
            ) as processor:
                for item_id, email in EMAILS.items():
                    await processor.add_work(
                        LLMWorkItem(item_id=item_id, strategy=strategy, prompt=email)
                    )
                result = await processor.process_all()
                stats = await processor.get_stats()
        finally:
            await client.aio.aclose()

        print()
        for item in sorted(result.results, key=lambda r: r.item_id):
            if item.output is not None:
                m = item.output
                print(f"{item.item_id}  {m.date} {m.time}  {m.topic}")
            else:
                print(f"{item.item_id}  FAILED: {item.error}")
        print(f"\n{result.succeeded}/{result.total_items} succeeded")
        print(f"rate limits hit: {stats['rate_limit_count']}")
        print(
            f"tokens: {result.total_input_tokens} input ({result.total_cached_tokens} cached), "
            f"{result.total_output_tokens} output (every attempt counted)"
        )
        backend.print_server_stats()


if __name__ == "__main__":
    asyncio.run(main())
