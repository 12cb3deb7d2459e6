"""``BatchResult.to_jsonl`` / ``BatchResult.from_jsonl``: results as JSON Lines, one per line.

Each line holds ``item_id``, ``success``, ``output_kind``, ``output`` (the output itself as a JSON
value: a string, a JSON value or a model's fields), ``error``, ``error_category``, ``cost``,
``token_usage`` and ``replayed_from_artifact`` (files written before ``error_category`` and
``cost`` existed read back with both ``None``). Contexts are not written (they need not be
serialisable). Outputs use the artifact stores' encoding, so what a store can hold a file can
hold, and back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, cast

from async_batch_llm._internal.artifacts.records import (
    ArtifactStoreError,
    UnstorableOutputError,
    decode_output,
    embedded_output,
    encode_output,
    payload_from_json,
)
from async_batch_llm._types import TokenUsage, WorkItemResult

__all__ = ["read_results", "write_results"]


def write_results(results: Iterable[WorkItemResult[Any, Any]], path: str | os.PathLike[str]) -> int:
    """Write one line per result to ``path`` (replacing it); returns the number of lines.

    Raises:
        UnstorableOutputError: a result's output has no JSON form (the message names the item).
    """
    written = 0
    with open(path, "w", encoding="utf-8") as file:
        for result in results:
            try:
                kind, payload = encode_output(result.output, type(result.output))
            except UnstorableOutputError as exc:
                raise UnstorableOutputError(f"item {result.item_id!r}: {exc}") from exc
            output = embedded_output(kind, payload)
            file.write(
                f'{{"item_id":{json.dumps(result.item_id)},'
                f'"success":{"true" if result.success else "false"},'
                f'"output_kind":"{kind}","output":{output},'
                f'"error":{json.dumps(result.error)},'
                f'"error_category":{json.dumps(result.error_category)},'
                f'"cost":{json.dumps(result.cost)},'
                f'"token_usage":{json.dumps(dict(result.token_usage), separators=(",", ":"))},'
                f'"replayed_from_artifact":{"true" if result.replayed_from_artifact else "false"}'
                "}\n"
            )
            written += 1
    return written


def read_results(
    path: str | os.PathLike[str], output_type: type | None = None
) -> Iterator[WorkItemResult[Any, None]]:
    """The results written by :func:`write_results`, one by one.

    Args:
        path: the JSON Lines file.
        output_type: the pydantic model of ``"model"`` outputs; without it they come back as
            dicts.

    Raises:
        ValueError: a line is not a result line (the message names the file and line).
    """
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                kind = obj["output_kind"]
                value = obj["output"]
                if kind == "model" and output_type is None:
                    output = value
                else:
                    output = decode_output(kind, payload_from_json(kind, value), output_type)
                yield WorkItemResult(
                    item_id=obj["item_id"],
                    success=bool(obj["success"]),
                    output=output,
                    error=obj.get("error"),
                    token_usage=cast(TokenUsage, obj.get("token_usage") or {}),
                    replayed_from_artifact=bool(obj.get("replayed_from_artifact", False)),
                    # Absent from files written before 0.7: read as None.
                    error_category=_optional_str(obj.get("error_category")),
                    cost=_optional_number(obj.get("cost")),
                )
            except (KeyError, TypeError, ValueError, ArtifactStoreError) as exc:
                raise ValueError(
                    f"{os.fspath(path)} line {number} is not a result line: {exc}"
                ) from exc


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"error_category must be a string or null, got {value!r:.80}")


def _optional_number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"cost must be a number or null, got {value!r:.80}")
    return float(value)
