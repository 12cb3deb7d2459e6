"""Batch mode survives a real SIGKILL while polling: the resumed process polls the job the
killed one submitted and submits nothing again (issue 11).

The emulator runs in this process (on the test's event loop) with a time scale at which a
200-line job stays ``in_progress`` for 2.5 seconds. A child process
(``batch_kill_child.py``) runs the 200 items in ``mode="batch"`` with an artifact store against
it over HTTP, through the real SDK (``openai``, ``anthropic``, or ``google-genai`` for a
``GeminiStrategy`` over a ``GeminiModel``); once the emulator has created the job and answered
a status read showing it ``in_progress``, the child is killed with SIGKILL. A second child on
the same store with ``ResumePolicy.REUSE_SUCCESSES`` must finish every item from that same job.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_batch_llm.testing.servers import (
    AnthropicServer,
    BatchTiming,
    GeminiServer,
    OpenAIServer,
)
from tests.providers.batch_kill_child import item_id, prompt_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # two child starts on a busy machine

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
ITEMS = 200
TIMING = BatchTiming(
    time_scale=80.0, validating_seconds=1.0, seconds_per_line=1.0, finalizing_seconds=1.0
)
"""A 200-line job: validating for 0.0125 s, in_progress for 2.5 s, finalizing for 0.0125 s."""
CHILD_LIMIT = 40.0
"""Seconds, at most, for a child to reach the kill point or to finish."""
GENERATION_KIND = {
    "openai": "chat_completions",
    "anthropic": "messages",
    "gemini": "generate_content",
}
STATUS_READ_KIND = {
    "openai": "batches_retrieve",
    "anthropic": "batches_retrieve",
    "gemini": "batches_get",
}


def child_env() -> dict[str, str]:
    """The child's environment: no HTTP proxy, so loopback traffic stays on loopback."""
    proxies = {"http_proxy", "https_proxy", "all_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def start_child(
    provider: str, base_url: str, kind: str, store: Path, out: Path, log: Path, *, gated: bool
) -> asyncio.subprocess.Process:
    """Start ``batch_kill_child``; a ``gated`` one waits for a line on stdin before it runs."""
    command = [
        sys.executable,
        "-m",
        "tests.providers.batch_kill_child",
        "--provider",
        provider,
        "--base-url",
        base_url,
        "--store-kind",
        kind,
        "--store",
        str(store),
        "--items",
        str(ITEMS),
        "--out",
        str(out),
        *(["--wait-for-go"] if gated else []),
    ]
    with log.open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=asyncio.subprocess.PIPE if gated else asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )


def text_of(path: Path) -> str:
    """A child's log (read only when a test fails, or its results file)."""
    return path.read_text(encoding="utf-8", errors="replace")


async def wait_until(
    condition: Callable[[], bool], child: asyncio.subprocess.Process, log: Path, what: str
) -> None:
    """Return once ``condition()`` holds (checked every 5 ms while the emulator serves the
    child); fail if the child exits first or ``CHILD_LIMIT`` passes."""
    deadline = time.monotonic() + CHILD_LIMIT
    while not condition():
        if child.returncode is not None:
            pytest.fail(f"the child exited ({child.returncode}) before {what}:\n{text_of(log)}")
        if time.monotonic() > deadline:
            child.kill()
            await child.wait()
            pytest.fail(f"no {what} within {CHILD_LIMIT} s:\n{text_of(log)}")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    ("provider", "kind"),
    [("openai", "sqlite"), ("openai", "jsonl"), ("anthropic", "sqlite"), ("gemini", "sqlite")],
)
async def test_a_run_killed_with_sigkill_while_polling_resumes_without_submitting_again(
    tmp_path: Path, provider: str, kind: str
) -> None:
    server: OpenAIServer | AnthropicServer | GeminiServer
    if provider == "openai":
        server = OpenAIServer(batch_timing=TIMING, host=LOOPBACK)
    elif provider == "anthropic":
        server = AnthropicServer(batch_timing=TIMING, host=LOOPBACK)
    else:  # GeminiStrategy over a GeminiModel: google-genai's batch jobs (inline requests)
        server = GeminiServer(batch_timing=TIMING, host=LOOPBACK)
    status_reads = STATUS_READ_KIND[provider]
    store = tmp_path / f"run.{'db' if kind == 'sqlite' else 'jsonl'}"
    out = tmp_path / "results.json"
    children: list[asyncio.subprocess.Process] = []
    async with server:
        base_url = server.base_url if provider == "openai" else server.url
        first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
        try:
            first = await start_child(provider, base_url, kind, store, out, first_log, gated=False)
            children.append(first)
            # The resumed run is started now but held before it opens the store: importing an
            # SDK takes seconds on a busy machine, and the job keeps running meanwhile.
            second = await start_child(provider, base_url, kind, store, out, second_log, gated=True)
            children.append(second)

            # 1. The first run submits its job and polls it; it is killed while the job runs.
            def polled_in_progress() -> bool:
                jobs = list(server.batch_jobs.values())
                return (
                    server.counts[status_reads] >= 1
                    and len(jobs) == 1
                    and jobs[0].state == "in_progress"
                )

            await wait_until(polled_in_progress, first, first_log, "status read of a running job")
            first.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(first.wait(), CHILD_LIMIT) == -signal.SIGKILL
            (job,) = server.batch_jobs.values()
            assert job.state == "in_progress"
            assert len(job.answers) < ITEMS  # killed with lines still to run
            assert not out.exists()
            polls_before = server.counts[status_reads]

            # 2. The resumed run polls that job to the end and submits nothing.
            assert second.stdin is not None
            assert second.returncode is None, text_of(second_log)
            second.stdin.write(b"go\n")
            await second.stdin.drain()
            second.stdin.close()
            code = await asyncio.wait_for(second.wait(), CHILD_LIMIT)
            assert code == 0, text_of(second_log)
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()

    results: dict[str, list[Any]] = json.loads(text_of(out))
    expected = {item_id(i): [True, f"echo: {prompt_of(i)}", False] for i in range(ITEMS)}
    assert results == expected  # every item answered, none replayed: the kill came first
    assert list(server.batch_jobs) == [job.id]  # no second job
    assert server.counts["batches_create"] == 1
    assert len(server.batch_line_submissions) == ITEMS
    assert set(server.batch_line_submissions.values()) == {1}
    assert job.state == "completed"
    assert len(job.answers) == ITEMS  # each line ran once, in the one job
    assert server.counts[GENERATION_KIND[provider]] == 0  # nothing went online
    assert server.counts[status_reads] > polls_before  # the resumed run polled the job
    if provider == "openai":
        assert server.counts["files_create"] == 1
