"""The real ``async-batch-llm`` console script, in a child process, against the OpenAI emulator.

One run of 30 lines is shared by the tests that read its output, its store and its progress
lines; the crash test kills a run of its own with SIGKILL and resumes it.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from async_batch_llm import PriceTable
from async_batch_llm._internal.progress import format_cost
from async_batch_llm.artifacts import SqliteArtifactStore
from async_batch_llm.testing.servers import OpenAIServer, ProviderRequest

from ._support import MODEL, SCRIPT, Outcome, child_env, cli, read_lines, threaded, write_input

pytestmark = pytest.mark.timeout(90)

LINES = 30


@dataclass
class FinishedRun:
    """A completed ``run`` of :data:`LINES` lines with a store."""

    server: OpenAIServer
    tmp: Path
    input: Path
    out: Path
    store: Path
    outcome: Outcome
    chat_calls: int


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with threaded(OpenAIServer(prompt_caching=False)) as running:
        yield running


@pytest.fixture(scope="module")
def finished(server: OpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    tmp = tmp_path_factory.mktemp("finished")
    source = write_input(tmp / "in.jsonl", LINES)
    out, store = tmp / "out.jsonl", tmp / "run.db"
    before = server.counts["chat_completions"]
    outcome = cli(
        [
            "run", str(source), "--provider", "openai", "--model", MODEL,
            "--base-url", server.base_url, "--out", str(out), "--store", str(store),
            "--workers", "4",
        ]
    )  # fmt: skip
    calls = server.counts["chat_completions"] - before
    return FinishedRun(server, tmp, source, out, store, outcome, calls)


def store_records(path: Path) -> dict[str, Any]:
    with SqliteArtifactStore(path) as store:
        return {record.item_id: record for record in store.iter_latest()}


def test_run_answers_every_line_once_and_exits_0(finished: FinishedRun) -> None:
    assert finished.outcome.code == 0, finished.outcome.stderr
    lines = read_lines(finished.out)
    assert Counter(line["custom_id"] for line in lines) == {f"r{i:04d}": 1 for i in range(LINES)}
    for line in lines:
        i = int(line["custom_id"][1:])
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["model"] == MODEL
        assert body["choices"][0]["message"]["content"] == f"echo: question {i}"
        # The emulator counts words: "question <i>" is 2 tokens, "echo: question <i>" 3.
        assert body["usage"]["prompt_tokens"] == 2
        assert body["usage"]["completion_tokens"] == 3
    assert finished.chat_calls == LINES
    assert f"{LINES} succeeded, 0 failed ({LINES} called, 0 reused" in finished.outcome.stdout


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(finished: FinishedRun) -> None:
    lines = [line for line in finished.outcome.stderr.splitlines() if line.startswith("[")]
    assert lines, finished.outcome.stderr
    final = lines[-1]
    assert re.fullmatch(
        rf"\[openai:{MODEL}\] items {LINES}/{LINES} \(100%\) \| ok {LINES} \| failed 0 \| "
        r"[\d.]+ items/s \| req/min [\d,]+ \| tok/min [\d,]+ \| retries 0 \| "
        r"spend (\$[\d.]+) \(projected \1\) \| elapsed \d+s \| done",
        final,
    ), final
    # Every line: 2 input and 3 output tokens at the model's list price.
    price = PriceTable.default().prices(MODEL)
    cost = LINES * price.cost({"input_tokens": 2, "output_tokens": 3, "total_tokens": 5})
    assert f"spend {format_cost(cost)} " in final
    assert "\x1b[" not in finished.outcome.stderr  # no terminal control codes in a log


def test_status_agrees_with_the_store(finished: FinishedRun) -> None:
    records = store_records(finished.store)
    outcome = cli(["status", str(finished.store), "--json"])
    assert outcome.code == 0, outcome.stderr
    status = json.loads(outcome.stdout)
    assert status["items"] == len(records) == LINES
    assert status["succeeded"] == sum(r.success for r in records.values()) == LINES
    assert status["failed"] == 0
    assert status["input_tokens"] == sum(r.token_usage["input_tokens"] for r in records.values())
    assert status["output_tokens"] == 3 * LINES
    costs = [r.cost for r in records.values()]
    assert None not in costs
    assert status["cost"] == pytest.approx(sum(c for c in costs if c is not None))

    human = cli(["status", str(finished.store)])
    assert human.code == 0
    assert f"items:      {LINES}" in human.stdout
    assert f"succeeded:  {LINES}" in human.stdout
    assert f"cost:       {format_cost(status['cost'])}" in human.stdout


def test_export_writes_what_the_run_wrote(finished: FinishedRun) -> None:
    exported = finished.tmp / "exported.jsonl"
    outcome = cli(["export", str(finished.store), "--out", str(exported)])
    assert outcome.code == 0, outcome.stderr
    assert f"{LINES} result(s) written" in outcome.stdout
    as_run = sorted(finished.out.read_text(encoding="utf-8").splitlines())
    assert sorted(exported.read_text(encoding="utf-8").splitlines()) == as_run
    assert {json.loads(line)["custom_id"] for line in as_run} == set(store_records(finished.store))


def test_python_dash_m_is_the_same_command() -> None:
    script = cli(["run", "--help"])
    module = subprocess.run(
        [sys.executable, "-m", "async_batch_llm", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert script.code == module.returncode == 0
    assert module.stdout.replace("python -m async_batch_llm", "async-batch-llm") == script.stdout
    for option in ("--provider", "--model", "--base-url", "--out", "--store", "--resume"):
        assert option in script.stdout


# --------------------------------------------------------------------------- crash and resume


class SlowServer:
    """The emulator, answering each chat completion after ``latency`` seconds."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.server = OpenAIServer(respond=self._respond, prompt_caching=False)

    async def _respond(self, request: ProviderRequest) -> str:
        await asyncio.sleep(self.latency)
        return f"echo: {request.prompt}"


