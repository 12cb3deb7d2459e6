"""Helpers of the CLI tests: an emulator on a thread of its own, and running the real script.

The console script runs in a child process and talks HTTP to a local provider emulator. The
emulator runs its own event loop on a background thread, so tests can block on the child
(``subprocess.run``, ``pexpect``) while the emulator keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from async_batch_llm.testing.servers import ProviderServer

S = TypeVar("S", bound=ProviderServer)

SCRIPT = Path(sys.executable).parent / "async-batch-llm"
"""The console script installed in this virtualenv (the real entry point)."""

MODEL = "gpt-4o-mini"


@contextmanager
def threaded(server: S) -> Iterator[S]:
    """Run ``server`` on a background event loop for the duration of the block."""
    loop = asyncio.new_event_loop()
    ready: Future[None] = Future()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    thread = threading.Thread(target=serve, name="emulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(timeout=10)
        ready.set_result(None)
        yield server
    finally:
        if ready.done():
            asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(
                timeout=10
            )
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the child: no provider keys, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    }
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Outcome:
    """What one run of the script did."""

    code: int
    stdout: str
    stderr: str


def cli(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 45) -> Outcome:
    """Run the console script with ``args`` and wait for it."""
    assert shutil.which(str(SCRIPT)) is not None, f"{SCRIPT} is not installed: run make install"
    done = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else child_env(OPENAI_API_KEY="test"),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def batch_line(custom_id: str, content: str, **params: Any) -> str:
    """An OpenAI batch request line."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **params}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


def write_input(path: Path, count: int, prefix: str = "r") -> Path:
    """An input of ``count`` batch lines: custom ids ``r0000``..., prompts ``question <i>``."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(batch_line(f"{prefix}{i:04d}", f"question {i}") + "\n")
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of an output file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
