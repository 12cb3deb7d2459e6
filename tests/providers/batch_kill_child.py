"""Child process of ``test_batch_mode_kill.py``: one resumable batch-mode run over HTTP.

Runs ``--items`` prompts (``"kill <i>"``, item ids ``k0000``, ``k0001``, ...) in
``ProcessorConfig(mode="batch")`` through the real ``openai``, ``anthropic`` or ``google-genai``
SDK (``GeminiStrategy`` over a ``GeminiModel``) against the local emulator at ``--base-url``,
with an artifact store at ``--store`` and ``resume=ResumePolicy.REUSE_SUCCESSES``. Jobs are
polled every 0.1 s (at most 0.3 s apart), so the parent sees the job being polled soon after it
is submitted and can kill this process then.
With ``--wait-for-go`` it imports its SDK, then waits for a line on stdin before it opens the
store: the parent starts the resumed run early and lets it go once the first one is dead.

On completion it writes ``{item_id: [success, output, replayed_from_artifact]}`` as JSON to
``--out``.

Usage: ``python -m tests.providers.batch_kill_child --provider openai|anthropic|gemini
--base-url URL --store-kind sqlite|jsonl --store PATH --items N --out PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from async_batch_llm import LLMResponse, LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm.artifacts import (
    ArtifactStore,
    JsonlArtifactStore,
    ResumePolicy,
    SqliteArtifactStore,
)
from async_batch_llm.llm_strategies import AnthropicStrategy, GeminiStrategy, OpenAIStrategy

if TYPE_CHECKING:
    import anthropic
    import openai

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
POLL_INTERVAL = (0.1, 0.3)


def item_id(index: int) -> str:
    """The item id of the ``index``-th prompt."""
    return f"k{index:04d}"


def prompt_of(index: int) -> str:
    """The ``index``-th prompt."""
    return f"kill {index}"


def _text(response: LLMResponse) -> str:
    return response.text


def open_store(kind: str, path: str) -> ArtifactStore:
    """The artifact store of ``kind`` (``"sqlite"`` or ``"jsonl"``) at ``path``."""
    if kind == "sqlite":
        return SqliteArtifactStore(path)
    if kind == "jsonl":
        return JsonlArtifactStore(path)
    raise ValueError(f"unknown store kind {kind!r}")


async def run(args: argparse.Namespace) -> dict[str, list[Any]]:
    """Run (or resume) the batch; ``{item_id: [success, output, replayed]}``."""
    strategy: OpenAIStrategy[Any] | AnthropicStrategy[Any] | GeminiStrategy[str]
    client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
    close: Callable[[], Awaitable[None]]
    if args.provider == "openai":
        import openai  # only the SDK in use: each takes seconds to import on a busy machine

        client = openai.AsyncOpenAI(base_url=args.base_url, api_key="test", max_retries=0)
        strategy = OpenAIStrategy(client, MODELS["openai"])
        close = client.close
    elif args.provider == "anthropic":
        import anthropic

        client = anthropic.AsyncAnthropic(base_url=args.base_url, api_key="test", max_retries=0)
        strategy = AnthropicStrategy(client, MODELS["anthropic"])
        close = client.close
    else:
        from google import genai
        from google.genai import types

        from async_batch_llm.models import GeminiModel

        sdk = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=args.base_url))
        strategy = GeminiStrategy(GeminiModel(MODELS["gemini"], sdk), _text)
        close = sdk.aio.aclose
    strategy.batch_poll_interval = POLL_INTERVAL
    store = open_store(args.store_kind, args.store)
    try:
        async with ParallelBatchProcessor[str, Any, None](
            config=ProcessorConfig(mode="batch", max_workers=2),
            artifact_store=store,
            resume=ResumePolicy.REUSE_SUCCESSES,
        ) as processor:
            for i in range(args.items):
                await processor.add_work(
                    LLMWorkItem(item_id=item_id(i), strategy=strategy, prompt=prompt_of(i))
                )
            batch = await processor.process_all()
    finally:
        store.close()
        await close()
    return {
        r.item_id: [r.success, r.output if r.success else str(r.error), r.replayed_from_artifact]
        for r in batch.results
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--provider", choices=tuple(MODELS), required=True)
    parser.add_argument("--base-url", required=True, help="the emulator's SDK base URL")
    parser.add_argument("--store-kind", choices=("sqlite", "jsonl"), required=True)
    parser.add_argument("--store", required=True, help="artifact store file")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--out", required=True, help="where to write the results (JSON)")
    parser.add_argument(
        "--wait-for-go",
        action="store_true",
        help="after importing, wait for a line on stdin before touching the store",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.provider == "openai":
        import openai  # noqa: F401  (imported before the go: it is the slow part of a start)
    elif args.provider == "anthropic":
        import anthropic  # noqa: F401
    else:
        from google import genai  # noqa: F401
    if args.wait_for_go:
        sys.stdin.readline()
    results = asyncio.run(run(args))
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
