"""The processor with an artifact store: checkpoint before publish, resume, fingerprints, faults."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from async_batch_llm import LLMCallStrategy, LLMWorkItem, ProcessingEvent, RetryState, TokenUsage
from async_batch_llm.artifacts import (
    ArtifactRecord,
    ArtifactStore,
    ArtifactStoreError,
    JsonlArtifactStore,
    ResumePolicy,
    SqliteArtifactStore,
)
from async_batch_llm.streaming import process_stream
from tests.conftest import (
    USAGE,
    EventRecorder,
    ScriptedStrategy,
    items,
    make_config,
    make_processor,
    run_batch,
)


@pytest.fixture(params=["sqlite", "jsonl"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Makes stores of one kind on one file (each call opens it again, like a new process)."""
    opened: list[ArtifactStore] = []

    def make(**kwargs: Any) -> ArtifactStore:
        for previous in opened:  # one open store per file at a time (JSONL locks it)
            previous.close()
        opened.clear()
        store: ArtifactStore
        if request.param == "sqlite":
            store = SqliteArtifactStore(tmp_path / "run.db", **kwargs)
        else:
            store = JsonlArtifactStore(tmp_path / "run.jsonl", **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


PROMPTS = [f"p{i}" for i in range(12)]


async def test_every_result_is_committed_before_anyone_sees_it(store_factory: Any) -> None:
    store = store_factory()
    seen_uncommitted: list[str] = []

    def check(where: str, item_id: str) -> None:
        if store.lookup(item_id) is None:
            seen_uncommitted.append(f"{where}:{item_id}")

    class Checker(EventRecorder):
        async def on_event(self, event: ProcessingEvent, data: dict[str, Any]) -> None:
            await super().on_event(event, data)
            if event in (ProcessingEvent.ITEM_COMPLETED, ProcessingEvent.ITEM_FAILED):
                check("observer", data["item_id"])

    recorder = Checker()
    strategy = ScriptedStrategy({"p3": [ValueError("bad input")]})
    processor = make_processor(
        config=make_config(max_workers=4, retry_max_attempts=1),
        artifact_store=store,
        observers=[recorder],
        post_processor=lambda r: check("post", r.item_id),
        progress_callback=None,
    )
    result = await run_batch(processor, items(strategy, *PROMPTS))
    for r in result.results:
        check("result", r.item_id)
    assert seen_uncommitted == []
    assert result.total_items == 12
    assert result.failed == 1
    assert len(recorder.of(ProcessingEvent.ITEM_COMPLETED)) == 11
    assert len(recorder.of(ProcessingEvent.ITEM_FAILED)) == 1
    assert store.count() == 12


async def test_reuse_successes_replays_successes_and_calls_failures_again(
    store_factory: Any,
) -> None:
    first = ScriptedStrategy({"p1": [ValueError("nope")], "p2": [ValueError("nope")]})
    config = make_config(max_workers=3, retry_max_attempts=1)
    before = await run_batch(
        make_processor(config=config, artifact_store=store_factory()), items(first, *PROMPTS)
    )
    assert before.failed == 2

    again = ScriptedStrategy()
    after = await run_batch(
        make_processor(
            config=config, artifact_store=store_factory(), resume=ResumePolicy.REUSE_SUCCESSES
        ),
        items(again, *PROMPTS),
    )
    assert sorted(c.prompt for c in again.calls) == ["p1", "p2"]
    by_id = {r.item_id: r for r in after.results}
    assert len(by_id) == 12
    assert after.succeeded == 12
    assert all(by_id[p].replayed_from_artifact for p in PROMPTS if p not in ("p1", "p2"))
    assert not by_id["p1"].replayed_from_artifact
    assert by_id["p5"].output == "ok:p5"
    assert by_id["p5"].token_usage["total_tokens"] == USAGE["total_tokens"]


async def test_reuse_all_replays_failures_too(store_factory: Any) -> None:
    config = make_config(max_workers=2, retry_max_attempts=1)
    first = ScriptedStrategy({"p1": [ValueError("nope")]})
    await run_batch(
        make_processor(config=config, artifact_store=store_factory()), items(first, *PROMPTS)
    )
    again = ScriptedStrategy()
    after = await run_batch(
        make_processor(config=config, artifact_store=store_factory(), resume="reuse_all"),
        items(again, *PROMPTS),
    )
    assert again.calls == []
    failed = [r for r in after.results if not r.success]
    assert [r.item_id for r in failed] == ["p1"]
    assert failed[0].replayed_from_artifact
    assert "nope" in (failed[0].error or "")


async def test_resume_none_records_but_calls_everything(store_factory: Any) -> None:
    config = make_config(max_workers=2)
    await run_batch(
        make_processor(config=config, artifact_store=store_factory()),
        items(ScriptedStrategy(), *PROMPTS),
    )
    again = ScriptedStrategy()
    after = await run_batch(
        make_processor(config=config, artifact_store=store_factory()), items(again, *PROMPTS)
    )
    assert len(again.calls) == 12
    assert not any(r.replayed_from_artifact for r in after.results)


class Declared(ScriptedStrategy):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def fingerprint(self) -> Mapping[str, object]:
        return {"model": self.model, "temperature": 0.0}


@pytest.mark.parametrize("change", ["prompt", "fingerprint", "version", "class"])
async def test_a_changed_item_is_called_again_never_replayed(
    store_factory: Any, change: str
) -> None:
    config = make_config(max_workers=2)
    first = Declared("model-a")
    await run_batch(
        make_processor(config=config, artifact_store=store_factory(version="v1")),
        [LLMWorkItem(item_id="x", strategy=first, prompt="hello")],
    )
    strategy: ScriptedStrategy = Declared("model-b" if change == "fingerprint" else "model-a")
    if change == "class":
        strategy = ScriptedStrategy()
    prompt = "hello, changed" if change == "prompt" else "hello"
    version = "v2" if change == "version" else "v1"
    after = await run_batch(
        make_processor(
            config=config, artifact_store=store_factory(version=version), resume="reuse_successes"
        ),
        [LLMWorkItem(item_id="x", strategy=strategy, prompt=prompt)],
    )
    assert len(strategy.calls) == 1
    assert not after.results[0].replayed_from_artifact


async def test_unchanged_declared_fingerprint_is_replayed(store_factory: Any) -> None:
    config = make_config()
    await run_batch(
        make_processor(config=config, artifact_store=store_factory(version="v1")),
        [LLMWorkItem(item_id="x", strategy=Declared("m"), prompt="hello")],
    )
    again = Declared("m")
    after = await run_batch(
        make_processor(
            config=config, artifact_store=store_factory(version="v1"), resume="reuse_all"
        ),
        [LLMWorkItem(item_id="x", strategy=again, prompt="hello")],
    )
    assert again.calls == []
    assert after.results[0].replayed_from_artifact


class Answer(BaseModel):
    label: str
    score: float


class Returns(LLMCallStrategy[Any]):
    """Returns a fixed output per prompt."""

    def __init__(self, outputs: Mapping[str, object]) -> None:
        self.outputs = outputs
        self.calls = 0

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: RetryState | None = None
    ) -> tuple[Any, TokenUsage]:
        self.calls += 1
        return self.outputs[prompt], {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}


