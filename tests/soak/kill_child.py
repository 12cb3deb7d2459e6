"""Child process of the crash-resume soak (``soak_kill.py``): one resumable run over HTTP.

Runs ``--items`` prompts (``"item <i>"``, item ids ``i00000``, ``i00001``, ...) through the real
``openai.AsyncOpenAI`` SDK against the local emulator at ``--base-url``, with an artifact store
at ``--store`` and ``resume=ResumePolicy.REUSE_SUCCESSES``. The parent kills it with SIGKILL at
random moments and starts it again; each start replays what the earlier ones committed and calls
only the rest.

With ``--calls-log PATH`` every call that returned an answer appends its prompt to that file
(one ``write`` each, so a kill never tears a line): the parent tells calls still in flight at a
kill from calls that had returned and were waiting for their record's commit.

On completion it writes every result to ``--out`` (``BatchResult.to_jsonl``) and prints one line
of JSON: ``{"total", "succeeded", "failed", "replayed", "called", "elapsed"}``.

Usage: ``python -m tests.soak.kill_child --base-url URL --store-kind sqlite|jsonl --store PATH
--items N --workers W --out PATH [--calls-log PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence

from openai import AsyncOpenAI

from async_batch_llm import LLMCallStrategy, ProcessorConfig, RetryState, TokenUsage
from async_batch_llm.artifacts import (
    ArtifactStore,
    JsonlArtifactStore,
    ResumePolicy,
    SqliteArtifactStore,
)
from async_batch_llm.streaming import process_prompts

MODEL = "gpt-4o-mini"


def item_id(index: int) -> str:
    """The item id of the ``index``-th prompt."""
    return f"i{index:05d}"


def prompt_of(index: int) -> str:
    """The ``index``-th prompt."""
    return f"item {index}"


class ChatStrategy(LLMCallStrategy[str]):
    """One chat completion per item through the ``openai`` SDK; the output is the reply text."""

    def __init__(self, base_url: str, calls_log: str | None = None) -> None:
        self.base_url = base_url
        self.calls_log = calls_log
        self._client: AsyncOpenAI | None = None
        self._log_fd: int | None = None

    def fingerprint(self) -> Mapping[str, object]:
        """What decides an answer besides the prompt (joins every record's fingerprint)."""
        return {"model": MODEL}

    async def prepare(self) -> None:
        # No SDK retries: every retry would be a paid call the library does not know about.
        self._client = AsyncOpenAI(base_url=self.base_url, api_key="soak", max_retries=0)
        if self.calls_log is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            self._log_fd = os.open(self.calls_log, flags, 0o644)

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[str, TokenUsage]:
        client = self._client
        if client is None:
            raise RuntimeError("prepare() was not called")
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], timeout=timeout
        )
        text = completion.choices[0].message.content
        if text is None:
            raise ValueError(f"empty reply to {prompt!r}")
        if self._log_fd is not None:
            os.write(self._log_fd, f"{prompt}\n".encode())
        usage = completion.usage
        tokens: TokenUsage = {
            "input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
        }
        return text, tokens

    async def cleanup(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        fd, self._log_fd = self._log_fd, None
        if fd is not None:
            os.close(fd)


def open_store(kind: str, path: str) -> ArtifactStore:
    """The artifact store of ``kind`` (``"sqlite"`` or ``"jsonl"``) at ``path``."""
    if kind == "sqlite":
        return SqliteArtifactStore(path)
    if kind == "jsonl":
        return JsonlArtifactStore(path)
    raise ValueError(f"unknown store kind {kind!r}")


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Run (or resume) the batch and write its results; returns the summary."""
    started = time.monotonic()
    pairs = [(item_id(i), prompt_of(i)) for i in range(args.items)]
    strategy = ChatStrategy(args.base_url, args.calls_log)
    with open_store(args.store_kind, args.store) as store:
        result = await process_prompts(
            strategy,
            pairs,
            config=ProcessorConfig(max_workers=args.workers, timeout_per_item=30),
            artifact_store=store,
            resume=ResumePolicy.REUSE_SUCCESSES,
        )
    result.to_jsonl(args.out)
    replayed = sum(1 for r in result.results if r.replayed_from_artifact)
    return {
        "total": result.total_items,
        "succeeded": result.succeeded,
        "failed": result.failed,
        "replayed": replayed,
        "called": result.total_items - replayed,
        "elapsed": round(time.monotonic() - started, 3),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", required=True, help="the emulator's /v1 root")
    parser.add_argument("--store-kind", choices=("sqlite", "jsonl"), required=True)
    parser.add_argument("--store", required=True, help="artifact store file")
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--out", required=True, help="where to write the results (JSON Lines)")
    parser.add_argument("--calls-log", default=None, help="append each answered prompt here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    summary = asyncio.run(run(parse_args(argv)))
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
