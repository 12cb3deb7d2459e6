"""An append-only JSON Lines store, for audit trails and small runs.

The file starts with a header line ``{"async_batch_llm_artifacts": <schema version>}``; every
further line is one record in the export format (see :meth:`ArtifactStore.export_jsonl`). On
open the whole file is read into an in-memory index of the latest record per item, so this store
suits runs whose records fit in memory; use :class:`SqliteArtifactStore` beyond that.

One writer at a time: the store holds an exclusive ``flock`` on the file from construction to
:meth:`JsonlArtifactStore.close`. A crash in the middle of a write leaves a torn last line; the
next open drops it with an :class:`ArtifactStoreWarning` and truncates the file back to the last
complete line. Writes reach the operating system before :meth:`~JsonlArtifactStore.write`
returns (they survive the process being killed); with ``fsync=True`` they also reach the disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.records import (
    SCHEMA_VERSION,
    ArtifactRecord,
    ArtifactStoreError,
    ArtifactStoreWarning,
    record_from_json,
    record_to_json_line,
)

__all__ = ["JsonlArtifactStore"]

_HEADER_KEY = "async_batch_llm_artifacts"
_HEADER_PREFIX = b'{"' + _HEADER_KEY.encode() + b'"'


class JsonlArtifactStore(ArtifactStore):
    """Artifact store in one append-only JSON Lines file.

    Args:
        path: the file; created with a header line if missing or empty. Its directory must
            exist.
        output_type: pydantic model class of the outputs, needed to store and replay models.
        version: user version string mixed into every fingerprint.
        commit_interval: the commit lag (seconds from hand-over to commit) the writer should
            stay within; it commits back to back, and logs a warning past twice this.
        fsync: ``os.fsync`` after every write, so records also survive a power loss.

    Raises:
        ArtifactStoreError: the directory does not exist; the file cannot be opened for
            writing; another store object or process holds it; it is not an artifact store of
            ours, comes from a newer release, or has a corrupt line before the last.
        ValueError: ``commit_interval`` is not a finite number > 0.
        TypeError: ``output_type`` is not a class.

    Warns:
        ArtifactStoreWarning: a torn last line was dropped.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        output_type: type | None = None,
        version: str | None = None,
        commit_interval: float = 0.05,
        fsync: bool = False,
    ) -> None:
        super().__init__(
            path, output_type=output_type, version=version, commit_interval=commit_interval
        )
        self._fsync = fsync
        self._lock = threading.Lock()
        self._index: dict[str, ArtifactRecord] = {}
        self._size = 0
        self._fd = self._open()
        try:
            self._lock_file()
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _fail(self, what: str, todo: str) -> ArtifactStoreError:
        return ArtifactStoreError(f"cannot open artifact store {self.path}: {what}; {todo}")

    def _open(self) -> int:
        parent = self.path.parent
        if not parent.is_dir():
            raise self._fail(
                f"directory {parent} does not exist", "create it first or choose another path"
            )
        if self.path.is_dir():
            raise self._fail("it is a directory", "pass the path of a file")
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags, 0o644)
        except PermissionError as exc:
            raise self._fail(
                f"it cannot be opened for writing ({exc.strerror})",
                "fix the permissions of the file and its directory, or open a copy",
            ) from exc
        except OSError as exc:
            raise self._fail(f"it cannot be opened ({exc})", "check the path") from exc

    def _lock_file(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _lock_holder(self._fd)
            by = f" (pid {holder})" if holder is not None else ""
            raise self._fail(
                f"it is in use by another writer{by}",
                "close the other store or wait for that run to finish",
            ) from exc

    def _load(self) -> None:
        data = _read_all(self._fd)
        if not data:
            self._append(_header())
            return
        first_end = data.find(b"\n")
        if first_end == -1:
            if _HEADER_PREFIX.startswith(data) or data.startswith(_HEADER_PREFIX):
                self._drop_torn(1, 0)
                self._append(_header())
                return
            raise self._not_ours()
        self._check_first_line(data[:first_end])
        pos = first_end + 1
        if not data.startswith(_HEADER_PREFIX):
            pos = 0  # a header-less file (an export): its first line is a record
        line_no = 1 if pos == 0 else 2
        index = self._index
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end == -1:
                self._drop_torn(line_no, pos)
                break
            try:
                obj = json.loads(data[pos:end])
            except ValueError as exc:
                if end + 1 == len(data):
                    self._drop_torn(line_no, pos)
                    break
                raise self._corrupt(line_no, f"invalid JSON ({exc})") from exc
            try:
                record = record_from_json(obj)
            except ValueError as exc:
                raise self._corrupt(line_no, str(exc)) from exc
            index[record.item_id] = record
            pos = end + 1
            line_no += 1
        self._size = min(pos, len(data))

    def _check_first_line(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise self._not_ours() from exc
        if isinstance(obj, dict) and _HEADER_KEY in obj:
            version = obj[_HEADER_KEY]
            if isinstance(version, bool) or not isinstance(version, int):
                raise self._not_ours()
            if version > SCHEMA_VERSION:
                raise self._fail(
                    "it was written by a newer version of async-batch-llm (schema version "
                    f"{version}; this release reads up to {SCHEMA_VERSION})",
                    "upgrade async-batch-llm",
                )
            return
        try:
            record_from_json(obj)
        except ValueError as exc:
            raise self._not_ours() from exc

    def _not_ours(self) -> ArtifactStoreError:
        return self._fail(
            "its first line is neither an async-batch-llm artifact header nor a record, so it "
            "is not an async-batch-llm artifact store",
            "pass the path of an artifact store or of a new file",
        )

    def _corrupt(self, line_no: int, what: str) -> ArtifactStoreError:
        return self._fail(
            f"line {line_no} is corrupt ({what}) and is not the last line, so the file was "
            "damaged, not torn by a crash",
            "repair or remove that line, or restore the file from a backup",
        )

    def _drop_torn(self, line_no: int, keep: int) -> None:
        os.ftruncate(self._fd, keep)
        warnings.warn(
            f"artifact store {self.path}: line {line_no} was incomplete (a crash during a "
            f"write?); dropped it and truncated the file to {keep} bytes",
            ArtifactStoreWarning,
            stacklevel=4,
        )

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(self._fd)
        self._size += len(data)

    # -- the store interface -------------------------------------------------------------------

    def lookup(self, item_id: str) -> ArtifactRecord | None:
        """Return the latest record for ``item_id`` from the in-memory index, or ``None``.

        Raises:
            ArtifactStoreError: the store is closed.
        """
        if self._closed:
            self._check_open()
        return self._index.get(item_id)

    def write(self, records: Sequence[ArtifactRecord]) -> None:
        """Append one line per record with one ``write`` (and ``fsync`` if asked for).

        Raises:
            ArtifactStoreError: the store is closed, a record cannot be encoded, or the write
                failed (chained); the file is then cut back to where the group began.
        """
        self._check_open()
        self._write_encoded([self._encode_for_write(record) for record in records])

    def _encode_for_write(self, record: ArtifactRecord) -> object:
        try:
            return record, (record_to_json_line(record) + "\n").encode("utf-8")
        except (TypeError, ValueError) as exc:
            return exc

    def _write_prepared(self, prepared: object) -> None:
        encoded = cast("list[object]", prepared)
        self._check_open()
        if not encoded:
            return
        for entry in encoded:
            if isinstance(entry, Exception):
                raise ArtifactStoreError(
                    f"artifact store {self.path}: could not encode a record ({entry})"
                ) from entry
        pairs = cast("list[tuple[ArtifactRecord, bytes]]", encoded)
        data = b"".join([line for _, line in pairs])
        with self._lock:
            self._check_open()
            start = self._size
            try:
                self._append(data)
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, start)
                    self._size = start
                except OSError:
                    self._closed = True  # a half-written group would corrupt later appends
                raise ArtifactStoreError(
                    f"artifact store {self.path}: could not write {len(pairs)} record(s) "
                    f"({exc}); check the disk, then resume the run"
                ) from exc
            index = self._index
            for record, _ in pairs:
                index[record.item_id] = record
            self._records_written += len(pairs)

    supports_batch_jobs = True

    @property
    def _jobs_path(self) -> Path:
        return self.path.with_name(self.path.name + ".batch-jobs")

    def save_batch_job(self, key: str, value: str) -> None:
        """Append the entry to ``<path>.batch-jobs`` (one JSON line, fsynced)."""
        self._check_open()
        line = json.dumps({"key": key, "value": value}, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self._jobs_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ArtifactStoreError(
                f"cannot save a batch job in {self._jobs_path}: {exc}"
            ) from exc

    def load_batch_jobs(self) -> dict[str, str]:
        self._check_open()
        try:
            text = self._jobs_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read {self._jobs_path}: {exc}") from exc
        entries: dict[str, str] = {}
        for raw in text.splitlines():
            try:
                entry = json.loads(raw)
                entries[str(entry["key"])] = str(entry["value"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write
        return entries

    def iter_latest(self) -> Iterator[ArtifactRecord]:
        """Yield the latest record of every item, in the order items first appeared.

        Raises:
            ArtifactStoreError: the store is closed.
        """
        with self._lock:
            self._check_open()
            snapshot = list(self._index.values())
        return iter(snapshot)

    def count(self) -> int:
        """Return the number of distinct item ids.

        Raises:
            ArtifactStoreError: the store is closed.
        """
        self._check_open()
        return len(self._index)

    def close(self) -> None:
        """Release the lock and the file. Idempotent."""
        with self._lock:
            if self._fd < 0:
                return
            self._closed = True
            fd, self._fd = self._fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _header() -> bytes:
    return json.dumps({_HEADER_KEY: SCHEMA_VERSION}, separators=(",", ":")).encode() + b"\n"


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _lock_holder(fd: int) -> int | None:
    """Best effort: the pid holding an ``flock`` on ``fd``'s file, from ``/proc/locks``."""
    try:
        st = os.fstat(fd)
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in text.splitlines():
        parts = line.split()
        if "FLOCK" not in parts:
            continue
        at = parts.index("FLOCK")
        if "->" in parts or len(parts) < at + 5:
            continue  # a waiter, not the holder
        try:
            major, minor, inode = parts[at + 4].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                return int(parts[at + 3])
        except ValueError:
            continue
    return None
