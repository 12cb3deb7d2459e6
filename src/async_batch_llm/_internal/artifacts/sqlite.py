"""The embedded default store: one SQLite file in WAL mode, append-only, group commits.

Durability: commits use ``synchronous=NORMAL`` in WAL mode, so a committed record survives the
process being killed (``kill -9``, a crash, an out-of-memory kill). Surviving a power loss or an
OS crash as well would need ``synchronous=FULL`` (an fsync per commit); that is not what this
store promises.

Threads: :meth:`SqliteArtifactStore.lookup` and :meth:`~SqliteArtifactStore.count` use one read
connection per calling thread; :meth:`~SqliteArtifactStore.write` uses one write connection
behind a lock; :meth:`~SqliteArtifactStore.iter_latest` opens a connection of its own for the
duration of the iteration, so a long export never pins the snapshot the lookups see. WAL lets
readers and the writer run at the same time; SQLite's file locks let several store objects and
several processes share one file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain, groupby
from typing import Any, cast

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import (
    OUTPUT_KINDS,
    SCHEMA_VERSION,
    ArtifactRecord,
    ArtifactStoreError,
    OutputKind,
    _is_utf8_safe,
    fields_of,
)

__all__ = ["SqliteArtifactStore"]

_BUSY_TIMEOUT = 10.0
_FETCH_BATCH = 512

_COLUMNS = (
    "item_id, fingerprint, success, output_kind, output, error, error_category, cost, "
    "token_usage, created_at"
)
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE records ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "item_id TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, "
    "success INTEGER NOT NULL, "
    "output_kind TEXT NOT NULL, "
    "output TEXT, "
    "error TEXT, "
    "error_category TEXT, "
    "cost REAL, "
    "token_usage TEXT NOT NULL, "
    "created_at REAL NOT NULL)",
    "CREATE INDEX records_item_seq ON records (item_id, seq)",
)
_ROW_PARAMS = "(?,?,?,?,?,?,?,?,?,?)"
_ROW_WIDTH = 10
# Rows per INSERT statement (fewer if SQLite allows fewer variables: 999 before 3.32).
_MAX_ROWS_PER_INSERT = 2048
_LOOKUP = f"SELECT {_COLUMNS} FROM records WHERE item_id = ? ORDER BY seq DESC LIMIT 1"
# SQLite's bare-column rule: with MAX(seq), the other columns come from the row holding it.
_LATEST = f"SELECT {_COLUMNS}, MAX(seq) FROM records GROUP BY item_id"
_COUNT = "SELECT COUNT(DISTINCT item_id) FROM records"

# json.dumps with keyword arguments builds a new encoder per call; reuse one.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode
# A JSON string literal with every non-ASCII character escaped (the C encoder's own helper).
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii

# Rows per JSON-array INSERT statement (see SqliteArtifactStore._encode_fields).
_MAX_ROWS_PER_JSON_INSERT = 10_000
_JSON_INSERT = (
    f"INSERT INTO records ({_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(10))
    + " FROM json_each(?)"
)
"""Insert the rows of one JSON array of row arrays, in array order (parsed by SQLite)."""
_JSON_KINDS = {kind: f'"{kind}"' for kind in OUTPUT_KINDS}
"""Each output kind as a JSON string (``None`` for anything else)."""
_PLAIN_USAGE_KEYS = frozenset(
    {"input_tokens", "output_tokens", "total_tokens", "cached_input_tokens"}
)


_BATCH_JOB_PREFIX = "batch_job:"
"""Key prefix of the batch-mode job entries in the ``meta`` table."""


_USAGE_TEMPLATES: dict[tuple[str, ...], str] = {}
"""``%``-templates of plain usage JSON, by key tuple (only keys of _PLAIN_USAGE_KEYS)."""


def _encode_usage(usage: Mapping[str, int]) -> str:
    """The JSON text of a token-usage mapping, as ``json`` would write it."""
    text = _plain_usage(usage)
    return _encode_json(usage) if text is None else text


def _plain_usage(usage: Mapping[str, int]) -> str | None:
    """:func:`_encode_usage` of plain usage (the standard keys, ``int`` counts), else ``None``.

    Usage is the one JSON value in every row, so the common case is filled into a template
    made once per key order, at a fraction of the encoder's cost.
    """
    if type(usage) is not dict:
        return None
    keys = tuple(usage)
    template = _USAGE_TEMPLATES.get(keys)
    if template is None:
        if not usage.keys() <= _PLAIN_USAGE_KEYS:
            return None
        template = _USAGE_TEMPLATES[keys] = "{" + ",".join(f'"{key}":%d' for key in keys) + "}"
    values = tuple(usage.values())
    for value in values:
        if type(value) is not int:
            return None
    return template % values


logger = logging.getLogger("async_batch_llm.artifacts")

Row = tuple[Any, ...]


_CHECKPOINT_WHEN_IDLE = 2_000
"""Records committed since the last checkpoint after which an idle writer checkpoints."""
_CHECKPOINT_EVEN_IF_BUSY = 100_000
"""Records after which the writer checkpoints even while records keep coming."""


class _Malformed:
    """A record that could not be encoded as a row; writing it raises ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class SqliteArtifactStore(ArtifactStore):
    """Artifact store in one SQLite file; the embedded default.

    The file is opened, validated (and created if new) here, so a wrong path fails before any
    call is paid for. One file may hold the records of many runs; every record is kept and
    reads answer with the latest per item.

    Args:
        path: the database file; its directory must exist.
        output_type: pydantic model class of the outputs, needed to store and replay models.
        commit_interval: the commit lag (seconds from hand-over to commit) the writer should
            stay within; it commits back to back, and logs a warning past twice this.
        version: user version string mixed into every fingerprint.

    Raises:
        ArtifactStoreError: the directory does not exist; the file is not a database, or is a
            database that is not an artifact store; it was written by a newer release; it or its
            directory is not writable; or SQLite failed.
        ValueError: ``commit_interval`` is not a finite number > 0.
        TypeError: ``output_type`` is not a class.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        output_type: type | None = None,
        commit_interval: float = 0.05,
        version: str | None = None,
    ) -> None:
        super().__init__(
            path, output_type=output_type, version=version, commit_interval=commit_interval
        )
        self._since_checkpoint = 0  # records committed since the last WAL checkpoint
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._check_location()
        self._writer = self._open_and_validate()
        variables = self._writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._max_rows = max(1, min(variables // _ROW_WIDTH, _MAX_ROWS_PER_INSERT))
        # Rows travel as JSON text when this SQLite has its JSON functions (built in since
        # 3.38, an option before); else as bound values.
        self._json_rows = _has_json(self._writer)
        self._stamp: tuple[float, str] = (math.nan, "")  # the last created_at and its text

    # -- opening -------------------------------------------------------------------------------

    def _fail(self, what: str, todo: str) -> ArtifactStoreError:
        return ArtifactStoreError(f"cannot open artifact store {self.path}: {what}; {todo}")

    def _check_location(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise self._fail(
                f"directory {parent} does not exist", "create it first or choose another path"
            )
        if self.path.is_dir():
            raise self._fail("it is a directory", "pass the path of a file")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise self._fail(
                "the file is not readable and writable by this process",
                "fix its permissions or open a copy",
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise self._fail(
                f"directory {parent} is not writable (SQLite creates its -wal and -shm files "
                "beside the store)",
                "fix its permissions or choose another directory",
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints are the writer's to run when it is idle (see _idle_maintenance): an
            # automatic one runs inside a commit and held records back by ~100 ms under load.
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_and_validate(self) -> sqlite3.Connection:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._fail(f"SQLite could not open it ({exc})", "check the path") from exc
        try:
            try:
                tables = _tables(conn)
            except sqlite3.DatabaseError as exc:
                raise self._fail(
                    f"file is not a database ({exc})",
                    "pass the path of an artifact store or of a new file",
                ) from exc
            if tables:
                # Validate before the write probe, so a newer or foreign file is reported as
                # such even when it is also read-only.
                self._validate(conn, tables)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._fail(
                    f"it cannot be written ({exc})",
                    "check that the file and its directory are writable and not on a "
                    "read-only file system",
                ) from exc
            try:
                tables = _tables(conn)  # another process may have created it meanwhile
                if tables:
                    self._validate(conn, tables)
                else:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("created_at", repr(time.time())),
                        ],
                    )
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self._fail(
                    f"SQLite could not switch it to WAL mode (journal mode is {mode!r})",
                    "put the store on a local file system",
                )
        except ArtifactStoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._fail(f"SQLite failed ({exc})", "check the file") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _validate(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        not_ours = self._fail(
            "the file is an SQLite database but not an async-batch-llm artifact store",
            "pass the path of an artifact store or of a new file",
        )
        if "meta" not in tables or "records" not in tables:
            raise not_ours
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            found = int(row[0]) if row is not None else None
        except (TypeError, ValueError):
            found = None
        if found is None:
            raise not_ours
        if found > SCHEMA_VERSION:
            raise self._fail(
                f"it was written by a newer version of async-batch-llm (schema version {found}; "
                f"this release reads up to {SCHEMA_VERSION})",
                "upgrade async-batch-llm",
            )

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._check_open()
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                raise self._io_error("open a read connection", exc) from exc
            with self._readers_lock:
                if self._closed:
                    conn.close()
                    self._check_open()
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def _io_error(self, what: str, exc: BaseException) -> ArtifactStoreError:
        return ArtifactStoreError(
            f"artifact store {self.path}: could not {what} ({type(exc).__name__}: {exc}); "
            "check the disk and the file, then resume the run"
        )

    # -- the store interface -------------------------------------------------------------------

    def lookup(self, item_id: str) -> ArtifactRecord | None:
        """Return the latest record for ``item_id``, or ``None``.

        Raises:
            ArtifactStoreError: the store is closed or SQLite failed.
        """
        if self._closed:
            self._check_open()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._reader()
        try:
            row = conn.execute(_LOOKUP, (_text(item_id),)).fetchone()
        except sqlite3.Error as exc:
            raise self._io_error("read a record", exc) from exc
        if row is None:
            return None
        return self._record(row)

    def write(self, records: Sequence[ArtifactRecord]) -> None:
        """Append ``records`` in one transaction.

        A row whose values all have an exact JSON form travels as JSON text, and a group of
        them as one JSON array that SQLite takes apart (``json_each``, up to 10,000 rows per
        statement); other rows go in multi-row ``VALUES`` statements (up to 2048 rows each).
        A group that fits one statement is committed by it, a larger group inside
        ``BEGIN IMMEDIATE`` … ``COMMIT``. One bound text per statement, rather than ten bound
        values per row, keeps the writer's share of the interpreter lock small, so commits
        stay quick and cost the busy event loop little. Either way the same values are stored.

        Raises:
            ArtifactStoreError: the store is closed, a record is malformed, or SQLite failed
                (chained); nothing of the group was written then.
        """
        self._check_open()
        self._write_encoded([self._encode_for_write(record) for record in records])

    def _encode_for_write(self, record: ArtifactRecord) -> object:
        try:
            return self._encode_fields(*fields_of(record))
        except AttributeError as exc:
            return _Malformed(exc)

    def _encode_fields(
        self,
        item_id: str,
        fingerprint: str,
        success: bool,
        output_kind: OutputKind,
        output: str | None,
        error: str | None,
        token_usage: Mapping[str, int],
        error_category: str | None,
        cost: float | None,
        created_at: float,
    ) -> object:
        # Built straight from the fields: this runs once per result on the loop. A row is the
        # JSON text of its values when every value has an exact JSON form: SQLite parses a
        # group of them out of one bound text, so the writer holds the GIL for one bind per
        # commit instead of ten per record (binding is most of what a commit does in Python).
        try:
            # Storable text for either form (lone surrogates escaped; ASCII, the rule, as is).
            item_id = item_id if item_id.isascii() else _text(item_id)
            fingerprint = fingerprint if fingerprint.isascii() else _text(fingerprint)
            if error is not None:
                error = _text(error)
            if error_category is not None:
                error_category = _text(error_category)
            # (x - x == 0.0 is false for NaN and the infinities, which JSON cannot carry.)
            kind = _JSON_KINDS.get(output_kind) if self._json_rows else None
            if (
                kind is not None
                and type(created_at) is float
                and created_at - created_at == 0.0
                and (cost is None or (type(cost) is float and cost - cost == 0.0))
                and (output is None or (type(output) is str and _is_utf8_safe(output)))
            ):
                usage = _plain_usage(token_usage)
                if usage is not None:
                    stamp = self._stamp
                    when = stamp[1] if created_at == stamp[0] else self._restamp(created_at)
                    ident = _json_str(item_id)
                    fp = _json_str(fingerprint)
                    out = "null" if output is None else _json_str(output)
                    err = "null" if error is None else _json_str(error)
                    cat = "null" if error_category is None else _json_str(error_category)
                    price = "null" if cost is None else repr(cost)
                    ok = "1" if success else "0"
                    row = f"[{ident},{fp},{ok},{kind},{out},{err},{cat},{price},{usage},{when}]"
                    if "\\u0000" not in row:  # SQLite's JSON text ends at a NUL character
                        return row
            return (
                item_id,
                fingerprint,
                1 if success else 0,
                output_kind,
                output,
                error,
                error_category,
                cost,
                _encode_usage(token_usage),
                created_at,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            return _Malformed(exc)

    def _restamp(self, created_at: float) -> str:
        # The journal gives the records of one millisecond the same created_at, so its text
        # (float repr is the dearest part of a row) is made once per millisecond, not per row.
        text = repr(created_at)
        self._stamp = (created_at, text)  # one assignment: a reader sees a matching pair
        return text

    def _prepare_write(self, encoded: list[object]) -> object:
        # On the loop: the statements, with the JSON rows already joined into one text each.
        for row in encoded:
            if type(row) is _Malformed:
                raise self._io_error("encode a record", row.error) from row.error
        rows = cast("list[str | Row]", encoded)
        return len(rows), list(_insert_statements(rows, self._max_rows)) if rows else []

    def _write_prepared(self, prepared: object) -> None:
        count, statements = cast("tuple[int, list[tuple[str, list[Any]]]]", prepared)
        self._check_open()
        if not count:
            return
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                if len(statements) == 1:
                    # One statement is one transaction of its own: no BEGIN/COMMIT round trips.
                    conn.execute(*statements[0])
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for sql, params in statements:
                            conn.execute(sql, params)
                        conn.execute("COMMIT")
                    finally:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                raise self._io_error(f"commit {count} record(s)", exc) from exc
            self._records_written += count
            self._since_checkpoint += count
            if self._since_checkpoint >= _CHECKPOINT_EVEN_IF_BUSY:
                self._checkpoint()  # a writer that is never idle must not grow the WAL forever

    def _idle_maintenance(self) -> None:
        with self._write_lock:
            if not self._closed and self._since_checkpoint >= _CHECKPOINT_WHEN_IDLE:
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for readers). Write lock held."""
        try:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # nothing is lost: the WAL still holds every commit
            logger.warning("artifact store %s: WAL checkpoint failed (%s)", self.path, exc)
        self._since_checkpoint = 0

    supports_batch_jobs = True

    def save_batch_job(self, key: str, value: str) -> None:
        with self._write_lock:
            self._check_open()
            try:
                self._writer.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (_BATCH_JOB_PREFIX + key, value),
                )
            except sqlite3.Error as exc:
                raise self._io_error("save a batch job", exc) from exc

    def load_batch_jobs(self) -> dict[str, str]:
        self._check_open()
        try:
            rows = (
                self._reader()
                .execute(
                    "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
                    (_BATCH_JOB_PREFIX, _BATCH_JOB_PREFIX[:-1] + chr(ord(":") + 1)),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise self._io_error("read the batch jobs", exc) from exc
        return {str(k)[len(_BATCH_JOB_PREFIX) :]: str(v) for k, v in rows}

    def iter_latest(self) -> Iterator[ArtifactRecord]:
        """Yield the latest record of every item, ordered by item id, in batches from a cursor.

        The iteration reads one consistent snapshot through a connection of its own, closed
        when the iteration ends or the iterator is discarded.

        Raises:
            ArtifactStoreError: the store is closed or SQLite failed.
        """
        self._check_open()
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._io_error("open a read connection", exc) from exc
        return self._stream(conn)

    def _stream(self, conn: sqlite3.Connection) -> Iterator[ArtifactRecord]:
        try:
            cursor = conn.execute(_LATEST)
            while True:
                rows = cursor.fetchmany(_FETCH_BATCH)
                if not rows:
                    return
                for row in rows:
                    yield self._record(row)
        except sqlite3.Error as exc:
            raise self._io_error("read the latest records", exc) from exc
        finally:
            conn.close()

    def count(self) -> int:
        """Return the number of distinct item ids (a scan of the item index).

        Raises:
            ArtifactStoreError: the store is closed or SQLite failed.
        """
        self._check_open()
        try:
            row = self._reader().execute(_COUNT).fetchone()
        except sqlite3.Error as exc:
            raise self._io_error("count the items", exc) from exc
        return int(row[0])

    def close(self) -> None:
        """Close every connection this store opened. Idempotent."""
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._write_lock:
            self._writer.close()

    def _record(self, row: Row) -> ArtifactRecord:
        kind: OutputKind = row[3]
        try:
            if kind not in OUTPUT_KINDS:
                raise ValueError(f"unknown output_kind {kind!r}")
            token_usage = json.loads(row[8])
        except ValueError as exc:
            raise ArtifactStoreError(
                f"artifact store {self.path}: corrupt record for item {row[0]!r} ({exc}); "
                "restore the file from a backup or start a new store"
            ) from exc
        # Positional, in field order: this runs once per lookup on the event-loop thread.
        return ArtifactRecord(
            row[0], row[1], bool(row[2]), kind, row[4], row[5], token_usage, row[6], row[7], row[9]
        )


def _insert_statements(rows: list[str | Row], max_rows: int) -> Iterator[tuple[str, list[Any]]]:
    """The ``INSERT`` statements that append ``rows`` in order.

    JSON rows go in one array per statement (up to 10,000); value rows in multi-row
    ``VALUES`` statements of at most ``max_rows`` rows. A group is normally all JSON rows:
    one statement.
    """
    if all(type(row) is str for row in rows):
        json_rows = cast("list[str]", rows)
        for start in range(0, len(json_rows), _MAX_ROWS_PER_JSON_INSERT):
            chunk = json_rows[start : start + _MAX_ROWS_PER_JSON_INSERT]
            yield _JSON_INSERT, ["[" + ",".join(chunk) + "]"]
        return
    # Mixed: consecutive runs of each kind, in order (the latest record of an item wins).
    for is_json, run in groupby(rows, key=lambda row: type(row) is str):
        if is_json:
            yield from _insert_statements(list(run), max_rows)
            continue
        value_rows = cast("list[Row]", list(run))
        for start in range(0, len(value_rows), max_rows):
            values = value_rows[start : start + max_rows]
            sql = f"INSERT INTO records ({_COLUMNS}) VALUES " + ",".join(
                [_ROW_PARAMS] * len(values)
            )
            yield sql, list(chain.from_iterable(values))


def _has_json(conn: sqlite3.Connection) -> bool:
    try:
        row = conn.execute("SELECT json_extract(?, '$[1]')", ('[0,"\\u00e9"]',)).fetchone()
    except sqlite3.Error:
        return False
    return bool(row == ("\u00e9",))


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _text(value: str) -> str:
    """Make ``value`` storable as SQLite text (lone surrogates become backslash escapes)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
