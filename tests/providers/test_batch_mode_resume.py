"""Batch mode with an artifact store: job ids and line maps survive a crash; a resumed run polls
the jobs it has instead of submitting again, and replays what was already downloaded.

A "crash" is a ``BaseException`` raised from the processor's clock while it waits between polls
(or from inside ``submit``): nothing of ours runs after it (no job is cancelled), as when the
process is killed. The provider (the emulator) outlives it, as a real one does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from async_batch_llm import LLMWorkItem, ParallelBatchProcessor, ProcessorConfig
from async_batch_llm._internal.journal import Journal
from async_batch_llm._strategies.batch_api import BatchLine
from async_batch_llm._strategies.openai_batch import OpenAIBatchBackend
from async_batch_llm.artifacts import (
    ArtifactStore,
    JsonlArtifactStore,
    ResumePolicy,
    SqliteArtifactStore,
)
from async_batch_llm.llm_strategies import OpenAIStrategy
from async_batch_llm.testing.servers import OpenAIServer
from tests.providers.test_batch_mode_openai import JumpClock


class Crash(BaseException):
    """Stands for the process being killed."""


class CrashingClock(JumpClock):
    """Its first sleep (the wait before the first poll) kills the run."""

    async def sleep(self, seconds: float) -> None:
        raise Crash


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
async def server(clock: JumpClock) -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(clock=clock.time) as running:
        yield running


@pytest.fixture
async def client(server: OpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0
    ) as sdk_client:
        yield sdk_client


def open_store(path: Path) -> ArtifactStore:
    if path.suffix == ".jsonl":
        return JsonlArtifactStore(path)
    return SqliteArtifactStore(path)


async def run(
    strategy: OpenAIStrategy[Any],
    n: int,
    clock: JumpClock,
    store: ArtifactStore,
    resume: ResumePolicy = ResumePolicy.REUSE_SUCCESSES,
) -> dict[str, Any]:
    async with ParallelBatchProcessor[str, Any, None](
        config=ProcessorConfig(mode="batch", max_workers=2),
        clock=clock,
        artifact_store=store,
        resume=resume,
    ) as processor:
        for i in range(n):
            await processor.add_work(
                LLMWorkItem(item_id=f"r{i}", strategy=strategy, prompt=f"resume {i}")
            )
        try:
            batch = await processor.process_all()
        finally:
            store.close()
    return {result.item_id: result for result in batch.results}


async def expect_crash(running: Awaitable[object]) -> None:
    """Await ``running``; it must end in the :class:`Crash` (alone or in a task group's group)."""
    caught: BaseException | None = None
    try:
        await running
    except (Crash, BaseExceptionGroup) as exc:
        caught = exc
    if isinstance(caught, BaseExceptionGroup):
        caught = caught.subgroup(Crash)
    assert caught is not None, "the run did not crash"


async def crashed(strategy: OpenAIStrategy[Any], n: int, store: ArtifactStore) -> None:
    await expect_crash(run(strategy, n, CrashingClock(), store))


@pytest.mark.parametrize("name", ["run.db", "run.jsonl"])
async def test_a_run_killed_while_polling_resumes_without_submitting_again(
    server: OpenAIServer,
    client: openai.AsyncOpenAI,
    clock: JumpClock,
    tmp_path: Path,
    name: str,
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    await crashed(strategy, 20, open_store(tmp_path / name))
    assert len(server.batch_jobs) == 1  # submitted, then the process died

    results = await run(strategy, 20, clock, open_store(tmp_path / name))
    assert all(r.success for r in results.values())
    assert results["r7"].output == "echo: resume 7"
    assert len(server.batch_jobs) == 1  # polled, not submitted again
    assert len(server.batch_line_submissions) == 20
    assert set(server.batch_line_submissions.values()) == {1}
    assert server.counts["files_create"] == 1

    # A third run replays everything: nothing is fetched or paid again.
    before = dict(server.counts)
    again = await run(strategy, 20, clock, open_store(tmp_path / name))
    assert all(r.replayed_from_artifact for r in again.values())
    assert {k: r.output for k, r in again.items()} == {k: r.output for k, r in results.items()}
    assert dict(server.counts) == before


async def test_only_the_items_no_job_holds_are_submitted_on_resume(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock, tmp_path: Path
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    await crashed(strategy, 5, open_store(tmp_path / "run.db"))
    results = await run(strategy, 8, clock, open_store(tmp_path / "run.db"))  # 3 new items
    assert all(r.success for r in results.values())
    assert [len(job.lines) for job in server.batch_jobs.values()] == [5, 3]
    assert set(server.batch_line_submissions.values()) == {1}


async def test_without_resume_a_new_run_submits_its_own_jobs(
    server: OpenAIServer, client: openai.AsyncOpenAI, clock: JumpClock, tmp_path: Path
) -> None:
    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    await crashed(strategy, 4, open_store(tmp_path / "run.db"))
    results = await run(strategy, 4, clock, open_store(tmp_path / "run.db"), ResumePolicy.NONE)
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 2


async def test_a_job_whose_id_was_never_saved_is_found_by_its_tag(
    server: OpenAIServer,
    client: openai.AsyncOpenAI,
    clock: JumpClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submit = OpenAIBatchBackend.submit

    async def crash_after_create(
        self: OpenAIBatchBackend, lines: Sequence[BatchLine], tag: str
    ) -> str:
        await submit(self, lines, tag)  # the job is created, then the process dies
        raise Crash

    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    with monkeypatch.context() as patched:
        patched.setattr(OpenAIBatchBackend, "submit", crash_after_create)
        await expect_crash(run(strategy, 6, clock, open_store(tmp_path / "run.db")))
    assert len(server.batch_jobs) == 1

    results = await run(strategy, 6, clock, open_store(tmp_path / "run.db"))
    assert all(r.success for r in results.values())
    assert len(server.batch_jobs) == 1
    assert server.counts["batches_list"] == 1


@pytest.mark.parametrize("name", ["jobs.db", "jobs.jsonl"])
def test_stores_keep_the_latest_entry_of_each_job(tmp_path: Path, name: str) -> None:
    store = open_store(tmp_path / name)
    assert store.supports_batch_jobs
    assert store.load_batch_jobs() == {}
    store.save_batch_job("a-1", '{"state":"submitting"}')
    store.save_batch_job("a-2", '{"state":"submitted"}')
    store.save_batch_job("a-1", '{"state":"collected"}')
    store.close()
    reopened = open_store(tmp_path / name)
    assert reopened.load_batch_jobs() == {
        "a-1": '{"state":"collected"}',
        "a-2": '{"state":"submitted"}',
    }
    assert reopened.count() == 0  # job entries are not item records
    reopened.close()


def test_a_torn_last_job_line_is_ignored(tmp_path: Path) -> None:
    store = JsonlArtifactStore(tmp_path / "run.jsonl")
    store.save_batch_job("k", "v")
    with (tmp_path / "run.jsonl.batch-jobs").open("a") as torn:
        torn.write('{"key": "x", "val')
    assert store.load_batch_jobs() == {"k": "v"}
    store.close()


async def test_results_committed_before_a_crash_while_collecting_are_replayed_not_taken_again(
    server: OpenAIServer,
    client: openai.AsyncOpenAI,
    clock: JumpClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submit = Journal.submit
    handed: list[str] = []

    def crash_on_the_sixth(
        self: Journal[Any, Any, Any], item: Any, result: Any, event: Any
    ) -> None:
        if len(handed) == 5:  # the job's results are being mapped back: the process dies
            raise Crash
        handed.append(item.item_id)
        submit(self, item, result, event)

    strategy = OpenAIStrategy(client, "gpt-4o-mini")
    with monkeypatch.context() as patched:
        patched.setattr(Journal, "submit", crash_on_the_sixth)
        await expect_crash(run(strategy, 12, clock, open_store(tmp_path / "run.db")))
    [job] = server.batch_jobs.values()
    assert job.state == "completed"
    downloads = server.counts["files_content"]

    results = await run(strategy, 12, clock, open_store(tmp_path / "run.db"))
    assert all(r.success for r in results.values())
    replayed = sorted(k for k, r in results.items() if r.replayed_from_artifact)
    assert replayed == sorted(handed)  # the 5 committed results, not taken from the job again
    assert {k: r.output for k, r in results.items()} == {
        f"r{i}": f"echo: resume {i}" for i in range(12)
    }
    # The other 7 come from the same job, read again; nothing is submitted or paid twice.
    assert list(server.batch_jobs.values()) == [job]
    assert set(server.batch_line_submissions.values()) == {1}
    assert server.counts["files_content"] > downloads
    assert server.counts["chat_completions"] == 0
