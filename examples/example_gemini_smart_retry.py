"""Gemini smart retry: change the temperature and the prompt when a reply fails validation.

What it shows:

* ``RetryState``, the per-item scratch pad shared by all attempts of one item: ``on_error``
  records why a reply was rejected, the next ``execute`` reads it;
* only validation failures change course: the next attempt runs at a higher temperature and
  tells the model what was wrong with its previous answer. Other errors retry unchanged;
* ``GeminiErrorClassifier``, the Gemini-aware classifier: pydantic ``ValidationError`` and
  ``UnexpectedModelBehavior`` are retryable, 4xx client errors are retried, and it reads the
  ``RetryInfo`` delay of a 429 (note that it does *not* retry the rate-limited item itself, nor
  500/503 server errors; see docs/providers.md);
* token usage of every rejected reply is counted in the item's totals.

Run it: ``python examples/example_gemini_smart_retry.py``. With ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``) set it calls Gemini (``gemini-2.5-flash``); without it, a local Gemini
emulator stands in, answering two of the invoices badly at first: prose instead of JSON, then a
total that is not a number.
"""

from __future__ import annotations

import asyncio
import json
import re

from _offline import gemini_backend
from google import genai
from google.genai import types
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    GeminiErrorClassifier,
    GeminiModel,
    LLMCallStrategy,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
    RetryState,
    TokenUsage,
)
from async_batch_llm.testing.servers import ProviderRequest

MODEL = "gemini-2.5-flash"
TEMPERATURES = (0.0, 0.4, 0.8)

INVOICES = {
    "inv-1": "Invoice 1041 from Brightline Ltd, total due 1,250.00 EUR.",
    "inv-2": "Invoice 1042 from Nordwind GmbH. Total: 89.90 EUR (tricky layout).",
    "inv-3": "Invoice 1043 from Casa Verde, amount payable 412.50 EUR.",
    "inv-4": "Invoice 1044 from Polar Freight, please pay 2,999.99 EUR (very tricky layout).",
}

INSTRUCTION = (
    'Extract the invoice. Reply with JSON only: {"number": <int>, "vendor": "<name>", '
    '"total_eur": <number>}'
)


class Invoice(BaseModel):
    number: int
    vendor: str
    total_eur: float


class SmartRetryStrategy(LLMCallStrategy[Invoice]):
    """Raise the temperature and add a correction note after each rejected reply."""

    def __init__(self, model: GeminiModel) -> None:
        self.model = model

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Invoice, TokenUsage]:
        state = state if state is not None else RetryState()
        failures: int = state.get("validation_failures", 0)
        temperature = TEMPERATURES[min(failures, len(TEMPERATURES) - 1)]
        if failures:
            prompt = (
                f"{prompt}\n\nYour previous answer was rejected: {state.get('last_problem')}. "
                "Reply with the JSON object only."
            )
        response = await self.model.generate(prompt, temperature=temperature)
        try:
            return Invoice.model_validate_json(response.text.strip()), response.token_usage
        except ValidationError as exc:
            exc.__dict__["_failed_token_usage"] = response.token_usage
            raise

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        if state is None or not isinstance(exception, ValidationError):
            return  # rate limits, timeouts, network errors: retry the same way
        failures = state.get("validation_failures", 0) + 1
        problem = exception.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "reply"
        state.set("validation_failures", failures)
        state.set("last_problem", f"{where}: {problem['msg']}")
        next_temperature = TEMPERATURES[min(failures, len(TEMPERATURES) - 1)]
        print(
            f"  attempt {attempt} rejected ({where}: {problem['msg']}); "
            f"next: temperature {next_temperature} with a correction note"
        )


def offline_gemini(request: ProviderRequest) -> str:
    """Stands in for Gemini offline: tricky invoices need a warmer, corrected retry."""
    config = request.body.get("generationConfig") or {}
    temperature = float(config.get("temperature", 0.0))
    text = request.prompt
    number = int(_find(r"Invoice (\d+)", text))
    vendor = _find(r"from ([^,.]+)", text)
    amount = _find(r"([\d,]+\.\d\d) EUR", text).replace(",", "")
    if "tricky" in text and temperature == 0.0:
        return f"Sure! Invoice {number} is from {vendor} and comes to {amount} euros."
    if "very tricky" in text and temperature < 0.5:
        return json.dumps({"number": number, "vendor": vendor, "total_eur": f"{amount} EUR"})
    return json.dumps({"number": number, "vendor": vendor, "total_eur": float(amount)})


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    return found.group(1) if found else "0"


async def main() -> None:
    async with gemini_backend(respond=offline_gemini) as backend:
        if backend.offline:
            print("offline: the emulator answers the two 'tricky' invoices badly at first\n")
        client = genai.Client(
            api_key=backend.api_key, http_options=types.HttpOptions(base_url=backend.base_url)
        )
        strategy = SmartRetryStrategy(GeminiModel(MODEL, client, system_instruction=INSTRUCTION))
        config = ProcessorConfig(
            max_workers=2,
            timeout_per_item=60.0,
            retry=RetryConfig(max_attempts=len(TEMPERATURES), initial_wait=0.1),
        )
        try:
            async with ParallelBatchProcessor[str, Invoice, None](
                config=config, error_classifier=GeminiErrorClassifier()
            ) as processor:
                for item_id, text in INVOICES.items():
                    await processor.add_work(
                        LLMWorkItem(item_id=item_id, strategy=strategy, prompt=text)
                    )
                result = await processor.process_all()
        finally:
            await client.aio.aclose()

        print()
        for item in sorted(result.results, key=lambda r: r.item_id):
            spent = item.token_usage.get("total_tokens", 0)
            if item.output is not None:
                inv = item.output
                print(
                    f"{item.item_id}  #{inv.number} {inv.vendor:<14} {inv.total_eur:>9.2f} EUR"
                    f"  ({spent} tokens)"
                )
            else:
                print(f"{item.item_id}  FAILED: {item.error}")
        print(f"\n{result.succeeded}/{result.total_items} succeeded")
        print(
            f"tokens: {result.total_input_tokens} input, {result.total_output_tokens} output "
            "(rejected replies included)"
        )
        if backend.server is not None:
            temps = [
                (r.body.get("generationConfig") or {}).get("temperature")
                for r in backend.server.requests
            ]
            print(f"server saw {backend.server.request_count} requests; temperatures {temps}")


if __name__ == "__main__":
    asyncio.run(main())
