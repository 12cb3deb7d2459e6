"""OpenAI: a custom strategy on ``openai.AsyncOpenAI`` with structured JSON output.

What it shows:

* wrapping an SDK client in an ``LLMCallStrategy``: one API call per attempt, token usage read
  from the response (cached prompt tokens included);
* structured output: the request carries a JSON schema, the reply is validated with pydantic, and
  a reply that does not validate raises ``ValidationError``, which the processor retries. The
  tokens the bad reply cost are attached to the error, so the batch totals stay exact;
* ``max_retries=0`` on the client, so retrying is the processor's job: a 429 starts the cooldown
  shared by every worker, lasting at least as long as the ``Retry-After`` the API sent.

Run it: ``python examples/example_openai.py``. With ``OPENAI_API_KEY`` set it calls the OpenAI API
(``gpt-4o-mini``, a few hundred tokens); without it, a local OpenAI emulator answers, scripted to
send one 429 and one malformed reply.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import openai
from _offline import openai_backend
from openai.types.chat import ChatCompletion
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, ValidationError

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


# Strict structured outputs: every field required, no extra keys.
RESPONSE_FORMAT: ResponseFormatJSONSchema = {
    "type": "json_schema",
    "json_schema": {
        "name": "ReviewAnalysis",
        "strict": True,
        "schema": {**ReviewAnalysis.model_json_schema(), "additionalProperties": False},
    },
}

SYSTEM_PROMPT = (
    "Classify the customer review. Give the sentiment, a star rating from 1 to 5 and a summary "
    "of at most eight words."
)


def usage_of(completion: ChatCompletion) -> TokenUsage:
    """The token usage of one chat completion, cached prompt tokens included."""
    usage = completion.usage
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    details = usage.prompt_tokens_details
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_input_tokens": (details.cached_tokens or 0) if details else 0,
    }


class OpenAIStructuredStrategy(LLMCallStrategy[ReviewAnalysis]):
    """One chat completion per attempt, validated against ``ReviewAnalysis``."""

    def __init__(self, client: openai.AsyncOpenAI, model: str = MODEL) -> None:
        self.client = client
        self.model = model

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[ReviewAnalysis, TokenUsage]:
        completion = await self.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            response_format=RESPONSE_FORMAT,
            timeout=timeout,
        )
        tokens = usage_of(completion)
        try:
            analysis = ReviewAnalysis.model_validate_json(
                completion.choices[0].message.content or ""
            )
        except ValidationError as exc:
            # The documented way to say "this failed attempt still cost tokens".
            exc.__dict__["_failed_token_usage"] = tokens
            raise
        return analysis, tokens

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        if isinstance(exception, openai.RateLimitError):
            headers = exception.response.headers
            millis = headers.get("retry-after-ms")  # precise; retry-after is in whole seconds
            wait = f"{float(millis) / 1000:g}" if millis else headers.get("retry-after", "?")
            print(f"  ! attempt {attempt}: 429, Retry-After {wait}s; every worker pauses")
        elif isinstance(exception, ValidationError):
            print(f"  ! attempt {attempt}: reply is not a valid ReviewAnalysis; retrying")
        else:
            print(f"  ! attempt {attempt}: {type(exception).__name__}; retrying")


def offline_reviewer(request: ProviderRequest) -> dict[str, object]:
    """Stands in for the model in offline mode: a keyword classifier."""
    text = request.prompt.lower()
    if any(word in text for word in ("love", "great")):
        sentiment, stars = "positive", 5
    elif any(word in text for word in ("broke", "stopped", "terrible")):
        sentiment, stars = "negative", 1
    else:
        sentiment, stars = "mixed", 3
    return {"sentiment": sentiment, "stars": stars, "summary": " ".join(request.prompt.split()[:8])}


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
        strategy = OpenAIStructuredStrategy(client)
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
                        LLMWorkItem(item_id=item_id, strategy=strategy, prompt=review)
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
