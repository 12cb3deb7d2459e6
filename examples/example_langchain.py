"""LangChain: a ``ChatOpenAI`` model as a strategy, and a tiny retrieval-augmented (RAG) flavour.

What it shows:

* any LangChain chat model becomes a strategy: ``await llm.ainvoke(messages)`` once per
  attempt, token usage from ``AIMessage.usage_metadata`` (cached prompt tokens included);
* RAG in one strategy: retrieve the passages that best match the question from an in-memory
  list (plain word overlap here; a vector store in real life), then ask the model to answer
  from them only. The output carries the ids of the passages used;
* ``max_retries=0`` on ``ChatOpenAI``, so the processor does the retrying: a 429 pauses every
  worker for at least its ``Retry-After``, then the item is retried.

Run it: ``python examples/example_langchain.py``. With ``OPENAI_API_KEY`` set it calls the OpenAI
API (``gpt-4o-mini``); without it, a local OpenAI emulator answers, scripted to send one 429.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from _offline import openai_backend
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

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
from async_batch_llm.testing.servers import ProviderRequest, RateLimited

MODEL = "gpt-4o-mini"

PASSAGES = {
    "p1": "Returns are free within 30 days of delivery; the item must be unused.",
    "p2": "Refunds reach the original payment method within 5 business days of the return.",
    "p3": "Standard shipping takes 2 to 4 days; express shipping arrives the next day.",
    "p4": "Express shipping costs 9 euros and is free on orders above 80 euros.",
    "p5": "Gift cards never expire and can be combined with discount codes.",
    "p6": "Our support team answers chat messages from 8:00 to 20:00, Monday to Saturday.",
}

QUESTIONS = {
    "q1": "How long do I have to return an item?",
    "q2": "When will my refund arrive?",
    "q3": "How much does express shipping cost?",
    "q4": "Do gift cards expire?",
}


@dataclass
class Answer:
    text: str
    sources: list[str]


def usage_of(message: BaseMessage) -> TokenUsage:
    """LangChain's ``usage_metadata`` as a ``TokenUsage``."""
    meta = message.usage_metadata if isinstance(message, AIMessage) else None
    if meta is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    details = meta.get("input_token_details") or {}
    return {
        "input_tokens": meta["input_tokens"],
        "output_tokens": meta["output_tokens"],
        "total_tokens": meta["total_tokens"],
        "cached_input_tokens": details.get("cache_read", 0),
    }


STOP_WORDS = {"the", "a", "an", "do", "i", "my", "to", "of", "how", "when", "will", "have"}


def words(text: str) -> set[str]:
    """Lower-case words without stop words, crudely singular ("returns" -> "return")."""
    return {w.removesuffix("s") for w in re.findall(r"[a-z]+", text.lower())} - STOP_WORDS


def retrieve(question: str, k: int = 2) -> list[str]:
    """The ids of the ``k`` passages sharing the most words with the question."""
    asked = words(question)
    return sorted(PASSAGES, key=lambda pid: (-len(asked & words(PASSAGES[pid])), pid))[:k]


class LangChainStrategy(LLMCallStrategy[str]):
    """Any LangChain chat model, one ``ainvoke`` per attempt."""

    def __init__(self, llm: BaseChatModel) -> None:
        self.llm = llm

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        message = await self.llm.ainvoke([HumanMessage(prompt)])
        return message.text.strip(), usage_of(message)


class RAGStrategy(LLMCallStrategy[Answer]):
    """Retrieve passages for the question, then answer from them."""

    def __init__(self, llm: BaseChatModel) -> None:
        self.llm = llm

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Answer, TokenUsage]:
        sources = retrieve(prompt)
        context = "\n".join(f"[{pid}] {PASSAGES[pid]}" for pid in sources)
        message = await self.llm.ainvoke(
            [
                SystemMessage("Answer in one sentence using only these passages:\n" + context),
                HumanMessage(prompt),
            ]
        )
        return Answer(message.text.strip(), sources), usage_of(message)

    async def on_error(
        self, exception: Exception, attempt: int, state: RetryState | None = None
    ) -> None:
        print(f"  ! attempt {attempt}: {type(exception).__name__}; retrying after the cooldown")


def offline_chat(request: ProviderRequest) -> str:
    """Stands in for the model offline: quote the best passage, or look up a translation."""
    found = re.search(r"\[p\d\] (.*)", request.system)
    if found:
        return found.group(1)
    phrase = request.prompt.rpartition(":")[2].strip()
    return {"good morning": "Bonjour", "thank you": "Merci"}.get(phrase, phrase)


async def main() -> None:
    async with openai_backend(respond=offline_chat) as backend:
        if backend.server is not None:
            backend.server.script(None, None, None, RateLimited(retry_after=0.5))
            print("offline: the emulator sends one 429 (Retry-After: 0.5s)\n")
        llm = ChatOpenAI(
            model=MODEL,
            temperature=0,
            base_url=backend.base_url,
            api_key=SecretStr(backend.api_key) if backend.api_key else None,
            max_retries=0,  # the processor retries
        )
        config = ProcessorConfig(
            max_workers=2,
            timeout_per_item=30.0,
            retry=RetryConfig(max_attempts=3, initial_wait=0.1),
            rate_limit=RateLimitConfig(cooldown_seconds=0.2, slow_start_items=0),
        )
        try:
            print("== ChatOpenAI as a strategy")
            plain = LangChainStrategy(llm)
            async with ParallelBatchProcessor[str, str, None](config=config) as processor:
                for i, phrase in enumerate(("good morning", "thank you"), 1):
                    prompt = f"Translate into French, reply with the translation only: {phrase}"
                    await processor.add_work(
                        LLMWorkItem(item_id=f"t{i}", strategy=plain, prompt=prompt)
                    )
                translations = await processor.process_all()
            for translation in sorted(translations.results, key=lambda r: r.item_id):
                shown = translation.output if translation.success else translation.error
                print(f"{translation.item_id}  {shown}")

            print("\n== RAG: retrieve, then answer")
            rag = RAGStrategy(llm)
            async with ParallelBatchProcessor[str, Answer, None](config=config) as processor:
                for item_id, question in QUESTIONS.items():
                    await processor.add_work(
                        LLMWorkItem(item_id=item_id, strategy=rag, prompt=question)
                    )
                answers = await processor.process_all()
        finally:
            await llm.root_async_client.close()  # ChatOpenAI's own openai.AsyncOpenAI

        for item in sorted(answers.results, key=lambda r: r.item_id):
            if item.output is not None:
                print(f"{item.item_id}  {QUESTIONS[item.item_id]}")
                print(f"    {item.output.text}  (sources: {', '.join(item.output.sources)})")
            else:
                print(f"{item.item_id}  FAILED: {item.error}")

        succeeded = translations.succeeded + answers.succeeded
        total = translations.total_items + answers.total_items
        print(f"\n{succeeded}/{total} succeeded")
        print(
            f"tokens: {translations.total_input_tokens + answers.total_input_tokens} input, "
            f"{translations.total_output_tokens + answers.total_output_tokens} output"
        )
        backend.print_server_stats()


if __name__ == "__main__":
    asyncio.run(main())