OUTPUTS: dict[str, object] = {
    "text": "plain text ✓",
    "json": {"a": [1, 2.5, None, True], "b": {"c": "d"}},
    "number": 42,
    "model": Answer(label="spam", score=0.75),
    "none": None,
}


async def test_outputs_round_trip_as_the_same_type(store_factory: Any) -> None:
    config = make_config(max_workers=2)

    def work(strategy: Returns) -> list[LLMWorkItem[str, Any, Any]]:
        return [LLMWorkItem(item_id=name, strategy=strategy, prompt=name) for name in OUTPUTS]

    await run_batch(
        make_processor(config=config, artifact_store=store_factory(output_type=Answer)),
        work(Returns(OUTPUTS)),
    )
    again = Returns(OUTPUTS)
    after = await run_batch(
        make_processor(
            config=config, artifact_store=store_factory(output_type=Answer), resume="reuse_all"
        ),
        work(again),
    )
    assert again.calls == 0
    replayed = {r.item_id: r.output for r in after.results}
    assert replayed == OUTPUTS
    assert isinstance(replayed["model"], Answer)


async def test_an_unstorable_output_fails_only_that_item(store_factory: Any) -> None:
    outputs = {"good": "fine", "bad": {1, 2, 3}, "model": Answer(label="x", score=1.0)}
    recorder = EventRecorder()
    processor = make_processor(
        config=make_config(max_workers=2), artifact_store=store_factory(), observers=[recorder]
    )
    result = await run_batch(
        processor, [LLMWorkItem(item_id=k, strategy=Returns(outputs), prompt=k) for k in outputs]
    )
    by_id = {r.item_id: r for r in result.results}
    assert by_id["good"].success
    assert not by_id["bad"].success
    assert "set" in (by_id["bad"].error or "")
    assert not by_id["model"].success
    assert "output_type=Answer" in (by_id["model"].error or "")
    assert by_id["bad"].token_usage["total_tokens"] == 7  # the call was paid for
    failed = recorder.of(ProcessingEvent.ITEM_FAILED)
    assert sorted(d["item_id"] for d in failed) == ["bad", "model"]
    assert {d["error_type"] for d in failed} == {"UnstorableOutputError"}


class FailingAfter(SqliteArtifactStore):
    """Commits ``good`` groups of records, then every write fails like a full disk."""

    def __init__(self, path: Path, good: int) -> None:
        super().__init__(path, commit_interval=0.001)
        self.good = good

    def write(self, records: Sequence[ArtifactRecord]) -> None:
        if self.good <= 0:
            raise ArtifactStoreError("database or disk is full")
        self.good -= 1
        super().write(records)


