"""Anthropic: a custom strategy on ``anthropic.AsyncAnthropic`` (Claude).

What it shows:

* wrapping the Messages API in an ``LLMCallStrategy``, with a system prompt and ``max_tokens``;
* Anthropic token accounting: ``usage.input_tokens`` excludes prompt-cache reads and writes, so
  the strategy adds them back and reports cache reads as ``cached_input_tokens``;
* checking the answer and asking again when it is unusable: the strategy raises its own
  exception type, which the default classifier retries (a ``ValueError`` would not be retried);
* ``max_retries=0`` on the client, so the processor does the retrying: a 529 "overloaded" is
  retried with backoff, a 429 pauses every worker for at least its ``retry-after``.

Run it: ``python examples/example_anthropic.py``. With ``ANTHROPIC_API_KEY`` set it calls Claude
(``claude-haiku-4-5``, a few hundred tokens); without it, a local Anthropic emulator answers,
scripted to send one 529 and one 429.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import anthropic
from _offline import anthropic_backend
from anthropic.types import Message

from async_batch_llm import (
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.servers import ProviderRequest, RateLimited, ServerError

MODEL = "claude-haiku-4-5"
CATEGORIES = ("billing", "bug", "feature", "account")

TICKETS = {
    "ticket-1": "I was charged twice for my March invoice, please refund one of them.",
    "ticket-2": "The export button crashes the app whenever the report has more than 100 rows.",
    "ticket-3": "Could you add a dark mode? My eyes would thank you.",
    "ticket-4": "I can't log in since I changed my email address.",
    "ticket-5": "Your invoice PDF shows the wrong VAT number.",
}

SYSTEM_PROMPT = (
    f"You triage support tickets. On the first line write exactly one of: {', '.join(CATEGORIES)}. "
    "On the second line write a one-sentence reply to the customer."
)


@dataclass
class Triage:
    category: str
    reply: str


class UnusableAnswer(Exception):
    """The model answered, but not in the requested shape (retryable)."""


def usage_of(message: Message) -> TokenUsage:
    """Anthropic usage as a ``TokenUsage``: every input token counted, cache reads as cached."""
    usage = message.usage
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    input_tokens = usage.input_tokens + cache_read + cache_write
    return {
        "input_tokens": input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": input_tokens + usage.output_tokens,
        "cached_input_tokens": cache_read,
    }


class ClaudeTriageStrategy(LLMCallStrategy[Triage]):
    """One Messages API call per attempt; the first line of the answer must be a category."""

    def __init__(self, client: anthropic.AsyncAnthropic, model: str = MODEL) -> None:
        self.client = client
        self.model = model

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Triage, TokenUsage]:
        message = await self.client.messages.create(
            model=self.model,
            max_tokens=200,
            system=SYSTEM_PROMPT,
            messages=[{"role": "user", "content": prompt}],
            timeout=timeout,
        )
        tokens = usage_of(message)
        text = "".join(block.text for block in message.content if block.type == "text")
        first, _, rest = text.strip().partition("\n")
        category = first.strip().strip(".*").lower()
        if category not in CATEGORIES:
            error = UnusableAnswer(f"expected a category on the first line, got {first!r}")
            error.__dict__["_failed_token_usage"] = tokens  # this attempt still cost tokens
            raise error
        return Triage(category=category, reply=rest.strip()), tokens

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        if isinstance(exception, anthropic.RateLimitError):
            headers = exception.response.headers
            millis = headers.get("retry-after-ms")  # precise; retry-after is in whole seconds
            wait = f"{float(millis) / 1000:g}" if millis else headers.get("retry-after", "?")
            print(f"  ! attempt {attempt}: 429, retry-after {wait}s; every worker pauses")
        elif isinstance(exception, anthropic.APIStatusError):
            print(f"  ! attempt {attempt}: HTTP {exception.status_code}; retrying with backoff")
        else:
            print(f"  ! attempt {attempt}: {type(exception).__name__}: {exception}; retrying")


def offline_triage(request: ProviderRequest) -> str:
    """Stands in for Claude in offline mode: keyword rules."""
    text = request.prompt.lower()
    if "charged" in text or "invoice" in text:
        category = "billing"
    elif "crash" in text:
        category = "bug"
    elif "log in" in text:
        category = "account"
    else:
        category = "feature"
    return f"{category}\nThanks for writing in, we are looking into it."


async def main() -> None:
    async with anthropic_backend(respond=offline_triage) as backend:
        if backend.server is not None:
            backend.server.script(ServerError(529), None, RateLimited(retry_after=0.5))
            print(
                "offline: the emulator sends one 529 (overloaded) and one 429 (retry-after: 0.5s)\n"
            )

        client = anthropic.AsyncAnthropic(
            base_url=backend.base_url, api_key=backend.api_key, max_retries=0
        )
        strategy = ClaudeTriageStrategy(client)
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
