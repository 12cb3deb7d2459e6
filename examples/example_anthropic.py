"""Anthropic: the built-in ``AnthropicStrategy`` on ``anthropic.AsyncAnthropic`` (Claude).

What it shows:

* ``AnthropicStrategy(client, model, max_tokens=..., output_type=Triage, system=...)``: one
  Messages API call per attempt with a system prompt; the structured output comes back as a
  forced tool call, validated into the pydantic model;
* Anthropic token accounting done for you: ``usage.input_tokens`` excludes prompt-cache reads
  and writes, so the strategy adds them back and reports cache reads as ``cached_input_tokens``;
* an unusable answer (a category outside the allowed ones) fails validation, and the processor
  asks again;
* ``max_retries=0`` on the client, so the processor does the retrying: a 529 "overloaded" is
  retried with backoff, a 429 pauses every worker for at least its ``retry-after``;
* extending the built-in strategy: ``on_error`` narrates each failed attempt (the SDK's error is
  the ``__cause__`` of the strategy's own).

Run it: ``python examples/example_anthropic.py``. With ``ANTHROPIC_API_KEY`` set it calls Claude
(``claude-haiku-4-5``, a few hundred tokens); without it, a local Anthropic emulator answers,
scripted to send one 529, one 429 and one unusable answer.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import anthropic
from _offline import anthropic_backend
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    AnthropicStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
)
from async_batch_llm.testing.servers import Malformed, ProviderRequest, RateLimited, ServerError

MODEL = "claude-haiku-4-5"

TICKETS = {
    "ticket-1": "I was charged twice for my March invoice, please refund one of them.",
    "ticket-2": "The export button crashes the app whenever the report has more than 100 rows.",
    "ticket-3": "Could you add a dark mode? My eyes would thank you.",
    "ticket-4": "I can't log in since I changed my email address.",
    "ticket-5": "Your invoice PDF shows the wrong VAT number.",
}

SYSTEM_PROMPT = (
    "You triage support tickets: give the ticket's category and a one-sentence reply to the "
    "customer."
)


class Triage(BaseModel):
    category: Literal["billing", "bug", "feature", "account"]
    reply: str


class TriageStrategy(AnthropicStrategy[Triage]):
    """The built-in strategy, telling what happened to each failed attempt."""

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        cause = exception.__cause__  # the SDK's error, for API errors
        if isinstance(cause, anthropic.RateLimitError):
            headers = cause.response.headers
            millis = headers.get("retry-after-ms")  # precise; retry-after is in whole seconds
            wait = f"{float(millis) / 1000:g}" if millis else headers.get("retry-after", "?")
            print(f"  ! attempt {attempt}: 429, retry-after {wait}s; every worker pauses")
        elif isinstance(cause, anthropic.APIStatusError):
            print(f"  ! attempt {attempt}: HTTP {cause.status_code}; retrying with backoff")
        elif isinstance(exception, ValidationError):
            print(f"  ! attempt {attempt}: the answer is not a valid Triage; asking again")
        else:
            print(f"  ! attempt {attempt}: {type(exception).__name__}: {exception}; retrying")


def offline_triage(request: ProviderRequest) -> dict[str, str]:
    """Stands in for Claude in offline mode: keyword rules, answered as the forced tool call."""
    text = request.prompt.lower()
    if "charged" in text or "invoice" in text:
        category = "billing"
    elif "crash" in text:
        category = "bug"
    elif "log in" in text:
        category = "account"
    else:
        category = "feature"
    return {"category": category, "reply": "Thanks for writing in, we are looking into it."}


async def main() -> None:
    async with anthropic_backend(respond=offline_triage) as backend:
        if backend.server is not None:
            backend.server.script(ServerError(529), None, RateLimited(retry_after=0.5), Malformed())
            print(
                "offline: the emulator sends one 529 (overloaded), one 429 (retry-after: 0.5s) "
                "and one answer without a usable triage\n"
            )

        client = anthropic.AsyncAnthropic(
            base_url=backend.base_url, api_key=backend.api_key, max_retries=0
        )
        strategy = TriageStrategy(
            client, MODEL, max_tokens=200, output_type=Triage, system=SYSTEM_PROMPT
        )
        config = ProcessorConfig(
            max_workers=2,
            timeout_per_item=30.0,
            retry=RetryConfig(max_attempts=3, initial_wait=0.1),
            rate_limit=RateLimitConfig(cooldown_seconds=0.2, slow_start_items=0),
        )
        try:
            async with ParallelBatchProcessor[str, Triage, None](config=config) as processor:
                for item_id, ticket in TICKETS.items():
                    await processor.add_work(
                        LLMWorkItem(item_id=item_id, strategy=strategy, prompt=ticket)
                    )
                result = await processor.process_all()
        finally:
            await client.close()

        print()
        for item in sorted(result.results, key=lambda r: r.item_id):
            if item.output is not None:
                print(f"{item.item_id}  {item.output.category:<8} {item.output.reply}")
            else:
                print(f"{item.item_id}  FAILED: {item.error}")
        print(f"\n{result.succeeded}/{result.total_items} succeeded")
        print(
            f"tokens: {result.total_input_tokens} input ({result.total_cached_tokens} cached), "
            f"{result.total_output_tokens} output"
        )
        backend.print_server_stats()


if __name__ == "__main__":
    asyncio.run(main())