async def test_a_failing_store_stops_the_batch_and_still_returns_every_result(
    tmp_path: Path,
) -> None:
    store = FailingAfter(tmp_path / "full.db", good=1)

    class Slow(ScriptedStrategy):  # real time: the writer thread commits while calls run
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> Any:
            await asyncio.sleep(0.002)
            return await super().execute(prompt, attempt, timeout, state)

    strategy = Slow()
    processor = make_processor(config=make_config(max_workers=2), artifact_store=store)
    prompts = [f"p{i}" for i in range(200)]
    with pytest.raises(ArtifactStoreError, match="disk is full") as caught:
        await run_batch(processor, items(strategy, *prompts))
    partial = caught.value.partial_result
    assert partial is not None
    assert sorted(r.item_id for r in partial.results) == sorted(prompts)
    committed = {
        row[0]
        for row in sqlite3.connect(tmp_path / "full.db").execute("SELECT item_id FROM records")
    }
    assert committed  # the first group made it
    for r in partial.results:
        if r.item_id in committed:
            assert r.success
    not_started = [r for r in partial.results if (r.error or "").startswith("NotStarted")]
    assert len(strategy.calls) + len(not_started) == 200
    assert len(strategy.calls) < 200  # the batch stopped taking items
    store.close()


async def test_stream_with_a_store_resumes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    config = make_config(max_workers=3)
    with SqliteArtifactStore(path) as store:
        first = [
            r
            async for r in process_stream(
                ScriptedStrategy(), PROMPTS[:6], config=config, artifact_store=store
            )
        ]
    assert len(first) == 6
    again = ScriptedStrategy()
    with SqliteArtifactStore(path) as store:
        results = [
            r
            async for r in process_stream(
                again, PROMPTS, config=config, artifact_store=store, resume="reuse_successes"
            )
        ]
    assert sorted(c.prompt for c in again.calls) == sorted(PROMPTS[6:])
    assert sum(r.replayed_from_artifact for r in results) == 6


async def test_bad_store_arguments_are_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="artifact_store must be an ArtifactStore"):
        make_processor(artifact_store=str(tmp_path / "x.db"))
    with pytest.raises(ValueError, match="needs an artifact_store"):
        make_processor(resume=ResumePolicy.REUSE_ALL)
    with pytest.raises(ArtifactStoreError, match="does not exist"):
        SqliteArtifactStore(tmp_path / "missing" / "x.db")


async def test_cancelled_batch_still_commits_what_was_paid_for(tmp_path: Path) -> None:
    gate = asyncio.Event()

    class HalfGated(ScriptedStrategy):
        async def execute(
            self, prompt: str, attempt: int, timeout: float, state: Any = None
        ) -> Any:
            if int(prompt[1:]) >= 6:
                await gate.wait()
            return await super().execute(prompt, attempt, timeout, state)

    store = SqliteArtifactStore(tmp_path / "c.db", commit_interval=10.0)
    processor = make_processor(config=make_config(max_workers=12), artifact_store=store)
    for item in items(HalfGated(), *PROMPTS):
        await processor.add_work(item)
    task = asyncio.ensure_future(processor.process_all())
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Six calls finished before the cancel; the long commit interval had not come round yet.
    assert store.count() == 6
    store.close()


def test_batch_result_round_trips_through_jsonl(tmp_path: Path) -> None:
    from async_batch_llm import BatchResult, WorkItemResult

    results: list[WorkItemResult[Any, Any]] = [
        WorkItemResult(item_id=name, success=True, output=value, token_usage=USAGE.copy())
        for name, value in OUTPUTS.items()
    ]
    results.append(
        WorkItemResult(item_id="failed", success=False, error="ValueError: x", context=object())
    )
    results[0].replayed_from_artifact = True
    path = tmp_path / "out.jsonl"
    assert BatchResult(results=results).to_jsonl(path) == len(results)
    back = BatchResult.from_jsonl(path, output_type=Answer)
    assert [(r.item_id, r.success, r.output, r.error) for r in back.results] == [
        (r.item_id, r.success, r.output, r.error) for r in results
    ]
    assert back.results[0].replayed_from_artifact
    assert not back.results[1].replayed_from_artifact
    assert back.total_input_tokens == BatchResult(results=results).total_input_tokens
    without_type = BatchResult.from_jsonl(path)
    assert without_type.results[3].output == {"label": "spam", "score": 0.75}


def test_to_jsonl_names_the_item_whose_output_has_no_json_form(tmp_path: Path) -> None:
    from async_batch_llm import BatchResult, WorkItemResult
    from async_batch_llm.artifacts import UnstorableOutputError

    batch: BatchResult[bytes, None] = BatchResult(
        results=[WorkItemResult(item_id="odd", success=True, output=b"raw")]
    )
    with pytest.raises(UnstorableOutputError, match=r"item 'odd'.*bytes"):
        batch.to_jsonl(tmp_path / "x.jsonl")
