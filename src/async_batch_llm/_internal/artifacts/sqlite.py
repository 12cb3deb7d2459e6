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
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, cast

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import (
    OUTPUT_KINDS,
    SCHEMA_VERSION,
    ArtifactRecord,
    ArtifactStoreError,
    OutputKind,
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
_PLAIN_USAGE_KEYS = frozenset(
    {"input_tokens", "output_tokens", "total_tokens", "cached_input_tokens"}
)


_BATCH_JOB_PREFIX = "batch_job:"
"""Key prefix of the batch-mode job entries in the ``meta`` table."""


_USAGE_TEMPLATES: dict[tuple[str, ...], str] = {}
"""``%``-templates of plain usage JSON, by key tuple (only keys of _PLAIN_USAGE_KEYS)."""


def _encode_usage(usage: Mapping[str, int]) -> str:
    """The JSON text of a token-usage mapping, as ``json`` would write it.

    Usage is the one JSON value in every row, so the common case (the standard keys, plain
    ``int`` counts) is filled into a template made once per key order, at a fraction of the
    encoder's cost.
    """
    if type(usage) is dict:
        keys = tuple(usage)
        template = _USAGE_TEMPLATES.get(keys)
        if template is None and usage.keys() <= _PLAIN_USAGE_KEYS:
            template = _USAGE_TEMPLATES[keys] = "{" + ",".join(f'"{key}":%d' for key in keys) + "}"
        if template is not None:
            values = tuple(usage.values())
            for value in values:
                if type(value) is not int:
                    return _encode_json(usage)
            return template % values
    return _encode_json(usage)


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

        Rows go in multi-row ``INSERT`` statements (up to 2048 rows each): a group that fits
        one statement is committed by it, a larger group inside ``BEGIN IMMEDIATE`` …
        ``COMMIT``. Few statements mean few GIL hand-overs, which keeps commits quick while
        the event loop is busy.

        Raises:
            ArtifactStoreError: the store is closed, a record is malformed, or SQLite failed
                (chained); nothing of the group was written then.
        """
        self._check_open()
        self._write_encoded([self._encode_for_write(record) for record in records])

    def _encode_for_write(self, record: ArtifactRecord) -> object:
        try:
            item_id, fingerprint = record.item_id, record.fingerprint
            return (
                item_id if item_id.isascii() else _text(item_id),
                fingerprint if fingerprint.isascii() else _text(fingerprint),
                1 if record.success else 0,
                record.output_kind,
                record.output,
                None if record.error is None else _text(record.error),
                None if record.error_category is None else _text(record.error_category),
                record.cost,
                _encode_usage(record.token_usage),
                record.created_at,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            return _Malformed(exc)

    def _write_encoded(self, encoded: list[object]) -> None:
        self._check_open()
        if not encoded:
            return
        for row in encoded:
            if type(row) is _Malformed:
                raise self._io_error("encode a record", row.error) from row.error
        rows = cast("list[Row]", encoded)
        with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                statements = list(_insert_statements(rows, self._max_rows))
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
                raise self._io_error(f"commit {len(rows)} record(s)", exc) from exc
            self._records_written += len(rows)
            self._since_checkpoint += len(rows)
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


def _insert_statements(rows: list[Row], max_rows: int) -> Iterator[tuple[str, list[Any]]]:
    """Split ``rows`` into multi-row ``INSERT`` statements of at most ``max_rows`` rows."""
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        sql = f"INSERT INTO records ({_COLUMNS}) VALUES " + ",".join([_ROW_PARAMS] * len(chunk))
        yield sql, list(chain.from_iterable(chunk))


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
