"""OpenAI: the built-in ``OpenAIStrategy`` with structured output, on ``openai.AsyncOpenAI``.

What it shows:

* ``OpenAIStrategy(client, model, output_type=ReviewAnalysis)``: one Chat Completions call per
  attempt, asking for strict structured output built from the pydantic model and validating the
  reply into it; token usage (cached prompt tokens included) read from the response;
* a reply that does not validate raises ``ValidationError``, which the processor retries at once.
  The tokens the bad reply cost are attached to the error, so the batch totals stay exact;
* ``max_retries=0`` on the client, so retrying is the processor's job: a 429 starts the cooldown
  shared by every worker, lasting at least as long as the ``Retry-After`` the API sent;
* extending the built-in strategy: ``on_error`` narrates each failed attempt. The strategy raises
  its own error types from the SDK's, so the SDK error is the ``__cause__``.

Run it: ``python examples/example_openai.py``. With ``OPENAI_API_KEY`` set it calls the OpenAI API
(``gpt-4o-mini``, a few hundred tokens); without it, a local OpenAI emulator answers, scripted to
send one 429 and one malformed reply.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import openai
from _offline import openai_backend
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    LLMWorkItem,
    OpenAIStrategy,
    ParallelBatchProcessor,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    RetryState,
)
from async_batch_llm.testing.servers import Malformed, ProviderRequest, RateLimited

MODEL = "gpt-4o-mini"

REVIEWS = {
    "review-1": "I love this kettle: it boils in a minute and looks great on the counter.",
    "review-2": "The handle broke after a week. Terrible build quality, avoid.",
    "review-3": "Fast delivery, but the lid is stiff and the cable is far too short.",
    "review-4": "Great value. Quiet, quick, and easy to clean.",
    "review-5": "Stopped working after two uses and support never answered.",
    "review-6": "Does the job. Nothing special, nothing wrong.",
}


class ReviewAnalysis(BaseModel):
    """What we extract from each review."""

    sentiment: Literal["positive", "negative", "mixed"]
    stars: int
    summary: str


INSTRUCTIONS = (
    "Classify the customer review below. Give the sentiment, a star rating from 1 to 5 and a "
    "summary of at most eight words."
)


class ReviewStrategy(OpenAIStrategy[ReviewAnalysis]):
    """The built-in strategy, telling what happened to each failed attempt."""

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        cause = exception.__cause__  # the SDK's error, for API errors
        if isinstance(cause, openai.RateLimitError):
            headers = cause.response.headers
            millis = headers.get("retry-after-ms")  # precise; retry-after is in whole seconds
            wait = f"{float(millis) / 1000:g}" if millis else headers.get("retry-after", "?")
            print(f"  ! attempt {attempt}: 429, Retry-After {wait}s; every worker pauses")
        elif isinstance(exception, ValidationError):
            print(f"  ! attempt {attempt}: reply is not a valid ReviewAnalysis; retrying")
        else:
            print(f"  ! attempt {attempt}: {type(exception).__name__}; retrying")


def offline_reviewer(request: ProviderRequest) -> dict[str, object]:
    """Stands in for the model in offline mode: a keyword classifier."""
    review = request.prompt.splitlines()[-1]
    text = review.lower()
    if any(word in text for word in ("love", "great")):
        sentiment, stars = "positive", 5
    elif any(word in text for word in ("broke", "stopped", "terrible")):
        sentiment, stars = "negative", 1
    else:
        sentiment, stars = "mixed", 3
    return {"sentiment": sentiment, "stars": stars, "summary": " ".join(review.split()[:8])}


async def main() -> None:
    async with openai_backend(respond=offline_reviewer) as backend:
        if backend.server is not None:
            # The 2nd request gets a 429 asking for 0.5 s, the 4th a reply that is not JSON.
            backend.server.script(None, RateLimited(retry_after=0.5), None, Malformed())
            print(
                "offline: the emulator sends one 429 (Retry-After: 0.5s) and one malformed reply\n"
            )

        # max_retries=0: the processor retries, and every worker honours one shared cooldown.
        client = openai.AsyncOpenAI(
            base_url=backend.base_url, api_key=backend.api_key, max_retries=0
        )
        strategy = ReviewStrategy(client, MODEL, output_type=ReviewAnalysis)
        config = ProcessorConfig(
            max_workers=3,
            timeout_per_item=30.0,
            retry=RetryConfig(max_attempts=3, initial_wait=0.1),
            # Short so the example runs quickly; the 429's Retry-After (0.5 s) wins over it.
            rate_limit=RateLimitConfig(cooldown_seconds=0.2, slow_start_items=0),
        )
        try:
            async with ParallelBatchProcessor[str, ReviewAnalysis, None](
                config=config
            ) as processor:
                for item_id, review in REVIEWS.items():
                    await processor.add_work(
                        LLMWorkItem(
                            item_id=item_id,
                            strategy=strategy,
                            prompt=f"{INSTRUCTIONS}\n\n{review}",
                        )
                    )
                result = await processor.process_all()
        finally:
            await client.close()

        print()
        for item in sorted(result.results, key=lambda r: r.item_id):
            if item.output is not None:
                out = item.output
                print(f"{item.item_id}  {out.sentiment:<8}  {out.stars}/5  {out.summary}")
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