def committed(store: Path) -> set[str]:
    """Item ids with a committed success (read with plain sqlite3, while a writer may run)."""
    if not store.exists():
        return set()
    try:
        with closing(sqlite3.connect(store, timeout=10)) as conn:
            rows = conn.execute("SELECT DISTINCT item_id FROM records WHERE success = 1").fetchall()
    except sqlite3.OperationalError:  # the store is being created
        return set()
    return {row[0] for row in rows}


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_then_resume_answers_every_line_exactly_once(tmp_path: Path) -> None:
    total, workers = 150, 4
    source = write_input(tmp_path / "in.jsonl", total)
    out, store = tmp_path / "out.jsonl", tmp_path / "run.db"
    slow = SlowServer(latency=0.05)
    with threaded(slow.server) as server:
        args = [
            "run", str(source), "--provider", "openai", "--model", MODEL,
            "--base-url", server.base_url, "--out", str(out), "--store", str(store),
            "--workers", str(workers), "--progress", "none",
        ]  # fmt: skip
        child = subprocess.Popen(
            [str(SCRIPT), *args],
            env=child_env(OPENAI_API_KEY="test"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(
                lambda: len(committed(store)) >= 20 or child.poll() is not None,
                timeout=60,
                what="20 committed results",
            )
            assert child.poll() is None, "the run ended before it could be killed"
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            assert child.stderr is not None
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        saved = committed(store)
        first_calls = server.counts["chat_completions"]
        assert 20 <= len(saved) < total
        # Paid twice at most: the calls in flight or awaiting their commit at the kill.
        assert first_calls - len(saved) <= 2 * workers + 20

        resumed = cli([*args, "--resume"])
        second_calls = server.counts["chat_completions"] - first_calls

    assert resumed.code == 0, resumed.stderr
    lines = read_lines(out)
    assert Counter(line["custom_id"] for line in lines) == {f"r{i:04d}": 1 for i in range(total)}
    assert all(line["error"] is None for line in lines)
    assert second_calls == total - len(saved)  # no committed success is called again
    assert f"({total - len(saved)} called, {len(saved)} reused from" in resumed.stdout
    assert set(store_records(store)) == {f"r{i:04d}" for i in range(total)}
