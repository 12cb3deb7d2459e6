"""``error_category`` and ``cost`` survive the artifact stores and ``to_jsonl``; old files read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from async_batch_llm import BatchResult, GuardrailConfig, TokenUsage, WorkItemResult
from async_batch_llm.artifacts import JsonlArtifactStore, ResumePolicy, SqliteArtifactStore
from tests.conftest import ScriptedStrategy, items, make_config, make_processor, run_batch


def price(model: str, usage: TokenUsage) -> float:
    return usage.get("total_tokens", 0) * 0.25


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
async def test_stored_results_replay_with_their_category_and_cost(
    tmp_path: Path, kind: str
) -> None:
    def store() -> Any:
        if kind == "sqlite":
            return SqliteArtifactStore(tmp_path / "run.db")
        return JsonlArtifactStore(tmp_path / "run.jsonl")

    config = make_config(
        retry_max_attempts=1,
        guardrails=GuardrailConfig(cost_function=price, abort_on_error_categories=frozenset()),
    )
    failing = ScriptedStrategy({"bad": [TimeoutError("slow")]})
    with store() as first_store:
        first = await run_batch(
            make_processor(config=config, artifact_store=first_store),
            items(failing, "ok", "bad"),
        )
    with store() as second_store:
        replayed = await run_batch(
            make_processor(
                config=config, artifact_store=second_store, resume=ResumePolicy.REUSE_ALL
            ),
            items(ScriptedStrategy(), "ok", "bad"),
        )
    before = {r.item_id: (r.error_category, r.cost) for r in first.results}
    after = {r.item_id: (r.error_category, r.cost) for r in replayed.results}
    assert before == {"ok": (None, 3.75), "bad": ("timeout", 0.0)}
    assert after == before
    assert all(r.replayed_from_artifact for r in replayed.results)
    assert replayed.total_cost == pytest.approx(3.75)


def test_to_jsonl_round_trips_category_and_cost(tmp_path: Path) -> None:
    batch: BatchResult[str, None] = BatchResult(
        results=[
            WorkItemResult(item_id="a", success=True, output="x", cost=0.5),
            WorkItemResult(
                item_id="b", success=False, error="E: no", error_category="authentication"
            ),
        ]
    )
    path = tmp_path / "out.jsonl"
    batch.to_jsonl(path)
    back = BatchResult.from_jsonl(path)
    assert [(r.error_category, r.cost) for r in back.results] == [
        (None, 0.5),
        ("authentication", None),
    ]
    assert back.total_cost == 0.5


def test_files_written_before_the_new_fields_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    line = {
        "item_id": "a",
        "success": False,
        "output_kind": "none",
        "output": None,
        "error": "E: old",
        "token_usage": {"input_tokens": 1},
        "replayed_from_artifact": False,
    }
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    back = BatchResult.from_jsonl(path)
    assert back.results[0].error_category is None
    assert back.results[0].cost is None
    assert back.total_cost is None


def test_a_wrong_cost_in_a_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    line = {
        "item_id": "a",
        "success": True,
        "output_kind": "str",
        "output": "x",
        "error": None,
        "cost": "cheap",
        "token_usage": {},
    }
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="cost must be a number or null"):
        BatchResult.from_jsonl(path)
