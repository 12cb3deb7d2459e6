"""The store interface the processor and the writer talk to, with what every store shares."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from async_batch_llm._internal.artifacts.records import (
    ArtifactRecord,
    ArtifactStoreError,
    OutputKind,
    record_to_json_line,
)

__all__ = ["ArtifactStore", "EncodeFields"]

EncodeFields = Callable[
    [
        str,
        str,
        bool,
        OutputKind,
        "str | None",
        "str | None",
        Mapping[str, int],
        "str | None",
        "float | None",
        float,
    ],
    object,
]
"""Encodes one record given as its fields, in :class:`ArtifactRecord` field order."""


class ArtifactStore(ABC):
    """Where results are journaled, one :class:`ArtifactRecord` per finished item.

    Threading contract: :meth:`lookup` runs on the event-loop thread and :meth:`write` on the
    single writer thread; the two may run at the same time and implementations must allow it.
    Records are append-only: writing a record for an ``item_id`` that already has one keeps the
    old one as history, and every read answers with the latest.

    Attributes:
        path: the file the store lives in.
        output_type: pydantic model class of the outputs (needed to store and replay models),
            or ``None``.
        version: user version string mixed into every fingerprint; change it to invalidate
            all earlier records without deleting them.
        commit_interval: the commit lag (seconds from hand-over to commit) the writer should
            stay within; it commits back to back, and logs a warning past twice this.
    """

    path: Path
    output_type: type | None
    version: str | None
    commit_interval: float

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        output_type: type | None,
        version: str | None,
        commit_interval: float,
    ) -> None:
        if not isinstance(output_type, type | None):
            raise TypeError(f"output_type must be a class or None, got {output_type!r}")
        if version is not None and not isinstance(version, str):
            raise TypeError(f"version must be a str or None, got {version!r}")
        if (
            isinstance(commit_interval, bool)
            or not isinstance(commit_interval, int | float)
            or not math.isfinite(commit_interval)
            or commit_interval <= 0
        ):
            raise ValueError(f"commit_interval must be > 0, got {commit_interval!r}")
        self.path = Path(os.fspath(path))
        self.output_type = output_type
        self.version = version
        self.commit_interval = float(commit_interval)
        self._closed = False
        self._records_written = 0

    @abstractmethod
    def lookup(self, item_id: str) -> ArtifactRecord | None:
        """Return the latest record for ``item_id``, or ``None`` if it has none.

        Called on the event-loop thread for every item of a resumed run, so it must be fast
        (about 10 µs on SQLite with a million records).

        Raises:
            ArtifactStoreError: the store is closed or could not be read.
        """

    @abstractmethod
    def write(self, records: Sequence[ArtifactRecord]) -> None:
        """Append ``records`` durably, all of them or none (one group commit).

        Called on the writer thread. When it returns, the records survive the process being
        killed.

        Raises:
            ArtifactStoreError: the store is closed or the write failed (the underlying
                ``OSError`` / ``sqlite3.Error`` is chained).
        """

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
        """:meth:`_encode_for_write` of the record these fields (in field order) make up.

        The journal encodes each finished item through this, so a store that encodes to a
        row can skip building the :class:`ArtifactRecord`. The default builds it (with its
        own copy of ``token_usage``) and encodes that.
        """
        return self._encode_for_write(
            _plain_record(
                item_id,
                fingerprint,
                success,
                output_kind,
                output,
                error,
                token_usage,
                error_category,
                cost,
                created_at,
            )
        )

    def _encode_for_write(self, record: ArtifactRecord) -> object:
        """What :meth:`_write_encoded` takes for ``record``; called on the event-loop thread.

        The writer encodes each record as it is handed over, so the Python work of encoding
        runs on the loop, which is running anyway, rather than on the writer thread, which
        would have to win the GIL back from a busy loop for every step of it (and commit late).
        Must not raise: a record that cannot be encoded is encoded as a value that makes
        :meth:`_write_encoded` raise. The default keeps the record as it is.
        """
        return record

    def _write_encoded(self, encoded: list[object]) -> None:
        """:meth:`write` for records encoded by :meth:`_encode_for_write`."""
        self._write_prepared(self._prepare_write(encoded))

    def _prepare_write(self, encoded: list[object]) -> object:
        """Turn one group of encoded records into what :meth:`_write_prepared` commits.

        Called on the event-loop thread, so that the writer thread only commits (see
        :class:`ArtifactWriter`). May raise :class:`ArtifactStoreError` (a malformed record):
        the group then fails as a failed write would. The default keeps the list.
        """
        return encoded

    def _write_prepared(self, prepared: object) -> None:
        """Commit one group made by :meth:`_prepare_write` (writer thread)."""
        self.write(prepared)  # type: ignore[arg-type]  # the default encoding is the record

    def _idle_maintenance(self) -> None:  # noqa: B027  # an optional hook, empty by default
        """Upkeep the writer thread runs once it has been idle for a commit interval.

        The default does nothing. The SQLite store checkpoints its WAL here, so that no
        checkpoint runs inside a commit that records are waiting for. Must not raise.
        """

    def _writer_parts(
        self,
    ) -> tuple[EncodeFields, Callable[[list[Any]], object], Callable[[Any], None]]:
        """The ``(encode_fields, prepare_write, write_prepared)`` the writer uses for this store.

        A subclass that overrides :meth:`write` (to add to it, or to replace it) gets its
        ``write`` called with plain records, as documented, even if a base encodes ahead.
        """
        cls = type(self)
        if _defined_in(cls, "write") is _defined_in(cls, "_write_prepared"):
            return self._encode_fields, self._prepare_write, self._write_prepared
        return _plain_record, _keep, self.write

    # Provider batch jobs (ProcessorConfig(mode="batch")): the processor saves each job's line
    # map before submitting it and its id once known, so a resumed run polls the job instead
    # of submitting its lines again. A store without this keeps nothing (jobs are not resumed).

    supports_batch_jobs: bool = False
    """Whether :meth:`save_batch_job` is durable (the built-in stores: yes)."""

    def save_batch_job(self, key: str, value: str) -> None:
        """Durably save (or replace) the batch-mode job entry ``key`` (a JSON text).

        Returns once the entry survives the process being killed. The default keeps nothing.

        Raises:
            ArtifactStoreError: the store is closed or the write failed.
        """
        del key, value  # not kept: a resumed run submits those lines again

    def load_batch_jobs(self) -> dict[str, str]:
        """Every batch-mode job entry saved, ``key`` → latest value. The default has none."""
        return {}

    @abstractmethod
    def iter_latest(self) -> Iterator[ArtifactRecord]:
        """Yield the latest record of every item, without loading the whole store at once.

        Raises:
            ArtifactStoreError: the store is closed or could not be read.
        """

    @abstractmethod
    def count(self) -> int:
        """Return the number of distinct item ids that have a record.

        Raises:
            ArtifactStoreError: the store is closed or could not be read.
        """

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write the latest record of every item to ``path`` as JSON Lines, streaming.

        Each line is one JSON object with the keys ``item_id``, ``fingerprint``, ``success``,
        ``output_kind``, ``output``, ``error``, ``error_category``, ``cost``, ``token_usage``
        and ``created_at``. ``output`` is embedded decoded: a string output as a JSON string, a
        JSON value or a pydantic model as the JSON value itself. An existing file is replaced.

        Args:
            path: destination file.

        Returns:
            The number of lines written.

        Raises:
            ArtifactStoreError: the store could not be read or the file could not be written.
        """
        target = Path(os.fspath(path))
        written = 0
        try:
            with target.open("w", encoding="utf-8", newline="\n") as out:
                for record in self.iter_latest():
                    out.write(record_to_json_line(record))
                    out.write("\n")
                    written += 1
        except (OSError, ValueError) as exc:
            raise ArtifactStoreError(
                f"cannot export artifact store {self.path} to {target}: {exc}; check that the "
                "destination directory exists and is writable"
            ) from exc
        return written

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Release the store's files and connections. Idempotent; reads and writes then fail."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ArtifactStoreError(
                f"artifact store {self.path} is closed; open a new store object to use it again"
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        output_type = None if self.output_type is None else self.output_type.__qualname__
        return (
            f"<{type(self).__name__} path={str(self.path)!r} {state} "
            f"written={self._records_written} output_type={output_type} "
            f"version={self.version!r}>"
        )


def _keep(records: list[Any]) -> object:
    return records


def _plain_record(
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
) -> ArtifactRecord:
    """The record of these fields (with its own copy of ``token_usage``)."""
    return ArtifactRecord(
        item_id,
        fingerprint,
        success,
        output_kind,
        output,
        error,
        dict(token_usage),
        error_category,
        cost,
        created_at,
    )


def _defined_in(cls: type, name: str) -> type | None:
    """The class of ``cls``'s MRO whose body defines ``name``."""
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)
