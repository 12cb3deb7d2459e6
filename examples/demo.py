"""`make demo`: the ``async-batch-llm`` command on a sample file, offline and without an API key.

The demo starts a local OpenAI emulator (``async_batch_llm.testing.servers.OpenAIServer``) on a
free loopback port and runs the real console script against it, three times:

1. ``async-batch-llm run examples/demo_requests.jsonl ... --store RUN.db --tpm N``: 50 requests
   in the OpenAI batch format. The emulator answers after 0.1-0.4 s, fails the first attempt of
   three requests with a 500, 502 or 503 (the processor retries them), and enforces a
   tokens-per-minute quota over 3-second windows, answering ``429`` when it is exceeded; ``--tpm``
   tells the run a limit a little below it, so requests wait their turn instead of taking 429s.
   On a terminal you watch the live panel (items, retries, tokens per minute against the limit,
   spend, ETA); elsewhere it prints a plain line every 5 seconds.
2. The same command with ``--resume``: every answer is already committed to the store, so
   nothing is called (the emulator counts 0 completions) and the cost is $0.
3. ``async-batch-llm status RUN.db``: what the store holds.

Then it checks what it showed: every line answered once, the resume made no call, exit codes 0.
It exits 1 if any check fails.

Run it with ``make demo`` or ``python examples/demo.py [--tpm N] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from async_batch_llm.testing.servers import (
    OpenAIServer,
    ProviderRequest,
    ResponseValue,
    ServerError,
)

REQUESTS = Path(__file__).resolve().parent / "demo_requests.jsonl"
MODEL = "gpt-4o-mini"
SERVER_TOKENS_PER_MINUTE = 30_000  # what the emulator enforces
RUN_TOKENS_PER_MINUTE = 24_000  # what the run is told (--tpm): a margin below the real limit
FAIL_ONCE = {7: 503, 19: 500, 33: 502}  # request line -> the status of its first attempt
SCRIPT = Path(sys.executable).parent / "async-batch-llm"


class DemoProvider:
    """Answers like a busy provider: some latency, and a few first attempts that fail."""

    def __init__(self) -> None:
        self.prompts = {
            _prompt_key(json.loads(line)): number
            for number, line in enumerate(REQUESTS.read_text(encoding="utf-8").splitlines(), 1)
        }
        self.failed: set[int] = set()
        self._lock = threading.Lock()

    async def respond(self, request: ProviderRequest) -> ResponseValue:
        seed = zlib.crc32(request.prompt.encode("utf-8"))
        await asyncio.sleep(0.1 + (seed % 300) / 1000)
        number = self.prompts.get(request.prompt)
        with self._lock:
            if number in FAIL_ONCE and number not in self.failed:
                self.failed.add(number)
                return ServerError(FAIL_ONCE[number])
        words = request.prompt.split()
        length = 8 + seed % 60  # a reply of 8 to 67 words
        return "(emulated answer) " + " ".join(
            (words * (length // max(len(words), 1) + 1))[:length]
        )


def _prompt_key(line: dict[str, object]) -> str:
    """The last user message of a request line: what identifies it in the emulator."""
    body = line["body"]
    assert isinstance(body, dict)
    return str(body["messages"][-1]["content"])


@contextmanager
def emulator(provider: DemoProvider) -> Iterator[OpenAIServer]:
    """The OpenAI emulator on a free loopback port, served by a background event loop."""
    server = OpenAIServer(
        respond=provider.respond,
        tokens_per_minute=SERVER_TOKENS_PER_MINUTE,
        prompt_caching=False,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(timeout=10)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(
                timeout=10
            )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def cli(*args: str) -> tuple[int, str]:
    """Run the console script; stderr (the live panel) goes to ours, stdout is shown and kept."""
    shown = " ".join(["async-batch-llm", *(a if " " not in a else repr(a) for a in args)])
    print(f"\n$ {shown}", flush=True)
    done = subprocess.run(
        [str(SCRIPT), *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    print(done.stdout, end="", flush=True)
    return done.returncode, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--tpm",
        type=int,
        default=RUN_TOKENS_PER_MINUTE,
        help="the run's --tpm (default %(default)s)",
    )
    parser.add_argument("--keep", type=Path, help="write run.db and out.jsonl here and keep them")
    args = parser.parse_args()
    if args.tpm < 1:
        parser.error(f"--tpm must be >= 1, got {args.tpm}")
    if not SCRIPT.exists():
        print(f"error: {SCRIPT} is not installed: run `make install`", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="async-batch-llm-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return demo(work, args.tpm)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def demo(work: Path, tpm: int) -> int:
    store, out = work / "run.db", work / "out.jsonl"
    for stale in (store, out):
        stale.unlink(missing_ok=True)
    requests = REQUESTS.read_text(encoding="utf-8").splitlines()
    relative = REQUESTS.relative_to(Path.cwd()) if REQUESTS.is_relative_to(Path.cwd()) else REQUESTS
    provider = DemoProvider()
    with emulator(provider) as server:
        print(
            f"async-batch-llm demo: {len(requests)} requests of {relative} (OpenAI batch format) "
            f"to a local OpenAI emulator at {server.base_url}, offline, no API key.\n"
            f"The emulator takes 0.1-0.4 s an answer, fails the first attempt of lines "
            f"{', '.join(map(str, FAIL_ONCE))} with a 5xx, and answers 429 above "
            f"{SERVER_TOKENS_PER_MINUTE:,} tokens a minute; the run is told --tpm {tpm:,}."
        )
        run = [
            "run", str(relative), "--provider", "openai", "--model", MODEL,
            "--base-url", server.base_url, "--store", str(store), "--out", str(out),
            "--tpm", str(tpm),
        ]  # fmt: skip
        started = time.perf_counter()
        first_code, _ = cli(*run)
        first_wall = time.perf_counter() - started
        first_calls = server.counts["chat_completions"]
        first_requests = server.request_count
        statuses = dict(sorted(server.status_counts.items()))
        answered = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

        print("\nNow the same command with --resume: every answer is in the store already.")
        second_code, second_out = cli(*run, "--resume")
        resume_calls = server.counts["chat_completions"] - first_calls
        resume_requests = server.request_count - first_requests

    status_code, _ = cli("status", str(store))

    ids = [line["custom_id"] for line in answered]
    ok = sum(line["error"] is None for line in answered)
    print("\nWhat the emulator saw")
    print(
        f"  first run : {first_calls} completions ({len(requests)} lines + "
        f"{first_calls - len(requests)} retries) and {first_requests - first_calls} model-list "
        f"check(s); statuses {_counts(statuses)} (429s: {statuses.get(429, 0)}); {first_wall:.1f}s"
    )
    print(
        f"  resume    : {resume_calls} completions and {resume_requests - resume_calls} "
        "model-list check(s): every answer came from the store"
    )
    print(f"  output    : {len(answered)} lines for {len(requests)} requests, {ok} answered")
    checks = {
        "every line answered once": sorted(ids)
        == sorted(json.loads(r)["custom_id"] for r in requests)
        and ok == len(requests),
        "the first attempts that failed were retried": provider.failed == set(FAIL_ONCE),
        "the resume made 0 calls and cost $0": resume_calls == 0
        and f"(0 called, {len(requests)} reused" in second_out
        and "cost: $0.000000" in second_out,
        "every command exited 0": (first_code, second_code, status_code) == (0, 0, 0),
    }
    print("\nChecks")
    for name, passed in checks.items():
        print(f"  [{'ok' if passed else 'FAILED'}] {name}")
    return 0 if all(checks.values()) else 1


def _counts(statuses: dict[int, int]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in statuses.items())


if __name__ == "__main__":
    sys.exit(main())
