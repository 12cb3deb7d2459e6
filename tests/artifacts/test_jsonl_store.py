"""JsonlArtifactStore: round trips, torn and corrupt lines, the writer lock, the header."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import async_batch_llm.artifacts as public
from async_batch_llm._internal.artifacts.records import (
    SCHEMA_VERSION,
    ArtifactRecord,
    ArtifactStoreError,
    ArtifactStoreWarning,
    decode_output,
    encode_output,
)
from async_batch_llm.artifacts import JsonlArtifactStore, SqliteArtifactStore

running_as_root = hasattr(os, "geteuid") and os.geteuid() == 0
HEADER = f'{{"async_batch_llm_artifacts":{SCHEMA_VERSION}}}\n'


class Answer(BaseModel):
    label: str
    score: float


def make_record(item_id: str, output: object = "out", *, success: bool = True) -> ArtifactRecord:
    kind, payload = encode_output(output, Answer)
    return ArtifactRecord(
        item_id=item_id,
        fingerprint=f"fp-{item_id}",
        success=success,
        output_kind=kind,
        output=payload,
        error=None if success else "boom",
        token_usage={"input_tokens": 3, "output_tokens": 4},
        error_category=None if success else "transient",
        cost=0.5,
        created_at=12.5,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "artifacts.jsonl"


def write_three(path: Path) -> int:
    with JsonlArtifactStore(path) as store:
        store.write([make_record("a"), make_record("b")])
        store.write([make_record("c")])
    return path.stat().st_size


def test_public_module_exports_the_stores() -> None:
    assert set(public.__all__) == {
        "ArtifactRecord",
        "ArtifactStore",
        "ArtifactStoreError",
        "JsonlArtifactStore",
        "ResumePolicy",
        "SqliteArtifactStore",
        "UnstorableOutputError",
    }
    for name in public.__all__:
        assert getattr(public, name).__module__.startswith("async_batch_llm.")


def test_a_new_file_starts_with_the_header(path: Path) -> None:
    JsonlArtifactStore(path).close()
    assert path.read_text() == HEADER


@pytest.mark.parametrize(
    "output",
    ["text", None, {"k": [1, 2.5]}, Answer(label="x", score=0.5)],
    ids=["str", "none", "json", "model"],
)
def test_records_round_trip_through_the_file(path: Path, output: object) -> None:
    record = make_record("item", output, success=output is not None)
    with JsonlArtifactStore(path, output_type=Answer) as store:
        store.write([record])
        assert store.lookup("item") == record
    with JsonlArtifactStore(path, output_type=Answer) as store:
        found = store.lookup("item")
    assert found is not None
    assert decode_output(found.output_kind, found.output, Answer) == output
    assert (found.item_id, found.success, found.error, found.token_usage, found.cost) == (
        record.item_id,
        record.success,
        record.error,
        record.token_usage,
        record.cost,
    )
    line = json.loads(path.read_text().splitlines()[1])
    if isinstance(output, BaseModel):
        assert line["output"] == output.model_dump()
    else:
        assert line["output"] == output


def test_latest_record_wins_after_reopening(path: Path) -> None:
    with JsonlArtifactStore(path) as store:
        store.write([make_record("a", "one"), make_record("b", "b")])
        store.write([make_record("a", "two")])
    with JsonlArtifactStore(path) as store:
        found = store.lookup("a")
        assert found is not None
        assert found.output == "two"
        assert store.count() == 2
        assert sorted(r.item_id for r in store.iter_latest()) == ["a", "b"]
        assert store.lookup("zzz") is None
    assert len(path.read_text().splitlines()) == 4  # header + three records: history kept


@pytest.mark.parametrize(
    "torn",
    [b'{"item_id":"d","fingerp', b"garbage\n", b'{"item_id": "d"'],
    ids=["no-newline", "invalid-json-with-newline", "cut-object"],
)
def test_a_torn_last_line_warns_truncates_and_appends_continue(path: Path, torn: bytes) -> None:
    good_size = write_three(path)
    with path.open("ab") as f:
        f.write(torn)
    with pytest.warns(ArtifactStoreWarning, match=rf"{path.name}: line 5 was incomplete"):
        store = JsonlArtifactStore(path)
    assert path.stat().st_size == good_size
    assert store.count() == 3
    store.write([make_record("d")])
    store.close()
    with JsonlArtifactStore(path) as store:  # no warning now: the file is whole again
        assert store.count() == 4
        assert store.lookup("d") == make_record("d")


def test_a_torn_warning_points_at_the_caller(path: Path) -> None:
    write_three(path)
    with path.open("ab") as f:
        f.write(b"{")
    with pytest.warns(ArtifactStoreWarning) as caught:
        JsonlArtifactStore(path).close()
    assert caught[0].filename == __file__


def test_a_corrupt_line_before_the_last_is_an_error_naming_it(path: Path) -> None:
    write_three(path)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(2, "not json at all\n")
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(ArtifactStoreError, match=r"line 3 is corrupt.*not the last line"):
        JsonlArtifactStore(path)
    assert path.read_bytes() == before


def test_a_json_line_that_is_not_a_record_is_corrupt(path: Path) -> None:
    write_three(path)
    with path.open("a") as f:
        f.write('{"item_id": "x"}\n')
    with pytest.raises(ArtifactStoreError, match=r"line 5 is corrupt.*missing field"):
        JsonlArtifactStore(path)


def test_a_second_store_on_the_same_file_is_refused(path: Path) -> None:
    first = JsonlArtifactStore(path)
    try:
        with pytest.raises(ArtifactStoreError, match="in use by another writer") as info:
            JsonlArtifactStore(path)
        if Path("/proc/locks").exists():
            assert f"pid {os.getpid()}" in str(info.value)
    finally:
        first.close()
    JsonlArtifactStore(path).close()  # free again once the first is closed


def test_another_process_is_refused_while_the_store_is_open(path: Path) -> None:
    code = (
        "import sys\n"
        "from async_batch_llm.artifacts import JsonlArtifactStore, ArtifactStoreError\n"
        "try:\n"
        "    JsonlArtifactStore(sys.argv[1])\n"
        "except ArtifactStoreError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    with JsonlArtifactStore(path):
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 3, result.stderr
    assert "in use by another writer" in result.stdout


def test_a_header_from_a_newer_release_is_refused(path: Path) -> None:
    path.write_text(f'{{"async_batch_llm_artifacts": {SCHEMA_VERSION + 1}}}\n')
    with pytest.raises(ArtifactStoreError, match="newer version") as info:
        JsonlArtifactStore(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert "upgrade async-batch-llm" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b'{"hello": 1}\n{"x": 2}\n', b"plain text\nmore\n", b"no newline at all", b"[1, 2]\n"],
    ids=["foreign-json", "text", "single-line", "json-list"],
)
def test_a_file_that_is_not_ours_is_refused_and_left_alone(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with pytest.raises(ArtifactStoreError, match="not an async-batch-llm artifact store"):
        JsonlArtifactStore(path)
    assert path.read_bytes() == content


def test_a_torn_header_is_rewritten(path: Path) -> None:
    path.write_bytes(b'{"async_batch_')
    with pytest.warns(ArtifactStoreWarning, match="line 1"):
        JsonlArtifactStore(path).close()
    assert path.read_text() == HEADER


def test_an_export_can_be_opened_as_a_store(path: Path, tmp_path: Path) -> None:
    with SqliteArtifactStore(tmp_path / "a.db", output_type=Answer) as db:
        db.write([make_record("a"), make_record("m", Answer(label="y", score=1.0))])
        assert db.export_jsonl(path) == 2
    with JsonlArtifactStore(path, output_type=Answer) as store:
        assert store.count() == 2
        found = store.lookup("m")
        assert found is not None
        assert decode_output(found.output_kind, found.output, Answer) == Answer(
            label="y", score=1.0
        )


def test_export_jsonl_writes_only_latest_records(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    with JsonlArtifactStore(path) as store:
        store.write([make_record("a", "one"), make_record("a", "two"), make_record("b")])
        assert store.export_jsonl(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["item_id"], r["output"]) for r in rows] == [("a", "two"), ("b", "out")]


def test_missing_directory_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ArtifactStoreError, match=r"directory .*nope does not exist"):
        JsonlArtifactStore(tmp_path / "nope" / "a.jsonl")


@pytest.mark.skipif(running_as_root, reason="root ignores file permissions")
def test_a_read_only_file_is_refused_at_construction(path: Path) -> None:
    JsonlArtifactStore(path).close()
    path.chmod(stat.S_IRUSR)
    try:
        with pytest.raises(ArtifactStoreError, match="cannot be opened for writing"):
            JsonlArtifactStore(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_fsync_flag_syncs_every_write(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with JsonlArtifactStore(path, fsync=True) as store:
        after_header = len(synced)
        store.write([make_record("a")])
        store.write([make_record("b")])
        assert len(synced) == after_header + 2
    with JsonlArtifactStore(path) as store:
        store.write([make_record("c")])
    assert len(synced) == after_header + 2


def test_a_failed_write_cuts_the_file_back_and_keeps_the_index(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JsonlArtifactStore(path)
    store.write([make_record("a")])
    size = path.stat().st_size
    real_write = os.write
    calls = 0

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data)[:10])  # a partial write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then a full disk

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(ArtifactStoreError, match="No space left") as info:
        store.write([make_record("b"), make_record("c")])
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError)
    assert path.stat().st_size == size
    assert store.lookup("b") is None
    store.write([make_record("d")])
    store.close()
    with JsonlArtifactStore(path) as reopened:  # no torn-line warning: the file stayed whole
        assert sorted(r.item_id for r in reopened.iter_latest()) == ["a", "d"]


def test_a_closed_store_refuses_use_and_close_is_idempotent(path: Path) -> None:
    store = JsonlArtifactStore(path)
    store.close()
    store.close()
    for call in (
        lambda: store.lookup("a"),
        lambda: store.write([make_record("a")]),
        store.iter_latest,
        store.count,
    ):
        with pytest.raises(ArtifactStoreError, match="is closed"):
            call()
    assert "closed" in repr(store)
