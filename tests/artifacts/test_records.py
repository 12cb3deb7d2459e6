"""Record encoding, decoding and fingerprints (pure functions, no I/O)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from async_batch_llm._internal.artifacts.records import (
    ArtifactRecord,
    ArtifactStoreError,
    ResumePolicy,
    UnstorableOutputError,
    decode_output,
    encode_output,
    item_fingerprint,
    record_from_json,
    record_to_json_line,
    strategy_identity,
)


class Answer(BaseModel):
    label: str
    score: float
    tags: list[str] = []


class Other(BaseModel):
    x: int


@dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "output",
    [
        "plain text",
        "",
        "ünïcödé ✓ 日本",
        {"a": 1, "b": [True, None, 2.5, "x"], "c": {"nested": {}}},
        [1, 2, 3],
        [],
        0,
        -7,
        10**30,
        2.5,
        True,
        False,
    ],
    ids=repr,
)
def test_json_and_str_outputs_round_trip_with_their_type(output: object) -> None:
    kind, payload = encode_output(output, None)
    back = decode_output(kind, payload, None)
    assert back == output
    assert type(back) is type(output)


def test_str_output_is_stored_as_is() -> None:
    assert encode_output("hello", None) == ("str", "hello")


def test_none_output_round_trips() -> None:
    assert encode_output(None, None) == ("none", None)
    assert decode_output("none", None, None) is None


def test_model_output_round_trips_with_output_type() -> None:
    answer = Answer(label="spam", score=0.25, tags=["a"])
    kind, payload = encode_output(answer, Answer)
    assert kind == "model"
    back = decode_output(kind, payload, Answer)
    assert isinstance(back, Answer)
    assert back == answer


def test_str_with_lone_surrogate_round_trips_through_an_encodable_payload() -> None:
    text = "bad \udc80 half"
    kind, payload = encode_output(text, None)
    assert payload is not None
    payload.encode("utf-8")  # storable as UTF-8 text
    assert decode_output(kind, payload, None) == text


@pytest.mark.parametrize(
    ("output", "type_name"),
    [
        (b"raw", "bytes"),
        ({1, 2}, "set"),
        (object(), "object"),
        (Point(1), "Point"),
        ((1, 2), "tuple"),
        ({"a": {1, 2}}, "set"),
        ({"a": (1, 2)}, "tuple"),
        ({1: "int key"}, "int"),
        ([float("nan")], "nan"),
        (float("inf"), "inf"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_unstorable_outputs_raise_naming_the_type(output: object, type_name: str) -> None:
    with pytest.raises(UnstorableOutputError, match=type_name):
        encode_output(output, None)


def test_unstorable_output_error_is_a_type_error() -> None:
    assert issubclass(UnstorableOutputError, TypeError)


def test_model_without_output_type_is_unstorable_and_says_what_to_pass() -> None:
    with pytest.raises(UnstorableOutputError, match=r"Answer.*output_type=Answer"):
        encode_output(Answer(label="x", score=1.0), None)


def test_model_of_another_class_than_output_type_is_unstorable() -> None:
    with pytest.raises(UnstorableOutputError, match=r"Answer.*output_type=Answer"):
        encode_output(Answer(label="x", score=1.0), Other)


def test_decoding_a_model_without_output_type_raises_store_error() -> None:
    _, payload = encode_output(Answer(label="x", score=1.0), Answer)
    with pytest.raises(ArtifactStoreError, match="output_type"):
        decode_output("model", payload, None)


def test_decoding_a_model_that_no_longer_validates_raises_store_error() -> None:
    _, payload = encode_output(Answer(label="x", score=1.0), Answer)
    with pytest.raises(ArtifactStoreError, match="version="):
        decode_output("model", payload, Other)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [("bogus", "x"), ("str", None), ("json", None), ("json", "{not json")],
)
def test_decoding_corrupt_payloads_raises_store_error(kind: str, payload: str | None) -> None:
    with pytest.raises(ArtifactStoreError, match="corrupt record"):
        decode_output(kind, payload, None)


class PlainStrategy:
    pass


class DeclaringStrategy:
    def __init__(self, params: Mapping[str, object]) -> None:
        self.params = params

    def fingerprint(self) -> Mapping[str, object]:
        return self.params


class RaisingStrategy:
    def fingerprint(self) -> Mapping[str, object]:
        raise KeyError("model")


class ListStrategy:
    def fingerprint(self) -> object:
        return ["not", "a", "mapping"]


def test_strategy_identity_is_the_qualified_class_name() -> None:
    assert strategy_identity(PlainStrategy()) == f"{__name__}.PlainStrategy"


def test_strategy_identity_includes_declared_fingerprint_canonically() -> None:
    one = strategy_identity(DeclaringStrategy({"model": "m1", "temperature": 0.0}))
    same = strategy_identity(DeclaringStrategy({"temperature": 0.0, "model": "m1"}))
    other = strategy_identity(DeclaringStrategy({"model": "m2", "temperature": 0.0}))
    assert one == same
    assert one != other
    assert one.startswith(f"{__name__}.DeclaringStrategy|")
    assert json.loads(one.split("|", 1)[1]) == {"model": "m1", "temperature": 0.0}


def test_strategy_fingerprint_values_that_are_not_json_are_taken_by_repr() -> None:
    identity = strategy_identity(DeclaringStrategy({"stop": ("a", "b"), "p": Point(3)}))
    assert "Point(x=3)" in identity


def test_strategy_fingerprint_that_raises_is_a_store_error_naming_the_class() -> None:
    with pytest.raises(ArtifactStoreError, match=r"RaisingStrategy\.fingerprint\(\) raised"):
        strategy_identity(RaisingStrategy())


def test_strategy_fingerprint_returning_a_non_mapping_is_a_store_error() -> None:
    with pytest.raises(ArtifactStoreError, match=r"ListStrategy.*mapping, got list"):
        strategy_identity(ListStrategy())


def test_item_fingerprint_is_stable_and_32_hex_characters() -> None:
    first = item_fingerprint("prompt", "S", "v1")
    assert first == item_fingerprint("prompt", "S", "v1")
    assert len(first) == 32
    int(first, 16)


@pytest.mark.parametrize(
    ("prompt", "identity", "version"),
    [
        ("prompt!", "S", "v1"),
        ("prompt", "T", "v1"),
        ("prompt", "S", "v2"),
        ("prompt", "S", None),
        (["prompt"], "S", "v1"),
    ],
    ids=["prompt", "identity", "version", "no-version", "non-str-prompt"],
)
def test_item_fingerprint_changes_with_each_input(
    prompt: object, identity: str, version: str | None
) -> None:
    assert item_fingerprint(prompt, identity, version) != item_fingerprint("prompt", "S", "v1")


def test_item_fingerprint_fields_are_separated() -> None:
    # Moving text from the identity into the prompt must not give the same hash.
    assert item_fingerprint("bc", "a", None) != item_fingerprint("c", "ab", None)


def test_item_fingerprint_of_structured_prompts_is_canonical() -> None:
    one = item_fingerprint([{"role": "user", "text": "hi"}], "S", None)
    same = item_fingerprint([{"text": "hi", "role": "user"}], "S", None)
    assert one == same


def test_item_fingerprint_follows_the_strategy_fingerprint_hook() -> None:
    m1 = strategy_identity(DeclaringStrategy({"model": "m1"}))
    m2 = strategy_identity(DeclaringStrategy({"model": "m2"}))
    assert item_fingerprint("p", m1, None) != item_fingerprint("p", m2, None)


def test_resume_policy_values() -> None:
    assert [p.value for p in ResumePolicy] == ["none", "reuse_successes", "reuse_all"]
    assert ResumePolicy("reuse_all") is ResumePolicy.REUSE_ALL
    assert isinstance(ResumePolicy.NONE, str)


@pytest.mark.parametrize(
    "output",
    ["text", None, {"k": [1, 2]}, Answer(label="a", score=0.5)],
    ids=["str", "none", "json", "model"],
)
def test_json_line_round_trips_a_record(output: object) -> None:
    kind, payload = encode_output(output, Answer)
    record = ArtifactRecord(
        item_id="it\n1",
        fingerprint="f" * 32,
        success=output is not None,
        output_kind=kind,
        output=payload,
        error=None if output is not None else "boom",
        token_usage={"input_tokens": 3, "output_tokens": 4},
        error_category="transient" if output is None else None,
        cost=0.5,
        created_at=1234.5,
    )
    line = record_to_json_line(record)
    assert "\n" not in line
    obj = json.loads(line)
    if kind in ("json", "model"):
        assert obj["output"] == json.loads(payload or "")
    else:
        assert obj["output"] == output
    back = record_from_json(obj)
    assert back.item_id == record.item_id
    assert decode_output(back.output_kind, back.output, Answer) == output
    # Everything but the payload text (which may be re-serialised) comes back identical.
    assert back == dataclasses.replace(record, output=back.output)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "JSON object"),
        ({"item_id": "a"}, "missing field"),
        (
            {
                "item_id": "a",
                "fingerprint": "f",
                "success": "yes",
                "output_kind": "str",
                "output": "x",
                "error": None,
                "token_usage": {},
            },
            "success",
        ),
        (
            {
                "item_id": "a",
                "fingerprint": "f",
                "success": True,
                "output_kind": "weird",
                "output": "x",
                "error": None,
                "token_usage": {},
            },
            "output_kind",
        ),
    ],
    ids=["not-object", "missing", "bad-success", "bad-kind"],
)
def test_record_from_json_rejects_foreign_objects(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record_from_json(obj)


@pytest.mark.parametrize("prompt", ["plain", "ünïcode \ud800 lone surrogate", ["a", {"b": 1}]])
@pytest.mark.parametrize("version", [None, "v2"])
def test_the_journals_cached_hasher_gives_item_fingerprint_exactly(
    tmp_path: Path, prompt: object, version: str | None
) -> None:
    # The journal hashes a strategy's identity once and copies the hasher per prompt: the
    # result must be the very fingerprint item_fingerprint() gives, or stores would not match.
    from async_batch_llm import LLMWorkItem
    from async_batch_llm._internal.artifacts.jsonl import JsonlArtifactStore
    from async_batch_llm._internal.journal import Journal
    from tests.conftest import ScriptedStrategy

    store = JsonlArtifactStore(tmp_path / "a.jsonl", version=version)
    journal: Journal[Any, Any, Any] = Journal(store, ResumePolicy.NONE)
    strategy = ScriptedStrategy()
    item: LLMWorkItem[Any, Any, Any] = LLMWorkItem(item_id="x", strategy=strategy, prompt=prompt)  # type: ignore[arg-type]
    expected = item_fingerprint(prompt, strategy_identity(strategy), version)
    assert journal.fingerprint(item) == expected
    assert journal.fingerprint(item) == expected  # and again, from the cached hasher
    store.close()
