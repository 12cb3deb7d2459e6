"""Strategies and factories the Ray workers build (importable, so Ray pickles them by name)."""

from __future__ import annotations

import time
from typing import Any

from async_batch_llm import LLMCallStrategy, TokenUsage
from async_batch_llm.llm_strategies import OpenAIStrategy


class Stamping(LLMCallStrategy[str]):
    """Answers ``"<wall time>|<prompt>"`` at once; fails the prompts starting with "fail"."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, TokenUsage]:
        if prompt.startswith("fail"):
            raise ValueError(f"cannot answer {prompt}")
        usage: TokenUsage = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
        return f"{time.time():.6f}|{prompt}", usage


class OpenAIFactory:
    """``strategy_factory`` for an OpenAIStrategy against ``base_url`` (built in each worker)."""

    def __init__(self, base_url: str, model: str = "gpt-4o-mini") -> None:
        self.base_url = base_url
        self.model = model

    def __call__(self) -> OpenAIStrategy[str]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key="offline", max_retries=0)
        return OpenAIStrategy(client, self.model)


def rows(count: int, failing: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """``count`` rows ``{"id", "prompt", "extra"}``; the ``failing`` ids get failing prompts."""
    return [
        {"id": i, "prompt": f"{'fail' if i in failing else 'p'}{i}", "extra": i * 10}
        for i in range(count)
    ]


AUDIT_DIR_ENV = "ABL_RAY_TEST_AUDIT_DIR"


def audit_connections() -> None:
    """Record every Python ``socket.connect``/``bind`` of this process into the audit folder.

    Installed in the test process and, as Ray's ``worker_process_setup_hook``, in every Ray
    worker. One line a call: ``pid event host port``.
    """
    import os
    import sys

    folder = os.environ.get(AUDIT_DIR_ENV)
    if not folder:
        return
    path = os.path.join(folder, f"{os.getpid()}.log")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in ("socket.connect", "socket.bind"):
            return
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2:
            with open(path, "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {event} {address[0]} {address[1]}\n")

    sys.addaudithook(hook)
