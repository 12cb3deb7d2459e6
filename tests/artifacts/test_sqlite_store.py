"""SqliteArtifactStore: round trips, history, validation on open, concurrency, lookup cost."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from async_batch_llm._internal.artifacts.records import (
    SCHEMA_VERSION,
    ArtifactRecord,
    ArtifactStoreError,
    decode_output,
    encode_output,
)
from async_batch_llm._internal.artifacts.sqlite import SqliteArtifactStore, _encode_usage

running_as_root = hasattr(os, "geteuid") and os.geteuid() == 0


class Answer(BaseModel):
    label: str
    score: float


def make_record(
    item_id: str,
    output: object = "out",
    *,
    success: bool = True,
    error: str | None = None,
    output_type: type | None = Answer,
    created_at: float = 1.0,
) -> ArtifactRecord:
    kind, payload = encode_output(output, output_type)
    return ArtifactRecord(
        item_id=item_id,
        fingerprint=f"fp-{item_id}",
        success=success,
        output_kind=kind,
        output=payload,
        error=error,
        token_usage={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        error_category="transient" if error else None,
        cost=0.125 if success else None,
        created_at=created_at,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "artifacts.db"


@pytest.mark.parametrize(
    "output",
    ["text", None, {"a": [1, 2.5, None]}, [True], Answer(label="x", score=0.5)],
    ids=["str", "none", "json-dict", "json-list", "model"],
)
def test_write_then_lookup_round_trips_the_record(db: Path, output: object) -> None:
    record = make_record("item-1", output, error="boom" if output is None else None)
    with SqliteArtifactStore(db, output_type=Answer) as store:
        store.write([record])
        found = store.lookup("item-1")
    assert found == record
    assert found is not None
    assert decode_output(found.output_kind, found.output, Answer) == output


def test_lookup_of_an_unknown_item_is_none(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record("a")])
        assert store.lookup("b") is None


def test_records_survive_reopening(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record("a", "first")])
    with SqliteArtifactStore(db) as store:
        assert store.lookup("a") == make_record("a", "first")


def test_latest_record_wins_and_history_is_kept(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record("a", None, success=False, error="429")])
        first = store.lookup("a")
        assert first is not None
        assert not first.success
        store.write([make_record("a", "second")])
        # The same read connection must see the new commit (no stale snapshot).
        latest = store.lookup("a")
        assert latest is not None
        assert latest.output == "second"
        assert latest.success
        assert store.count() == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 2


def test_within_one_group_the_later_record_wins(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record("a", "one"), make_record("a", "two")])
        found = store.lookup("a")
        assert found is not None
        assert found.output == "two"


def test_iter_latest_and_count_see_each_item_once(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record(str(i), f"v1-{i}") for i in range(1200)])
        store.write([make_record(str(i), f"v2-{i}") for i in range(0, 1200, 2)])
        latest = {r.item_id: r.output for r in store.iter_latest()}
        assert store.count() == 1200
    assert len(latest) == 1200
    assert latest["0"] == "v2-0"
    assert latest["1"] == "v1-1"
    assert latest["1198"] == "v2-1198"


def test_export_jsonl_writes_latest_records_with_decoded_outputs(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    with SqliteArtifactStore(db, output_type=Answer) as store:
        store.write(
            [
                make_record("s", "old"),
                make_record("s", "text"),
                make_record("j", {"k": [1, 2]}),
                make_record("m", Answer(label="x", score=0.5)),
                make_record("n", None, success=False, error="boom"),
            ]
        )
        assert store.export_jsonl(out) == 4
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = {row["item_id"]: row for row in map(json.loads, lines)}
    assert set(rows) == {"s", "j", "m", "n"}
    assert set(rows["s"]) == {
        "item_id",
        "fingerprint",
        "success",
        "output_kind",
        "output",
        "error",
        "error_category",
        "cost",
        "token_usage",
        "created_at",
    }
    assert rows["s"]["output"] == "text"
    assert rows["j"]["output"] == {"k": [1, 2]}
    assert rows["m"]["output"] == {"label": "x", "score": 0.5}
    assert rows["n"]["output"] is None
    assert rows["n"]["error"] == "boom"
    assert rows["n"]["error_category"] == "transient"
    assert rows["s"]["cost"] == 0.125
    assert rows["s"]["token_usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


def test_export_to_a_missing_directory_is_a_store_error(db: Path, tmp_path: Path) -> None:
    with (
        SqliteArtifactStore(db) as store,
        pytest.raises(ArtifactStoreError, match="cannot export"),
    ):
        store.export_jsonl(tmp_path / "nope" / "x.jsonl")


def test_missing_directory_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ArtifactStoreError, match=r"directory .*nope does not exist"):
        SqliteArtifactStore(tmp_path / "nope" / "a.db")


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not sqlite at all\n" * 100)
    with pytest.raises(ArtifactStoreError, match="file is not a database") as info:
        SqliteArtifactStore(db)
    assert str(db) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_a_foreign_sqlite_database_is_refused_and_left_alone(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(ArtifactStoreError, match="not an async-batch-llm artifact store"):
        SqliteArtifactStore(db)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"customers"}


def test_an_empty_file_becomes_a_store(db: Path) -> None:
    db.touch()
    with SqliteArtifactStore(db) as store:
        store.write([make_record("a")])
        assert store.count() == 1


def test_a_store_from_a_newer_release_is_refused_naming_both_versions(db: Path) -> None:
    SqliteArtifactStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(ArtifactStoreError, match="newer version") as info:
        SqliteArtifactStore(db)
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert "upgrade async-batch-llm" in message


def test_meta_records_schema_version_and_creation_time(db: Path) -> None:
    before = time.time()
    SqliteArtifactStore(db).close()
    with sqlite3.connect(db) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert before <= float(meta["created_at"]) <= time.time()
    assert mode == "wal"


@pytest.mark.skipif(running_as_root, reason="root ignores file permissions")
def test_a_read_only_file_is_refused_at_construction(db: Path) -> None:
    SqliteArtifactStore(db).close()
    db.chmod(stat.S_IRUSR)
    try:
        with pytest.raises(ArtifactStoreError, match="not readable and writable"):
            SqliteArtifactStore(db)
    finally:
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_file_this_process_may_not_write_is_refused_at_construction(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores permission bits, so where the test above cannot run the permission answer is
    # simulated: the store must act on what os.access reports for the file.
    SqliteArtifactStore(db).close()
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) == db and mode & os.W_OK:
            return False
        return real_access(path, mode)  # type: ignore[arg-type]  # a path, as received

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(ArtifactStoreError, match=r"not readable and writable.*permissions"):
        SqliteArtifactStore(db)


def test_a_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactStoreError, match="is a directory"):
        SqliteArtifactStore(tmp_path)


@pytest.mark.parametrize("interval", [0, -1.0, math.nan, math.inf, True])
def test_commit_interval_must_be_positive_and_finite(db: Path, interval: float) -> None:
    with pytest.raises(ValueError, match="commit_interval must be > 0, got"):
        SqliteArtifactStore(db, commit_interval=interval)
    assert not db.exists()


def test_output_type_must_be_a_class(db: Path) -> None:
    with pytest.raises(TypeError, match="output_type must be a class"):
        SqliteArtifactStore(db, output_type=Answer(label="x", score=1.0))  # type: ignore[arg-type]  # the misuse under test


def test_a_closed_store_refuses_reads_and_writes(db: Path) -> None:
    store = SqliteArtifactStore(db)
    store.lookup("warm-up")
    store.close()
    store.close()  # idempotent
    assert store.closed
    with pytest.raises(ArtifactStoreError, match="is closed"):
        store.lookup("a")
    with pytest.raises(ArtifactStoreError, match="is closed"):
        store.write([make_record("a")])
    with pytest.raises(ArtifactStoreError, match="is closed"):
        store.iter_latest()


def test_a_failed_write_is_atomic_and_chains_the_sqlite_error(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER fail_b BEFORE INSERT ON records WHEN NEW.item_id = 'b' "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
        with pytest.raises(ArtifactStoreError, match="disk on fire") as info:
            store.write([make_record("a"), make_record("b"), make_record("c")])
        assert isinstance(info.value.__cause__, sqlite3.Error)
        assert store.lookup("a") is None
        assert store.count() == 0
        # The connection is usable again after the rollback.
        store.write([make_record("a")])
        assert store.lookup("a") is not None


def test_a_group_larger_than_one_statement_is_still_all_or_nothing(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER fail_last BEFORE INSERT ON records WHEN NEW.item_id = 'last' "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
        # More rows than one INSERT statement takes (10,000 JSON rows, 2,048 value rows).
        group = [make_record(str(i)) for i in range(25_000)] + [make_record("last")]
        with pytest.raises(ArtifactStoreError, match="disk on fire"):
            store.write(group)
        assert store.count() == 0
        store.write(group[:-1])
        assert store.count() == 25_000


def test_item_ids_with_lone_surrogates_are_stored_and_found(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record("odd-\udc80", error="err \udcff", success=False)])
        found = store.lookup("odd-\udc80")
    assert found is not None
    assert found.error is not None
    assert "err" in found.error


def test_repr_shows_path_state_and_written_count(db: Path) -> None:
    store = SqliteArtifactStore(db, version="v2")
    store.write([make_record("a"), make_record("b")])
    text = repr(store)
    assert str(db) in text
    assert "open" in text
    assert "written=2" in text
    assert "'v2'" in text
    store.close()
    assert "closed" in repr(store)


def test_two_store_objects_writing_concurrently_keep_every_record(db: Path) -> None:
    stores = [SqliteArtifactStore(db), SqliteArtifactStore(db)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(n: int) -> None:
        try:
            start.wait()
            store = stores[n]
            for group in range(100):
                store.write([make_record(f"{n}-{group}-{k}") for k in range(10)])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    try:
        assert stores[0].count() == 2000
        assert stores[1].lookup("0-99-9") is not None
        assert stores[0].lookup("1-99-9") is not None
    finally:
        for store in stores:
            store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 2000


def test_lookups_run_while_another_thread_writes(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        store.write([make_record("seed")])
        done = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for group in range(50):
                    store.write([make_record(f"w-{group}-{k}") for k in range(20)])
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        lookups = 0
        while not done.is_set() or lookups == 0:
            assert store.lookup("seed") is not None
            lookups += 1
        thread.join()
        assert errors == []
        assert store.count() == 1001
        assert store.lookup("w-49-19") is not None


def test_lookup_stays_sub_millisecond_at_100k_records(db: Path) -> None:
    # A guard against a missing index or a table scan, not a benchmark: the measured figure is
    # about 10-20 µs; a scan of 10^5 rows costs tens of milliseconds.
    n = 100_000
    with SqliteArtifactStore(db) as store:
        base = make_record("x")
        for start in range(0, n, 20_000):
            store.write(
                [
                    ArtifactRecord(f"item-{i}", base.fingerprint, True, "str", f"out-{i}", None, {})
                    for i in range(start, start + 20_000)
                ]
            )
        probes = [f"item-{(i * 7919) % n}" for i in range(2000)]
        started = time.perf_counter()
        for item_id in probes:
            found = store.lookup(item_id)
            assert found is not None
            assert found.item_id == item_id
        average = (time.perf_counter() - started) / len(probes)
    assert average < 1e-3, f"lookup took {average * 1e6:.0f} µs on average"


_USAGE_KEYS = st.sampled_from(
    ["input_tokens", "output_tokens", "total_tokens", "cached_input_tokens", "reasoning_tokens"]
)
_USAGE_VALUES = st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False))


@given(st.dictionaries(_USAGE_KEYS, _USAGE_VALUES))
def test_usage_is_encoded_exactly_as_json_would(usage: dict[str, object]) -> None:
    # The direct encoding of plain usage must be byte-for-byte what json writes, and anything
    # else (other keys, bools, floats) must take json's own path.
    assert _encode_usage(usage) == json.dumps(usage, separators=(",", ":"))  # type: ignore[arg-type]


# Rows travel to SQLite as JSON text when every value has an exact JSON form, else as bound
# values. What is stored must not depend on which way a record went.
_ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
_RECORDS = st.builds(
    ArtifactRecord,
    item_id=st.text(),
    fingerprint=st.text(min_size=1),
    success=st.booleans(),
    output_kind=st.just("str"),
    output=st.text().filter(lambda text: encode_output(text, None)[0] == "str"),
    error=st.none() | st.text(),
    token_usage=st.dictionaries(
        _USAGE_KEYS, st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    )
    | st.dictionaries(_USAGE_KEYS, _USAGE_VALUES),
    error_category=st.none() | st.text(),
    cost=st.none() | _ANY_FLOAT | st.floats(min_value=0, max_value=1e6),
    created_at=st.floats(min_value=0, max_value=4e9) | _ANY_FLOAT,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_RECORDS, min_size=1, max_size=4))
def test_json_rows_store_exactly_what_bound_values_store(records: list[ArtifactRecord]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        outcomes: list[tuple[str, object]] = []
        for json_rows in (True, False):
            with SqliteArtifactStore(Path(tmp) / f"{json_rows}.db") as store:
                store._json_rows = json_rows
                try:
                    store.write(records)
                except ArtifactStoreError as exc:
                    outcomes.append(("failed", type(exc.__cause__)))
                    continue
                outcomes.append(("stored", [store.lookup(r.item_id) for r in records]))
        json_outcome, bound_outcome = outcomes
        assert _same(json_outcome, bound_outcome), (json_outcome, bound_outcome)


def _same(a: object, b: object) -> bool:
    # NaN == NaN for this comparison (a NaN cost is stored as SQLite NULL either way).
    return repr(a) == repr(b)


def test_json_rows_are_what_a_plain_result_travels_as(db: Path) -> None:
    with SqliteArtifactStore(db) as store:
        assert store._json_rows  # this SQLite has its JSON functions
        row = store._encode_for_write(make_record("a"))
        assert isinstance(row, str)
        assert json.loads(row)[0] == "a"
        # A value without an exact JSON form (a NaN cost) travels as bound values.
        odd = make_record("b")
        odd.cost = math.nan
        assert isinstance(store._encode_for_write(odd), tuple)


def test_a_group_mixing_json_and_value_rows_keeps_its_order(db: Path) -> None:
    def rec(output: str, cost: float | None) -> ArtifactRecord:
        record = make_record("a", output)
        record.cost = cost
        return record

    with SqliteArtifactStore(db) as store:
        store.write([rec("one", 0.5), rec("two", math.inf), rec("three", 0.25)])
        found = store.lookup("a")
        assert found is not None
        assert found.output == "three"
        store.write([rec("four", 0.5), rec("five", math.inf)])
        found = store.lookup("a")
        assert found is not None
        assert found.output == "five"
    with sqlite3.connect(db) as conn:
        outputs = [row[0] for row in conn.execute("SELECT output FROM records ORDER BY seq")]
    assert outputs == ["one", "two", "three", "four", "five"]
