"""Durable, resumable runs: artifact stores that journal every result before it is published.

``SqliteArtifactStore`` is the embedded default (one SQLite file, WAL, group commits);
``JsonlArtifactStore`` is an append-only JSON Lines file for audit trails and small runs.
``ResumePolicy`` says what a run does with the records a store already holds.
"""

from async_batch_llm._internal.artifacts.base import ArtifactStore
from async_batch_llm._internal.artifacts.jsonl import JsonlArtifactStore
from async_batch_llm._internal.artifacts.records import (
    ArtifactRecord,
    ArtifactStoreError,
    ResumePolicy,
    UnstorableOutputError,
)
from async_batch_llm._internal.artifacts.sqlite import SqliteArtifactStore

__all__ = [
    "ArtifactRecord",
    "ArtifactStore",
    "ArtifactStoreError",
    "JsonlArtifactStore",
    "ResumePolicy",
    "SqliteArtifactStore",
    "UnstorableOutputError",
]
